"""The likelihood Gaussian MoE over the shared gate registry (quadratic and cosine gates):
NLL against an explicit SciPy loop with the gate formulas written out, derivatives against
finite differences, the registry's linear gate against the linear-score path, the layout's
pinning and symmetrisation, batch-position invariance of whole fits, recovery at large n."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from attnmoe.estimation.families.likelihood import GaussianMoE, LikelihoodObjective, fit_likelihood
from attnmoe.estimation.sklearn.likelihood import GaussianMoERegressor
from attnmoe.moe.gates import PERTURBED_COSINE_TAU

REGISTRY = ["linear", "polynomial", "monomial", "cosine", "perturbed-cosine"]


pytestmark = pytest.mark.usefixtures("float64_default")  # float64 default dtype in this module only


def _logits_by_hand(gate: str, nat: dict, x: np.ndarray) -> np.ndarray:
    """u_i(x) of expert i, from the formulas of arXiv 2410.11222 / 2405.14131 written out."""
    k = nat["gate_c"].shape[0]
    u = np.array(nat["gate_c"], dtype=float).copy()
    for i in range(k):
        if gate in ("polynomial", "monomial"):
            A = np.asarray(nat["gate_A"][i])
            u[i] += sum(x[p] * A[p, q] * x[q] for p in range(len(x)) for q in range(len(x)))
        if gate in ("linear", "polynomial"):
            u[i] += float(np.dot(nat["gate_b"][i], x))
        if gate in ("cosine", "perturbed-cosine"):
            t = PERTURBED_COSINE_TAU if gate == "perturbed-cosine" else 0.0
            b = np.asarray(nat["gate_b"][i])
            nb, nx = np.linalg.norm(b), np.linalg.norm(x)
            u[i] += 0.0 if nb + t == 0 or nx + t == 0 else float(b @ x) / ((nb + t) * (nx + t))
    return u


@pytest.mark.parametrize("gate,top_k", [(g, None) for g in REGISTRY] + [("polynomial", 2), ("cosine", 1)])
def test_nll_matches_a_scipy_loop_with_the_gate_written_out(gate, top_k) -> None:
    gen = torch.Generator().manual_seed(10)
    model = GaussianMoE(3, 2, top_k=top_k, gate=gate)
    flat = torch.randn(2, model.n_params, generator=gen)
    X, y = torch.randn(2, 23, 2, generator=gen), 2 * torch.randn(2, 23, generator=gen)
    got = LikelihoodObjective(model, X, y)(flat)
    for r in range(2):
        nat = {k: v[r].numpy() for k, v in model.natural(flat).items()}
        assert np.allclose(nat["gate_c"][-1], 0) and np.allclose(nat.get("gate_A", np.zeros((3, 2, 2)))[-1], 0)
        if "gate_A" in nat:
            assert np.array_equal(nat["gate_A"], np.swapaxes(nat["gate_A"], -1, -2))  # symmetric
        total = 0.0
        for x, yy in zip(X[r].numpy(), y[r].numpy()):
            u = _logits_by_hand(gate, nat, x)
            keep = np.argsort(-u)[: top_k or 3]
            w = np.zeros(3)
            w[keep] = np.exp(u[keep] - u[keep].max()) / np.exp(u[keep] - u[keep].max()).sum()
            total -= math.log(float(w @ stats.norm.pdf(yy, nat["a"] @ x + nat["b"], np.sqrt(nat["nu"]))))
        assert got[r].item() == pytest.approx(total / 23, rel=1e-10)


@pytest.mark.parametrize("model", [GaussianMoE(3, 2, gate="polynomial"), GaussianMoE(3, 2, top_k=2, gate="monomial"),
                                   GaussianMoE(2, 2, gate="perturbed-cosine"), GaussianMoE(3, 2, gate="cosine")])
def test_gradient_and_hessian_match_finite_differences(model) -> None:
    gen = torch.Generator().manual_seed(11)
    P = model.n_params
    flat = 0.5 * torch.randn(2, P, generator=gen)
    obj = LikelihoodObjective(model, torch.randn(2, 40, 2, generator=gen), torch.randn(2, 40, generator=gen))
    _, g, H = obj.hessian(flat)
    h, eye = 1e-5, torch.eye(P)
    fd_g = torch.stack([(obj(flat + h * eye[p]) - obj(flat - h * eye[p])) / (2 * h) for p in range(P)], -1)
    fd_H = torch.stack([(obj.value_and_grad(flat + h * eye[p])[1] - obj.value_and_grad(flat - h * eye[p])[1]) / (2 * h)
                        for p in range(P)], -1)
    assert torch.allclose(g, fd_g, rtol=1e-6, atol=1e-8)
    assert torch.allclose(H, fd_H, rtol=1e-5, atol=1e-7)


def test_registry_linear_gate_is_the_softmax_score_gate() -> None:
    """Same flat vector (gate_b, gate_c laid out as beta1, beta0): same likelihood through the
    registry's LinearGate (bmm) and the linear-score path (element-wise), to rounding."""
    gen = torch.Generator().manual_seed(12)
    lin, soft = GaussianMoE(3, 2, top_k=2, gate="linear"), GaussianMoE(3, 2, top_k=2, gate="softmax")
    assert lin.n_params == soft.n_params
    flat = torch.randn(3, lin.n_params, generator=gen)
    X, y = torch.randn(3, 30, 2, generator=gen), torch.randn(3, 30, generator=gen)
    f1, g1, H1 = LikelihoodObjective(lin, X, y).hessian(flat)
    f2, g2, H2 = LikelihoodObjective(soft, X, y).hessian(flat)
    assert torch.allclose(f1, f2, rtol=1e-13) and torch.allclose(g1, g2, atol=1e-12)
    assert torch.allclose(H1, H2, atol=1e-11)


@pytest.mark.parametrize("gate", ["polynomial", "monomial", "linear"])
def test_packing_a_translated_or_unsymmetric_gate_keeps_the_function(gate) -> None:
    """Adding the same (A, b, c) to every expert and an antisymmetric part to A leave the softmax
    weights unchanged, so free() of such natural parameters must give the same weights."""
    gen = torch.Generator().manual_seed(13)
    model = GaussianMoE(3, 2, gate=gate)
    nat = model.natural(torch.randn(2, model.n_params, generator=gen))
    moved = dict(nat)
    moved["gate_c"] = nat["gate_c"] + 1.7
    if "gate_b" in nat:
        moved["gate_b"] = nat["gate_b"] + torch.tensor([0.3, -0.4])
    if "gate_A" in nat:
        skew = torch.tensor([[0.0, 2.0], [-2.0, 0.0]])
        moved["gate_A"] = nat["gate_A"] + torch.tensor([[0.5, 0.1], [0.1, -0.2]]) + skew
    X = torch.randn(2, 17, 2, generator=gen)
    back = model.natural(model.free(moved))
    assert torch.allclose(model.weights(back, X), model.weights(nat, X), atol=1e-13)
    assert torch.allclose(model.free(moved), model.free(nat), atol=1e-13)


def test_cosine_gate_refuses_a_nonzero_reference_direction() -> None:
    model = GaussianMoE(2, 2, gate="cosine")
    nat = model.natural(torch.randn(1, model.n_params))
    nat["gate_b"] = nat["gate_b"].clone()
    nat["gate_b"][0, -1] = torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="cosine gate's last expert must have b = 0") as err:
        model.free(nat)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("gate", ["polynomial", "perturbed-cosine"])
def test_whole_fits_are_bitwise_the_same_at_every_batch_position(gate) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(14)
    model = GaussianMoE(3, 2, gate=gate)
    R, n = 5, 61
    X, y = torch.randn(R, n, 2, generator=gen), torch.randn(R, n, generator=gen)
    x0 = 0.3 * torch.randn(R, model.n_params, generator=gen)
    batch = fit_likelihood(model, X, y, x0, max_iter=8)
    for r in range(R):
        alone = fit_likelihood(model, X[r : r + 1], y[r : r + 1], x0[r : r + 1], max_iter=8)
        assert torch.equal(batch.flat[r : r + 1], alone.flat), f"replicate {r}"


def test_quadratic_gate_mle_recovers_its_truth_within_fisher_standard_errors() -> None:
    """Data from a 2-expert polynomial-gate Gaussian MoE (d = 2) at n = 20000, two seeds; the MLE
    from a start 0.1 off the truth lies within 5 standard errors (observed information)."""
    model = GaussianMoE(2, 2, gate="polynomial")
    truth = {"gate_A": torch.tensor([[[2.0, 0.5], [0.5, -1.0]], [[0.0, 0.0], [0.0, 0.0]]]),
             "gate_b": torch.tensor([[1.0, -1.0], [0.0, 0.0]]), "gate_c": torch.tensor([-0.5, 0.0]),
             "a": torch.tensor([[1.0, 2.0], [-1.5, 0.5]]), "b": torch.tensor([0.5, -0.5]), "nu": torch.tensor([0.1, 0.2])}
    R, n = 2, 20_000
    rng = np.random.default_rng(5)
    X = torch.from_numpy(rng.uniform(-1, 1, (R, n, 2)))
    U = torch.from_numpy(rng.random((R, n, 2)))
    nat = {k: v.unsqueeze(0).expand(R, *v.shape) for k, v in truth.items()}
    y = model.sample(nat, X, U)
    true_flat = model.free(nat)
    start = true_flat + 0.1 * torch.from_numpy(rng.standard_normal(true_flat.shape))
    fit = fit_likelihood(model, X, y, start)
    assert fit.converged.all()
    obj = LikelihoodObjective(model, X, y)
    assert (fit.nll <= obj(true_flat)).all()
    _, _, H = obj.hessian(fit.flat)
    se = torch.diagonal(torch.linalg.inv(H), dim1=1, dim2=2).div(n).sqrt()
    assert ((fit.flat - true_flat).abs() < 5 * se).all()
    assert (se < 0.1).all()  # the test has power: errors of 0.5 would fail it


def test_regressor_with_a_quadratic_gate_fits_a_radial_boundary() -> None:
    """y switches expert on the circle |x|^2 = 1.5: a quadratic gate represents the boundary,
    a linear one cannot, so the polynomial-gate fit has the lower NLL and the better R^2."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = np.where((X**2).sum(1) > 1.5, 2 * X[:, 0], -X[:, 1]) + 0.1 * rng.normal(size=400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quad = GaussianMoERegressor(gate="polynomial", random_state=0, max_iter=300).fit(X, y)
        lin = GaussianMoERegressor(gate="softmax", random_state=0, max_iter=300).fit(X, y)
    assert set(quad.params_) == {"gate_A", "gate_b", "gate_c", "a", "b", "nu"}
    assert quad.nll_ < lin.nll_ - 0.3
    assert quad.score(X, y) > lin.score(X, y)
    with pytest.raises(ValueError, match="unknown gate 'cubic'"):
        GaussianMoERegressor(gate="cubic").fit(X, y)


def test_the_documented_example_runs(tmp_path) -> None:
    """examples/likelihood_gates.py (docs/likelihood.md) at a small size: one row per gate."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "likelihood_gates.py"
    out = subprocess.run([sys.executable, str(script), "--seeds", "1", "--n", "200"], capture_output=True, text=True,
                         check=True, timeout=300, cwd=tmp_path).stdout
    summary = out.split("mean test NLL over converged fits")[1]
    for gate in ("softmax", "temperature", "activation", "cosine", "perturbed-cosine", "monomial", "polynomial"):
        assert f"{gate:>17} " in summary


def test_every_gate_declares_how_the_regressor_may_standardise_x() -> None:
    from attnmoe.estimation.sklearn.likelihood import X_STANDARDISATION
    from attnmoe.moe.gates import GATES, LINEAR_SCORES

    assert set(X_STANDARDISATION) == set(LINEAR_SCORES) | set(GATES)
    assert set(X_STANDARDISATION.values()) <= {"affine", "scale", "none"}


@pytest.mark.parametrize("gate,gating", [
    ("cosine", {"gate_b": [[0.0, 1.0], [0.0, 0.0]], "gate_c": [0.0, 0.0]}),
    ("monomial", {"gate_A": [[[0.0, 0.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]], "gate_c": [-1.0, 0.0]}),
])
def test_regressor_reaches_the_mle_of_a_gate_that_centring_would_change(gate, gating) -> None:
    """x ~ N((0, 2), I): centring x moves the cosine's origin and adds a linear term the monomial
    gate cannot hold, so a regressor that centred x for these gates ended 0.035 (cosine) and
    0.108 (monomial) above the true model's NLL on its own data; an MLE must not be above it."""
    rng = np.random.default_rng(0)
    model, n = GaussianMoE(2, 2, gate=gate), 4000
    nat = {k: torch.tensor(v).unsqueeze(0) for k, v in gating.items()}
    nat |= {"a": torch.tensor([[[1.0, 0.0], [0.0, -1.0]]]), "b": torch.tensor([[3.0, -3.0]]),
            "nu": torch.tensor([[0.05, 0.05]])}
    X = torch.from_numpy(rng.normal(size=(1, n, 2)) + np.array([0.0, 2.0]))
    y = model.sample(nat, X, torch.from_numpy(rng.random((1, n, 2))))
    true_nll = LikelihoodObjective(model, X, y)(model.free(nat)).item()
    reg = GaussianMoERegressor(gate=gate, n_init=4, max_iter=300, random_state=0).fit(X[0].numpy(), y[0].numpy())
    assert reg.converged_ and reg.nll_ <= true_nll


def test_unit_vector_has_finite_second_derivatives_at_zero_and_is_unchanged_elsewhere() -> None:
    """Reverse-over-reverse through vector_norm at 0 is NaN; _unit must not be, and must equal
    the plain formula bit for bit (value and gradient) at non-zero vectors."""
    from attnmoe.moe.gates import _unit

    w = torch.tensor([0.3, -1.2, 0.7])
    for tau in (0.0, PERTURBED_COSINE_TAU):
        z = torch.zeros(3, requires_grad=True)
        (g,) = torch.autograd.grad((_unit(z, tau) * w).sum(), z, create_graph=True)
        H = torch.stack([torch.autograd.grad(g[i], z, retain_graph=True)[0] for i in range(3)])
        assert torch.isfinite(H).all()
        v = torch.tensor([[0.5, -2.0, 1.5], [1e-3, 0.0, 2.0]], requires_grad=True)
        plain = v / (torch.linalg.vector_norm(v, dim=-1, keepdim=True) + tau)
        assert torch.equal(_unit(v, tau), plain)
        assert torch.equal(torch.autograd.grad((_unit(v, tau) * w).sum(), v)[0],
                           torch.autograd.grad((plain * w).sum(), v)[0])


def test_perturbed_cosine_fit_starts_from_a_zero_direction() -> None:
    """A start with b_i = 0 (a neutral gate) made every Hessian NaN and the fit stop at once."""
    gen = torch.Generator().manual_seed(6)
    model = GaussianMoE(2, 2, gate="perturbed-cosine")
    X = torch.randn(1, 300, 2, generator=gen)
    y = torch.where(X[..., 0] > 0, 2 * X[..., 1], -X[..., 1]) + 0.2 * torch.randn(1, 300, generator=gen)
    init = torch.zeros(1, model.n_params)  # gate_b = gate_c = 0, a = 0, b = 0, nu = 1
    _, _, H = LikelihoodObjective(model, X, y).hessian(init)
    assert torch.isfinite(H).all()
    fit = fit_likelihood(model, X, y, init, max_iter=200)
    assert fit.converged.all() and int(fit.n_iter[0]) > 0


def test_hellinger_takes_registry_gate_models() -> None:
    from attnmoe.estimation.families.likelihood.voronoi import hellinger

    model = GaussianMoE(2, 1, gate="polynomial")
    flat = torch.randn(2, model.n_params, generator=torch.Generator().manual_seed(15))
    nat = model.natural(flat)
    x, ygrid = torch.linspace(-1, 1, 5).view(-1, 1), torch.linspace(-30, 30, 6001)
    assert torch.allclose(hellinger(model, nat, model, nat, x, ygrid), torch.zeros(2), atol=1e-6)
    other = model.natural(flat.flip(0))
    assert (hellinger(model, nat, model, other, x, ygrid) > 0.01).all()
