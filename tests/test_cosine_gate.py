"""Cosine routers (arXiv 2405.14131): the gate, the autograd objective, Voronoi directions."""

from __future__ import annotations

import pytest
import torch

from attnmoe.estimation.families.least_squares.autograd_objective import AutogradLeastSquaresObjective
from attnmoe.estimation.families.least_squares.fit import least_squares_objective
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.families.least_squares.truth import make_setting
from attnmoe.estimation.families.least_squares.voronoi import voronoi_losses
from attnmoe.moe import ParameterLayout, make_gate
from attnmoe.moe.gates import PERTURBED_COSINE_TAU, CosineGate


def _data(R: int = 3, n: int = 37, d: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(R, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(R, n, generator=gen, dtype=torch.float64)
    return X, y, gen


def test_cosine_logits_written_out() -> None:
    X, _, gen = _data(R=2, n=5)
    b = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    c = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    for name, tau in (("cosine", 0.0), ("perturbed-cosine", PERTURBED_COSINE_TAU)):
        got = make_gate(name, 2).logits({"b": b, "c": c}, X)
        for r in range(2):
            for j in range(5):
                for i in range(3):
                    x, bi = X[r, j], b[r, i]
                    want = float(bi @ x) / ((float(bi.norm()) + tau) * (float(x.norm()) + tau)) + float(c[r, i])
                    assert float(got[r, j, i]) == pytest.approx(want, rel=1e-12, abs=1e-14)
    # the plain cosine ignores ||b_i||; the zero vector has cosine 0
    g = make_gate("cosine", 2)
    torch.testing.assert_close(g.logits({"b": 3.0 * b, "c": c}, X), g.logits({"b": b, "c": c}, X))
    zero = g.logits({"b": torch.zeros_like(b), "c": c}, X)
    torch.testing.assert_close(zero, c.unsqueeze(1).expand_as(zero))


@pytest.mark.parametrize("tau", [(-0.1, 0.0), (0.0, -1e-9), (float("nan"), 0.0)])
def test_negative_tau_is_refused(tau) -> None:
    with pytest.raises(ValueError, match="tau"):
        CosineGate(2, *tau)


@pytest.mark.parametrize("gate", ["cosine", "perturbed-cosine"])
@pytest.mark.parametrize("normalization", ["softmax", "sigmoid"])
def test_autograd_objective_against_finite_differences(gate: str, normalization: str) -> None:
    X, y, gen = _data()
    layout = ParameterLayout(gate, "gelu", 3, 2, normalization=normalization)
    obj = least_squares_objective(layout, X, y)
    assert isinstance(obj, AutogradLeastSquaresObjective)
    theta = torch.randn(3, layout.n_params, generator=gen, dtype=torch.float64)
    loss = obj(theta)
    ref = (layout.forward(theta, X) - y).square().mean(-1)  # unpadded, written independently
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    value, grad, H = obj.hessian(theta)
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-14)
    eps = 1e-5
    for p in range(layout.n_params):
        step = torch.zeros_like(theta)
        step[:, p] = eps
        gp, gm = obj.value_and_grad(theta + step)[1], obj.value_and_grad(theta - step)[1]
        fd = (obj(theta + step) - obj(theta - step)) / (2 * eps)  # central differences, O(eps^2)
        torch.testing.assert_close(grad[:, p], fd, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(H[:, :, p], (gp - gm) / (2 * eps), rtol=1e-5, atol=1e-7)
    J = obj.jacobian(theta)
    Jfd = torch.stack([(layout.forward(theta + eps * e, X) - layout.forward(theta - eps * e, X)) / (2 * eps)
                       for e in torch.eye(layout.n_params, dtype=torch.float64)], -1)
    torch.testing.assert_close(J, Jfd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid"])
def test_autograd_objective_equals_closed_form_on_linear_gate(normalization: str) -> None:
    X, y, gen = _data(n=70)
    layout = ParameterLayout("polynomial", "sigmoid", 4, 2, normalization=normalization)
    theta = torch.randn(3, layout.n_params, generator=gen, dtype=torch.float64)
    closed, auto = LeastSquaresObjective(layout, X, y), AutogradLeastSquaresObjective(layout, X, y)
    idx = torch.tensor([2, 0])
    for a, b in zip(closed.hessian(theta), auto.hessian(theta), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed.jacobian(theta[idx], idx), auto.jacobian(theta[idx], idx),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed(theta[idx], idx), auto(theta[idx], idx), rtol=1e-12, atol=1e-14)


def test_closed_form_objective_refuses_a_cosine_gate() -> None:
    X, y, _ = _data()
    with pytest.raises(ValueError, match="no closed-form"):
        LeastSquaresObjective(ParameterLayout("cosine", "linear", 3, 2), X, y)


def test_autograd_objective_does_not_depend_on_batch_position() -> None:
    X, y, gen = _data(R=4, n=53)
    layout = ParameterLayout("perturbed-cosine", "sigmoid", 3, 2)
    obj = AutogradLeastSquaresObjective(layout, X, y)
    theta = torch.randn(4, layout.n_params, generator=gen, dtype=torch.float64)
    v, g, H = obj.hessian(theta)
    for r in range(4):
        idx = torch.tensor([r])
        v1, g1, H1 = obj.hessian(theta[idx], idx)
        torch.testing.assert_close(v1[0], v[r], rtol=0, atol=1e-15)
        torch.testing.assert_close(g1[0], g[r], rtol=0, atol=1e-14)
        torch.testing.assert_close(H1[0], H[r], rtol=0, atol=1e-13)


def test_cosine_voronoi_compares_directions() -> None:
    params = {"b": [[0.0, 0.0], [1.0, -0.5], [-0.3, 0.9]], "c": [0.0, 0.2, -0.1],
              "a": [[0.5, 0.1], [-0.4, 0.6], [0.9, -0.2]], "alpha": [0.3, -0.7, 0.1]}
    cos = make_setting("cosine", "linear", 3, 3, 2, params=params)
    pert = make_setting("perturbed-cosine", "linear", 3, 3, 2, params=params)
    scaled = cos.true_params()
    scaled["b"] = scaled["b"] * 2.5  # same f under the plain cosine router
    X = torch.rand(1, 40, 2, dtype=torch.float64) * 4 - 2
    from attnmoe.moe import make_expert, mixture_forward

    f = mixture_forward(make_gate("cosine", 2), make_expert("linear"), scaled, X)
    torch.testing.assert_close(f, cos.regression_function(X))
    assert float(voronoi_losses(scaled, cos)["D1"][0]) < 1e-12
    assert float(voronoi_losses(scaled, pert)["D1"][0]) > 0.1  # perturbed: the norm counts
