"""The trust-region Newton solver, the closed-form Hessian, starts and the protocol's statistics,
each against an independent computation (SciPy, torch.func, optimality conditions, hand values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from attnmoe.estimation import FitOptions, fit_and_score, get_setting, sample
from attnmoe.estimation.families.least_squares.fit import _Box, fit_least_squares
from attnmoe.estimation.families.least_squares.init import displaced_init, near_truth_init, parse_init
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.solvers.newton import _subproblem, trust_region
from attnmoe.estimation.solvers.optim import REASONS
from attnmoe.estimation.families.least_squares.truth import named_settings
from attnmoe.estimation.families.least_squares.voronoi import split_cell_stats
from attnmoe.moe import GATES, ParameterLayout
from attnmoe.moe.experts import EXPERTS

# gates with a closed form; the cosine routers' autograd objective: tests/test_cosine_gate.py
CASES = [(g, e, nz) for g in GATES if GATES[g].closed_form for e in EXPERTS for nz in ("softmax", "sigmoid")]


@pytest.mark.parametrize(("gate", "expert", "normalization"), CASES)
def test_closed_form_hessian_equals_torch_func_hessian(gate: str, expert: str, normalization: str) -> None:
    gen = torch.Generator().manual_seed(sum(map(ord, gate + expert + normalization)))
    layout = ParameterLayout(gate, expert, 4, 2, normalization=normalization)
    R, n = 2, 37  # n not a multiple of the padding
    X = torch.randn(R, n, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(R, n, generator=gen, dtype=torch.float64)
    theta = torch.randn(R, layout.n_params, generator=gen, dtype=torch.float64)
    f, g, H = LeastSquaresObjective(layout, X, y).hessian(theta)
    for r in range(R):
        def loss(t: torch.Tensor, r: int = r) -> torch.Tensor:
            return (layout.forward(t[None], X[r : r + 1]) - y[r : r + 1]).square().mean()

        torch.testing.assert_close(H[r], torch.func.hessian(loss)(theta[r]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g[r], torch.func.grad(loss)(theta[r]), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(f[r], loss(theta[r]), rtol=1e-12, atol=0.0)


def test_box_hessian_is_the_chain_rule() -> None:
    s = get_setting("polynomial-sigmoid-over")
    layout = s.fit_layout
    X, y = sample(s, 50, [0])
    obj = LeastSquaresObjective(layout, X, y)
    box = _Box(2.0)
    phi = 0.7 * torch.randn(1, layout.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, g, H = box.wrap(obj).hessian(phi)

    def loss(p: torch.Tensor) -> torch.Tensor:
        return (layout.forward((2.0 * torch.tanh(p / 2.0))[None], X) - y).square().mean()

    torch.testing.assert_close(H[0], torch.func.hessian(loss)(phi[0]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g[0], torch.func.grad(loss)(phi[0]), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("case", ["interior", "boundary", "indefinite", "hard"])
def test_subproblem_meets_the_optimality_conditions(case: str) -> None:
    """N&W Thm 4.1: p* solves the subproblem iff (H + mu I) p* = -g, H + mu I >= 0, mu >= 0,
    mu (radius - ||p*||) = 0 -- checked in the eigenbasis, against a brute-force search."""
    lam = {"interior": [1.0, 2.0, 5.0], "boundary": [1.0, 2.0, 5.0],
           "indefinite": [-1.0, 0.5, 3.0], "hard": [-1.0, 0.5, 3.0]}[case]
    gh = {"interior": [0.1, -0.2, 0.3], "boundary": [1.0, -2.0, 3.0],
          "indefinite": [0.3, -0.2, 0.1], "hard": [0.0, 0.1, -0.1]}[case]
    lam_t, gh_t = torch.tensor([lam], dtype=torch.float64), torch.tensor([gh], dtype=torch.float64)
    radius = torch.tensor([0.5], dtype=torch.float64)
    p, dec = _subproblem(lam_t, gh_t, radius)
    p = p[0].numpy()
    assert np.linalg.norm(p) <= 0.5 * (1 + 1e-9)
    model = lambda q: np.dot(gh, q) + 0.5 * np.dot(np.array(lam) * q, q)
    np.testing.assert_allclose(-model(p), float(dec[0]), rtol=1e-12)
    # brute force: no feasible point (on a fine sample of the ball) does better
    rng = np.random.default_rng(0)
    q = rng.normal(size=(200_000, 3))
    q = q / np.linalg.norm(q, axis=1, keepdims=True) * 0.5 * rng.uniform(0, 1, (200_000, 1)) ** (1 / 3)
    best = (q @ np.array(gh) + 0.5 * (q * q) @ np.array(lam)).min()
    assert model(p) <= best + 1e-9
    if case == "interior":
        np.testing.assert_allclose(p, -np.array(gh) / np.array(lam), rtol=1e-12)
    else:
        np.testing.assert_allclose(np.linalg.norm(p), 0.5, rtol=1e-6)


def test_trust_region_matches_scipy_trust_exact() -> None:
    """Same problems, same starts: our batched solver and scipy's trust-exact reach the same
    minimiser (exact-specified fits have an isolated minimum)."""
    s = get_setting("polynomial-sigmoid-exact")
    seeds = [0, 1, 2]
    X, y = sample(s, 300, seeds)
    layout = s.fit_layout
    x0 = near_truth_init(layout, s.true_params(), seeds, 0.2)
    res = fit_least_squares(layout, X, y, x0, dtol=1e-12)
    assert bool(res.converged.all())
    obj = LeastSquaresObjective(layout, X, y)
    for r in range(len(seeds)):
        idx = torch.tensor([r])

        def fun(v: np.ndarray, idx: torch.Tensor = idx) -> float:
            return float(obj(torch.from_numpy(v)[None], idx)[0])

        def jac(v: np.ndarray, idx: torch.Tensor = idx) -> np.ndarray:
            return obj.value_and_grad(torch.from_numpy(v)[None], idx)[1][0].numpy()

        def hess(v: np.ndarray, idx: torch.Tensor = idx) -> np.ndarray:
            return obj.hessian(torch.from_numpy(v)[None], idx)[2][0].numpy()

        ref = minimize(fun, x0[r].numpy(), jac=jac, hess=hess, method="trust-exact",
                       options={"gtol": 1e-13, "maxiter": 500})
        np.testing.assert_allclose(res.flat[r].numpy(), ref.x, rtol=0, atol=1e-7)
        assert float(res.loss[r]) <= ref.fun * (1 + 1e-12)


def test_trust_region_rosenbrock_and_indefinite_start() -> None:
    """Batched Rosenbrock from starts where the Hessian is indefinite: every replicate reaches
    (1, 1) on its own."""
    def rosen(x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return 100 * (x[:, 1] - x[:, 0] ** 2) ** 2 + (1 - x[:, 0]) ** 2

    def hess(x: torch.Tensor, idx: torch.Tensor | None = None):
        a, b = x[:, 0], x[:, 1]
        g = torch.stack([-400 * a * (b - a**2) - 2 * (1 - a), 200 * (b - a**2)], -1)
        H = torch.stack([torch.stack([1200 * a**2 - 400 * b + 2, -400 * a], -1),
                         torch.stack([-400 * a, torch.full_like(a, 200.0)], -1)], -2)
        return rosen(x), g, H

    x0 = torch.tensor([[-1.2, 1.0], [0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    res = trust_region(hess, rosen, x0, max_iter=200, gtol=1e-10, dtol=0.0)
    assert bool(res.converged.all())
    torch.testing.assert_close(res.x, torch.ones(3, 2, dtype=torch.float64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("n", [61, 1001])
def test_trust_region_batched_equals_alone_bitwise(n: int) -> None:
    """A replicate's fit is bitwise the same alone and at any place in a batch (n not a multiple
    of the vector width, box on)."""
    s = get_setting("polynomial-sigmoid-over")
    seeds = [3, 4, 5, 6, 7]
    X, y = sample(s, n, seeds)
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.5)
    kw = {"max_iter": 25, "bound": 10.0}
    batched = fit_least_squares(s.fit_layout, X, y, x0, **kw)
    for r in (0, 2, 4):
        alone = fit_least_squares(s.fit_layout, X[r : r + 1], y[r : r + 1], x0[r : r + 1], **kw)
        assert torch.equal(batched.flat[r : r + 1], alone.flat)
        assert int(batched.n_iter[r]) == int(alone.n_iter[0])
    sub = fit_least_squares(s.fit_layout, X[1:4], y[1:4], x0[1:4], **kw)
    assert torch.equal(batched.flat[1:4], sub.flat)


@pytest.mark.parametrize("P", [1, 5, 7, 8])
@pytest.mark.parametrize("scale", [1e-3, 1e3])
@pytest.mark.parametrize("scaled", [True, False])
def test_quadratic_known_answer_and_curvature_at_odd_sizes(P: int, scale: float, scaled: bool) -> None:
    """f = 1/2 x^T A x - b^T x, A SPD with eigenvalues all below or all above 1: every replicate
    reaches A^-1 b (numpy.linalg.solve), and the reported min_eig is the smallest eigenvalue of
    D^-1 A D^-1 (numpy.linalg.eigvalsh; D = sqrt(diag A), or 1 unscaled) at every size, odd
    ones included (there the solver works in P + 1 variables)."""
    rng = np.random.default_rng(P)
    A_np = np.stack([(lambda q: q @ np.diag(scale * rng.uniform(1, 3, P)) @ q.T)(
        np.linalg.qr(rng.standard_normal((P, P)))[0]) for _ in range(3)])
    b_np = rng.standard_normal((3, P))
    A, b = torch.from_numpy(A_np), torch.from_numpy(b_np)

    def f(x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        Ai, bi = (A, b) if idx is None else (A[idx], b[idx])
        return 0.5 * (x.unsqueeze(-2) @ Ai @ x.unsqueeze(-1))[:, 0, 0] - (bi * x).sum(-1)

    def hess(x: torch.Tensor, idx: torch.Tensor | None = None):
        Ai, bi = (A, b) if idx is None else (A[idx], b[idx])
        return f(x, idx), (Ai @ x.unsqueeze(-1))[..., 0] - bi, Ai.clone()

    res = trust_region(hess, f, torch.zeros(3, P, dtype=torch.float64), max_iter=200, gtol=1e-12,
                       dtol=0.0, radius=10.0 / scale, max_radius=1e6, scaled=scaled)
    assert res.x.shape == (3, P) and bool(res.converged.all())
    np.testing.assert_allclose(res.x.numpy(), np.linalg.solve(A_np, b_np[..., None])[..., 0], rtol=1e-9)
    d = np.sqrt(np.diagonal(A_np, axis1=1, axis2=2)) if scaled else np.ones((3, P))
    want = np.linalg.eigvalsh(A_np / (d[:, :, None] * d[:, None, :]))[:, 0]
    np.testing.assert_allclose(res.min_eig.numpy(), want, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(named_settings()))
def test_every_setting_fits_batched_equal_alone_bitwise(name: str) -> None:
    """Every registered least-squares setting, odd parameter counts included (the exact core
    settings have P = 17 and 21, the gating ones 15): each replicate's fit is bitwise the same
    alone as at every place, odd and even, in a batch of 5 (n = 61, box on, 8 iterations)."""
    s = get_setting(name)
    seeds = [3, 4, 5, 6, 7]
    X, y = sample(s, 61, seeds)
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.5)
    kw = {"max_iter": 8, "bound": 10.0}
    batched = fit_least_squares(s.fit_layout, X, y, x0, **kw)
    for r in range(5):
        alone = fit_least_squares(s.fit_layout, X[r : r + 1], y[r : r + 1], x0[r : r + 1], **kw)
        assert torch.equal(batched.flat[r : r + 1], alone.flat), f"replicate {r}"


def test_fit_and_score_records_do_not_depend_on_the_batch() -> None:
    s = get_setting("monomial-sigmoid-over")
    opts = FitOptions(max_iter=30, n_test=999, bound=10.0, starts=2)
    batch = fit_and_score(s, 1001, [7, 8, 9], opts)
    alone = fit_and_score(s, 1001, [8], opts)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}
    assert strip(batch[1]) == strip(alone[0])


def test_displaced_start_lies_on_the_flat_direction() -> None:
    """Linear experts: moving the split copies' experts by +-delta leaves f unchanged; the gate
    displacement of a polynomial gate changes f only at order delta^4."""
    s = get_setting("polynomial-linear-over")
    layout, truth = s.fit_layout, s.true_params()
    X, _ = sample(s, 500, [0])
    f_true = s.regression_function(X)
    for delta in (0.3, 1.0):
        start = displaced_init(layout, truth, [0, 1], delta)
        assert (start - near_truth_init(layout, truth, [0, 1], 0.0)).abs().max() > 0.1 * delta
        torch.testing.assert_close(layout.forward(start[:1], X), f_true, rtol=0, atol=1e-12)
    errs = [float((layout.forward(displaced_init(layout, truth, [0], d, gate=True), X) - f_true).abs().max())
            for d in (0.1, 0.05)]
    assert 12 < errs[0] / errs[1] < 20  # order delta^4: halving delta divides the error by ~16
    sig = get_setting("polynomial-sigmoid-over")
    moved = sig.fit_layout.forward(displaced_init(sig.fit_layout, sig.true_params(), [0], 0.3), X)
    assert float((moved - sig.regression_function(X)).abs().max()) > 1e-4  # not flat


def test_split_cell_stats_known_answer() -> None:
    """Hand-built fits: truth with atoms at 0 (mass 1/2) and at e (mass 1/2); a fit that splits
    atom 1 into copies at distances 0.2 and 0.6 with masses 0.4 and 0.1."""
    truth = {"b": torch.tensor([[[0.0], [1.0]]]), "c": torch.log(torch.tensor([[0.5, 0.5]])),
             "a": torch.zeros(1, 2, 1), "alpha": torch.zeros(1, 2)}
    # monotone masses; gate coordinates are normalised by the measure, so move only the expert
    fit = {"b": torch.tensor([[[0.0], [1.0], [1.0]]]), "c": torch.log(torch.tensor([[0.5, 0.4, 0.1]])),
           "a": torch.tensor([[[0.0], [0.2], [0.0]]]), "alpha": torch.tensor([[0.0, 0.0, 0.6]])}
    st = split_cell_stats({k: v.double() for k, v in fit.items()}, {k: v.double() for k, v in truth.items()})
    torch.testing.assert_close(st["copy"], torch.tensor([0.6], dtype=torch.float64))
    torch.testing.assert_close(st["split_mass"], torch.tensor([0.2], dtype=torch.float64))
    torch.testing.assert_close(st["D11"], torch.tensor([0.4 * 0.2 + 0.1 * 0.6], dtype=torch.float64))
    torch.testing.assert_close(st["expert"], st["D11"])
    torch.testing.assert_close(st["gate"], torch.tensor([0.0], dtype=torch.float64))


def test_best_and_near_best_selection() -> None:
    """Best = lowest loss among converged starts; near-best = converged starts within the window."""
    from attnmoe.estimation.families.least_squares.experiment import _best_and_near
    from attnmoe.estimation.families.least_squares.fit import FitResult

    loss = torch.tensor([1.0, 0.5, 1.05, 0.2, 1.2])  # start 3 is lowest but not converged
    conv = torch.tensor([True, False, True, False, True])
    res = FitResult(params={}, flat=torch.zeros(5, 1), loss=loss, grad_max=loss, converged=conv,
                    n_iter=torch.zeros(5, dtype=torch.long), n_evals=torch.zeros(5, dtype=torch.long),
                    seconds=0.0)
    best, near = _best_and_near(res, torch.arange(5), window=0.1)
    assert int(best) == 0 and near.tolist() == [0, 2]
    best, near = _best_and_near(res, torch.tensor([1, 3]), window=0.1)  # none converged
    assert int(best) == 3 and near.tolist() == [3]


@pytest.mark.parametrize(("text", "message"), [
    ("nearest:1", "unknown kind"), ("displaced", "needs a value"), ("group:3", "takes no value"),
    ("near-truth:abc", "not a number"), ("displaced:-1", ">= 0"),
])
def test_bad_init_specs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_init(text)
    with pytest.raises(ValueError, match=message):
        FitOptions(init=text)


def _parabola_valley(K: float = 100.0, c: float = 0.1, eps: float = 1e-4, u_star: float = 10.0):
    """L(u, v) = K (v + c u^2)^2 + eps (u - u*)^2: a long, curved, nearly flat valley whose
    minimiser (u*, -c u*^2) is known in closed form."""
    def obj(x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        u, v = x[:, 0], x[:, 1]
        return K * (v + c * u**2) ** 2 + eps * (u - u_star) ** 2

    def hess(x: torch.Tensor, idx: torch.Tensor | None = None):
        u, v = x[:, 0], x[:, 1]
        r = v + c * u**2
        g = torch.stack([4 * K * c * u * r + 2 * eps * (u - u_star), 2 * K * r], -1)
        H = torch.stack([torch.stack([4 * K * c * r + 8 * K * c * c * u * u + 2 * eps, 4 * K * c * u], -1),
                         torch.stack([4 * K * c * u, torch.full_like(u, 2 * K)], -1)], -2)
        return obj(x), g, H

    return obj, hess, torch.tensor([u_star, -c * u_star**2], dtype=torch.float64)


def test_valley_extrapolation_reaches_the_minimiser_in_fewer_steps() -> None:
    """Along a long curved valley the quadratic model holds only near the floor, so plain
    trust-region steps stay short; the extrapolation (path continued + stiff Newton steps back to
    the floor) must reach the same closed-form minimiser with far fewer iterations."""
    obj, hess, x_star = _parabola_valley(u_star=10.0)
    x0 = torch.tensor([[0.0, 0.0], [1.0, -0.1], [-5.0, -2.5]], dtype=torch.float64)
    plain = trust_region(hess, obj, x0, max_iter=3000, gtol=1e-9, dtol=0.0, extrapolate=0)
    fast = trust_region(hess, obj, x0, max_iter=3000, gtol=1e-9, dtol=0.0)
    for res in (plain, fast):
        assert bool(res.converged.all())
        torch.testing.assert_close(res.x, x_star.expand(3, 2), rtol=0, atol=1e-6)
    assert int(plain.extra["jumps"].sum()) == 0 and int(fast.extra["jumps"].min()) > 0
    assert 3 * int(fast.n_iter.sum()) <= int(plain.n_iter.sum()), (fast.n_iter, plain.n_iter)


def test_extrapolating_fits_are_batched_equal_alone_bitwise() -> None:
    """Replicates that extrapolate (and fail or succeed at different iterations) still get
    bitwise the same fit alone as in a batch (box on, n not a multiple of the vector width)."""
    s = get_setting("monomial-linear-over")
    seeds = [5, 6, 7]
    X, y = sample(s, 301, seeds)
    layout = s.fit_layout
    box = _Box(10.0)
    obj = box.wrap(LeastSquaresObjective(layout, X, y))
    x0 = box.to_free(near_truth_init(layout, s.true_params(), seeds, 0.1))
    batched = trust_region(obj.hessian, obj, x0, max_iter=80, dtol=1e-8 / 301)
    assert int(batched.extra["extrapolations"].min()) > 0
    for r in range(3):
        one = box.wrap(LeastSquaresObjective(layout, X[r : r + 1], y[r : r + 1]))
        alone = trust_region(one.hessian, one, x0[r : r + 1], max_iter=80, dtol=1e-8 / 301)
        assert torch.equal(batched.x[r : r + 1], alone.x)
        assert int(batched.extra["jumps"][r]) == int(alone.extra["jumps"][0])


def test_fit_on_the_box_wall_is_flagged() -> None:
    """With a box narrower than the truth (|alpha*| = 2.1, 2.3 > B = 2) the box-constrained fit
    converges with exactly the two intercepts on the wall, where the UNCONSTRAINED gradient
    (autograd, no box) still points outwards: a minimum of the constrained problem, not a
    stationary point of the loss. With B = 10 nothing is on the wall."""
    s = get_setting("monomial-linear-exact")
    seeds = [0, 1]
    layout = s.fit_layout
    X, y = sample(s, 500, seeds)
    x0 = near_truth_init(layout, s.true_params(), seeds, 0.1)
    wall = fit_least_squares(layout, X, y, x0.clamp(-1.9, 1.9), bound=2.0)
    free = fit_least_squares(layout, X, y, x0, bound=10.0)
    assert bool(wall.converged.all()) and bool(free.converged.all())
    assert wall.at_bound.tolist() == [2, 2] and free.at_bound.tolist() == [0, 0]
    alpha = layout.unpack(wall.flat)["alpha"]  # (R, k)
    assert bool((alpha.abs().amax(-1) > 2.0 * (1 - 1e-3)).all())
    theta = wall.flat.clone().requires_grad_(True)
    loss = (layout.forward(theta, X) - y).square().mean(-1).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    on_wall = wall.flat.abs() >= 2.0 * (1 - 1e-3)
    # descent direction -grad points out of the box at every parameter on the wall
    assert bool((-grad[on_wall] * wall.flat[on_wall].sign() > 0).all())


def test_a_non_finite_hessian_stops_only_its_replicate() -> None:
    """Replicate 1's Hessian is NaN once x_0 > 0.5 on its way to c_1 = (1, 1): it stops as
    "nonfinite" (not converged); replicate 0 converges to c_0 exactly as when fitted alone."""
    c = torch.tensor([[-1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)

    def objective(x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        cc = c if idx is None else c[idx]
        return ((x - cc) ** 2).sum(-1) + 1.0

    def hessian(x: torch.Tensor, idx: torch.Tensor | None = None):
        cc = c if idx is None else c[idx]
        H = 2.0 * torch.eye(2, dtype=x.dtype).expand(x.shape[0], 2, 2).clone()
        H[x[:, 0] > 0.5] = torch.nan
        return objective(x, idx), 2.0 * (x - cc), H

    x0 = torch.zeros(2, 2, dtype=torch.float64)
    both = trust_region(hessian, objective, x0, max_iter=50, radius=0.3)
    assert REASONS[int(both.reason[1])] == "nonfinite" and not bool(both.converged[1])
    assert bool(both.converged[0])
    torch.testing.assert_close(both.x[0], c[0], rtol=0, atol=1e-6)
    alone = trust_region(lambda x, i: hessian(x, torch.tensor([0])), lambda x, i=None: objective(x, torch.tensor([0])),
                         x0[:1], max_iter=50, radius=0.3)
    assert torch.equal(alone.x[0], both.x[0])


def test_scaled_eigh_survives_a_lapack_failure(monkeypatch) -> None:
    """When LAPACK refuses one matrix of the batch, the other rows are decomposed alone (the
    same numbers) and the refused row gets NaN eigenvalues."""
    from attnmoe.estimation.solvers import newton

    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    H = A @ A.transpose(1, 2) + torch.eye(4, dtype=torch.float64)
    D = torch.ones(3, 4, dtype=torch.float64)
    want_lam, want_Q = torch.linalg.eigh(H)
    real = torch.linalg.eigh
    H[1, 0, 0] = 123.0  # the marker of the matrix "LAPACK" refuses

    def flaky(M: torch.Tensor):
        if bool((M[:, 0, 0] == 123.0).any()):
            raise torch.linalg.LinAlgError("linalg.eigh: failed to converge")
        return real(M)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    lam, Q = newton._scaled_eigh(H, D)
    assert torch.isnan(lam[1]).all()
    for r in (0, 2):
        assert torch.equal(lam[r], want_lam[r]) and torch.equal(Q[r], want_Q[r])


@pytest.mark.parametrize(("gate", "expert", "normalization"),
                         [("monomial", "gelu", "softmax"), ("linear", "tanh", "sigmoid")])
def test_closed_form_hessian_over_several_passes(gate: str, expert: str, normalization: str) -> None:
    """n spans several passes of the assembly (objective.CHUNK), the last one partial: Hessian,
    gradient and loss still equal torch.func's of the autograd loss."""
    from attnmoe.estimation.families.least_squares.objective import CHUNK

    gen = torch.Generator().manual_seed(11)
    layout = ParameterLayout(gate, expert, 3, 2, normalization=normalization)
    n = 2 * CHUNK + 37
    X = torch.randn(1, n, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(1, n, generator=gen, dtype=torch.float64)
    theta = torch.randn(1, layout.n_params, generator=gen, dtype=torch.float64)
    f, g, H = LeastSquaresObjective(layout, X, y).hessian(theta)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return (layout.forward(t[None], X) - y).square().mean()

    torch.testing.assert_close(H[0], torch.func.hessian(loss)(theta[0]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g[0], torch.func.grad(loss)(theta[0]), rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(f[0], loss(theta[0]), rtol=1e-12, atol=0.0)


def test_loss_gradient_and_hessian_do_not_depend_on_rows_or_blocks(monkeypatch) -> None:
    """Every entry point gives a replicate bitwise the same numbers alone, in the whole batch, in
    a subset (idx), and with replicate blocks of any size; the three share one loss."""
    import attnmoe.estimation.families.least_squares.objective as objective

    s = get_setting("monomial-sigmoid-over")
    seeds = list(range(7))
    X, y = sample(s, objective.CHUNK + 555, seeds)
    theta = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.5)
    obj = LeastSquaresObjective(s.fit_layout, X, y)
    f, g, H = obj.hessian(theta)
    fv, gv = obj.value_and_grad(theta)
    assert torch.equal(f, fv) and torch.equal(g, gv) and torch.equal(f, obj(theta))
    idx = torch.tensor([1, 4, 5])
    for budget in (1, 1 << 16, 1 << 30):  # blocks of one replicate ... the whole batch
        monkeypatch.setitem(objective.BLOCK_BYTES, "cpu", budget)
        fi, gi, Hi = obj.hessian(theta[idx], idx)
        assert torch.equal(fi, f[idx]) and torch.equal(gi, g[idx]) and torch.equal(Hi, H[idx])
        assert torch.equal(obj(theta[idx], idx), f[idx])
    monkeypatch.setattr(objective, "PRODUCT_CACHE_BYTES", 0)  # feature products per pass
    uncached = LeastSquaresObjective(s.fit_layout, X, y)
    assert uncached.products is None and torch.equal(uncached.hessian(theta)[2], H)
    for r in (0, 3, 6):
        alone = LeastSquaresObjective(s.fit_layout, X[r : r + 1], y[r : r + 1])
        fa, ga, Ha = alone.hessian(theta[r : r + 1])
        assert torch.equal(fa, f[r : r + 1]) and torch.equal(ga, g[r : r + 1]) and torch.equal(Ha, H[r : r + 1])


def test_the_fit_creates_every_tensor_on_the_device_of_its_data() -> None:
    """With torch's default device set to "meta", a tensor made without an explicit device
    would be a meta tensor and break the fit: a fit of CPU data that runs to the same result
    shows every tensor of the path follows the data (what --device cuda relies on)."""
    s = get_setting("monomial-sigmoid-over")
    seeds = [0, 1, 2]
    X, y = sample(s, 300, seeds)
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.3)
    layout = s.fit_layout  # built before: a layout holds CPU tables, moved to the data in use
    want = fit_least_squares(layout, X, y, x0, max_iter=30, bound=10.0)
    torch.set_default_device("meta")
    try:
        got = fit_least_squares(layout, X, y, x0, max_iter=30, bound=10.0)
    finally:
        torch.set_default_device("cpu")
    assert torch.equal(got.flat, want.flat) and torch.equal(got.n_iter, want.n_iter)


def test_cuda_without_a_gpu_is_refused_in_one_line(tmp_path) -> None:
    from attnmoe.estimation import study

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="no GPU is visible"):
        study.run_study([get_setting("monomial-sigmoid-exact")], [200, 400], 2, out,
                        options=FitOptions(device="cuda"), progress=False)
    assert not out.exists()
    assert "device" not in FitOptions().to_dict() and FitOptions(device="cuda").to_dict()["device"] == "cuda"
    with pytest.raises(ValueError, match="unknown device"):
        FitOptions(device="tpu")
