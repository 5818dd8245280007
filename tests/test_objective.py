"""Closed-form loss, gradient and Jacobian against autograd and finite differences."""

from __future__ import annotations

import pytest
import torch

from attnmoe.estimation.families.least_squares.fit import fit_least_squares, jacobian, least_squares_objective
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.solvers.optim import value_and_grad
from attnmoe.estimation.families.least_squares.truth import get_setting, sample
from attnmoe.moe import GATES, ParameterLayout
from attnmoe.moe.experts import EXPERTS
from attnmoe.moe.gates import MonomialGate

CASES = [(g, e, nz) for g in GATES for e in EXPERTS for nz in ("softmax", "sigmoid")]


def _problem(gate: str, expert: str, normalization: str, R: int = 3, n: int = 40, d: int = 3):
    gen = torch.Generator().manual_seed(sum(map(ord, gate + expert + normalization)))
    layout = ParameterLayout(gate, expert, 4, d, normalization=normalization)
    X = torch.randn(R, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(R, n, generator=gen, dtype=torch.float64)
    theta = torch.randn(R, layout.n_params, generator=gen, dtype=torch.float64)
    return layout, X, y, theta


@pytest.mark.parametrize(("gate", "expert", "normalization"), CASES)
def test_closed_form_equals_autograd(gate: str, expert: str, normalization: str) -> None:
    layout, X, y, theta = _problem(gate, expert, normalization)
    fast = least_squares_objective(layout, X, y)
    ref = least_squares_objective(layout, X, y, closed_form=False)
    assert isinstance(fast, LeastSquaresObjective) and not isinstance(ref, LeastSquaresObjective)
    f_fast, g_fast = value_and_grad(fast, theta)
    f_ref, g_ref = value_and_grad(ref, theta)
    torch.testing.assert_close(f_fast, f_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-13)
    idx = torch.tensor([2, 0])  # a subset of replicates, out of order
    f_sub, g_sub = value_and_grad(fast, theta[idx], idx)
    torch.testing.assert_close(g_sub, g_ref[idx], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(f_sub, f_ref[idx], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast.jacobian(theta), jacobian(layout, X, theta), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("expert", ["linear", "sigmoid", "gelu"])
def test_closed_form_gradient_matches_finite_differences(expert: str) -> None:
    layout, X, y, theta = _problem("polynomial", expert, "softmax", R=2, n=25, d=2)
    obj = LeastSquaresObjective(layout, X, y)
    _, grad = obj.value_and_grad(theta)
    eps = 1e-6
    for p in range(layout.n_params):
        step = torch.zeros_like(theta)
        step[:, p] = eps
        fd = (obj(theta + step) - obj(theta - step)) / (2 * eps)  # central difference, O(eps^2)
        torch.testing.assert_close(grad[:, p], fd, rtol=1e-6, atol=1e-8)


def test_custom_gate_falls_back_to_autograd() -> None:
    class ShiftedMonomial(MonomialGate):  # same parameter names, different function
        def logits(self, params, x):
            return super().logits(params, x) + x[..., :1]

    layout = ParameterLayout(ShiftedMonomial(2), "sigmoid", 3, 2)
    X = torch.randn(2, 30, 2, dtype=torch.float64)
    obj = least_squares_objective(layout, X, torch.zeros(2, 30, dtype=torch.float64))
    assert not isinstance(obj, LeastSquaresObjective)


def test_closed_form_fit_equals_autograd_fit() -> None:
    s = get_setting("polynomial-sigmoid-exact")
    seeds = [0, 1, 2, 3]
    X, y = sample(s, 300, seeds)
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.1)
    fast = fit_least_squares(s.fit_layout, X, y, x0, method="lbfgs", max_iter=40, tol=0.0, ftol=0.0)
    ref = fit_least_squares(s.fit_layout, X, y, x0, method="lbfgs", max_iter=40, tol=0.0, ftol=0.0, closed_form=False)
    torch.testing.assert_close(fast.loss, ref.loss, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(fast.flat, ref.flat, rtol=1e-6, atol=1e-8)


def test_box_gradient_is_the_chain_rule() -> None:
    from attnmoe.estimation.families.least_squares.fit import _Box

    layout, X, y, theta = _problem("monomial", "sigmoid", "softmax")
    box = _Box(2.0)
    boxed = box.wrap(least_squares_objective(layout, X, y))
    phi = box.to_free(theta.clamp(-1.9, 1.9))
    f, g = value_and_grad(boxed, phi)
    ref = least_squares_objective(layout, X, y, closed_form=False)
    f_ref, g_ref = value_and_grad(lambda z, idx=None: ref(box.to_theta(z), idx), phi)
    torch.testing.assert_close(f, f_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-13)


def test_bounded_fit_stays_in_the_box_and_recovers_noise_free_truth() -> None:
    s = get_setting("monomial-sigmoid-over")
    seeds = [0, 1, 2]
    X, _ = sample(s, 400, seeds)
    truth = s.true_params(3)
    y = s.true_layout.forward(s.true_layout.pack(truth), X)  # noise-free responses
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.3)
    res = fit_least_squares(s.fit_layout, X, y, x0, max_iter=400, bound=3.0)
    assert float(res.flat.abs().max()) < 3.0
    assert float(res.loss.max()) < 1e-8  # an exact representation of f* lies inside the box
    with pytest.raises(ValueError, match="outside the parameter box"):
        fit_least_squares(s.fit_layout, X, y, x0, bound=0.5)


def test_a_wide_box_changes_nothing() -> None:
    s = get_setting("polynomial-linear-exact")
    seeds = [0, 1]
    X, y = sample(s, 300, seeds)
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.1)
    free = fit_least_squares(s.fit_layout, X, y, x0, max_iter=200)
    boxed = fit_least_squares(s.fit_layout, X, y, x0, max_iter=200, bound=1e4)
    torch.testing.assert_close(boxed.flat, free.flat, rtol=1e-5, atol=1e-6)


def test_every_expert_has_closed_form_derivatives_equal_to_autograd() -> None:
    """EXPERT_DERIVATIVES covers the registry, and sigma', sigma'' equal autograd's of the
    registered activation (away from relu's kink)."""
    from attnmoe.moe.experts import EXPERT_ACTIVATIONS, EXPERT_DERIVATIVES, EXPERTS

    assert set(EXPERT_DERIVATIVES) == set(EXPERTS)
    z = torch.linspace(-3.1, 2.9, 41, dtype=torch.float64)
    for name, fn in EXPERT_ACTIVATIONS.items():
        act = (lambda t: t) if fn is None else fn
        h, dh, d2h = EXPERT_DERIVATIVES[name](z)
        d1 = torch.func.vmap(torch.func.grad(act))(z)
        d2 = torch.func.vmap(torch.func.grad(torch.func.grad(act)))(z)
        torch.testing.assert_close(h, act(z), rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(dh, d1, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(d2h, d2, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_features_and_products_are_bitwise_the_indexed_formulas(d: int) -> None:
    """xi (written in place, column runs) and the feature products (one broadcast product per
    row of the upper triangle) hold bitwise the numbers of the concatenation / advanced-index
    formulas they replaced: X[..., iu0] * X[..., iu1] * (1 or 2), x, 1, zero padding."""
    from attnmoe.estimation.families.least_squares.objective import PAD, padded

    gen = torch.Generator().manual_seed(d)
    R, n = 3, 2 * PAD + 5
    X = torch.randn(R, n, d, generator=gen, dtype=torch.float64) * 1e3
    y = torch.randn(R, n, generator=gen, dtype=torch.float64)
    for gate in ("polynomial", "monomial", "linear"):
        obj = LeastSquaresObjective(ParameterLayout(gate, "sigmoid", 3, d), X, y)
        names = list(dict.fromkeys({"a": "b", "alpha": "c"}.get(v, v) for v in
                                   obj.layout.gate.param_names + obj.layout.expert.param_names))
        iu = torch.triu_indices(d, d)
        make = {"A": lambda: X[..., iu[0]] * X[..., iu[1]] * torch.where(iu[0] == iu[1], 1.0, 2.0).to(X),
                "b": lambda: X, "c": lambda: X.new_ones(R, n, 1)}
        xi = torch.cat([make[v]() for v in names], -1)
        xi = torch.cat([xi, xi.new_zeros(R, n, xi.shape[-1] % 2)], -1)
        xi = torch.cat([xi, xi.new_zeros(R, padded(n) - n, xi.shape[-1])], 1)
        assert obj.xi.shape == xi.shape and obj.xi.is_contiguous()
        assert torch.equal(obj.xi.view(torch.int64), xi.view(torch.int64)), (gate, d)
        want = xi[..., obj.ua] * xi[..., obj.ub]
        got = obj._products(xi)
        assert got.stride() == want.stride() and torch.equal(got.view(torch.int64), want.view(torch.int64))
        assert torch.equal(obj.products, want)
