"""The multinomial logistic MoE inside the compact parameter box |theta| < B (issue 22 item 3;
``MultinomialLogisticMoE(bound=B)``, settings ``mlogit-*-box``, docs/likelihood.md): the one box
definition (:func:`~attnmoe.estimation.families.likelihood.model.box`), the density against a loop at
the boxed natural parameters, bounds that hold for any free point and for fits, and large-n
recovery of an exact-specified boxed truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnmoe.estimation.families.likelihood import ContaminatedMoE, LikelihoodObjective, MultinomialLogisticMoE, fit_likelihood
from attnmoe.estimation.families.likelihood.model import box, unbox
from attnmoe.estimation.families.likelihood.settings import MLOGIT_BOUND, SETTINGS, sample_data, start_points

pytestmark = pytest.mark.usefixtures("float64_default")


def test_one_box_definition_is_the_contaminated_one() -> None:
    v = torch.linspace(-40, 40, 101)
    assert torch.equal(box(v, 5.0), 5.0 * torch.tanh(v / 5.0))
    assert torch.equal(box(v, None), v)
    inside = torch.linspace(-4.9, 4.9, 51)
    assert torch.allclose(box(unbox(inside, 5.0), 5.0), inside, rtol=0, atol=1e-13)
    model = ContaminatedMoE(2, "laplace", (1.0, 0.0), 0.1, gate_bound=5.0)
    assert torch.equal(model._box(v), box(v, 5.0))
    with pytest.raises(ValueError, match=r"inside \|\.\| < 5.0"):
        unbox(torch.tensor([5.0]), 5.0)


def _loop_nll(nat: dict, input_map, X: np.ndarray, y: np.ndarray) -> float:
    """Mean NLL of the multinomial logistic MoE by a loop over samples (NumPy only)."""
    total = 0.0
    for x, yy in zip(X, y):
        u = nat["beta1"] @ input_map(x) + nat["beta0"]
        w = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
        p = 0.0
        for i in range(len(w)):
            z = np.concatenate([[0.0], nat["a"][i] @ x + nat["b"][i]])
            p += w[i] * np.exp(z[int(yy)] - np.log(np.exp(z).sum()))
        total -= math.log(p)
    return total / len(y)


@pytest.mark.parametrize("input_map", ["identity", "tanh"])
def test_boxed_density_is_the_model_at_the_boxed_parameters(input_map) -> None:
    gen = torch.Generator().manual_seed(3)
    k, d, S, B = 3, 2, 3, 2.5
    model = MultinomialLogisticMoE(k, d, S, input_map, bound=B)
    flat = 3.0 * torch.randn(1, model.n_params, generator=gen)  # many coordinates far outside B
    nat = {key: v[0].numpy() for key, v in model.natural(flat).items()}
    for key in ("beta1", "beta0", "a", "b"):
        assert np.abs(nat[key]).max() < B  # bounds hold for any free point
    X = torch.randn(1, 31, d, generator=gen)
    y = torch.randint(0, S, (1, 31), generator=gen).double()
    ref = _loop_nll(nat, np.tanh if input_map == "tanh" else (lambda x: x), X[0].numpy(), y[0].numpy())
    assert LikelihoodObjective(model, X, y)(flat)[0].item() == pytest.approx(ref, rel=1e-11)
    # the unbounded model at the same natural parameters: the same density
    plain = MultinomialLogisticMoE(k, d, S, input_map)
    f_plain = plain.free({key: torch.as_tensor(v).unsqueeze(0) for key, v in nat.items()})
    assert LikelihoodObjective(plain, X, y)(f_plain)[0].item() == pytest.approx(ref, rel=1e-11)
    with pytest.raises(ValueError, match="parameter box"):
        model.free({**{key: torch.as_tensor(v) for key, v in nat.items()}, "b": torch.full((k, S - 1), B)})
    with pytest.raises(ValueError, match="finite bound > 0"):
        MultinomialLogisticMoE(k, d, S, bound=0.0)


def test_the_box_settings_share_data_and_truth_with_the_unboxed_ones() -> None:
    for name in ("mlogit-softmax-vanish", "mlogit-modified-vanish", "mlogit-softmax-full"):
        plain, boxed = SETTINGS[name], SETTINGS[f"{name}-box"]
        assert boxed.fit_model.bound == MLOGIT_BOUND and plain.fit_model.bound is None
        Xp, yp = sample_data(plain, 200, [0, 1])
        Xb, yb = sample_data(boxed, 200, [0, 1])
        assert torch.equal(Xp, Xb) and torch.equal(yp, yb)
        truth = boxed.truth(200)
        assert max(float(v.abs().max()) for v in truth.values()) < MLOGIT_BOUND  # the truth is inside


def test_large_n_recovery_of_an_exact_specified_boxed_truth() -> None:
    """k = k* = 2 inside the box (the truth of mlogit-softmax-full, |theta*| <= 3 < 5), n = 20 000:
    converged, NLL no worse than the truth's, every free coordinate within 5 standard errors."""
    over = SETTINGS["mlogit-softmax-full-box"]
    model = over.truth_model  # MultinomialLogisticMoE(2, 1, 2, bound=5)
    assert model.bound == MLOGIT_BOUND
    n, seeds = 20_000, [0, 1]
    X, y = sample_data(over, n, seeds)
    truth = model.free(over.batched_truth(n, 2))
    noise = torch.from_numpy(np.random.default_rng(1).standard_normal(truth.shape))
    fit = fit_likelihood(model, X, y, truth + 0.1 * noise)
    assert fit.converged.all()
    obj = LikelihoodObjective(model, X, y)
    assert (fit.nll <= obj(truth)).all()
    _, _, H = obj.hessian(fit.flat)
    se = torch.diagonal(torch.linalg.inv(H), dim1=1, dim2=2).div(n).sqrt()
    assert ((fit.flat - truth).abs() < 5 * se).all()


def test_over_specified_boxed_fits_keep_the_bounds_and_the_density() -> None:
    """The study's over-specified fit (k = 3) at n = 4000: every fitted coordinate inside the box
    (box_max <= 1) and the class probabilities close (TV < 0.05)."""
    s = SETTINGS["mlogit-softmax-vanish-box"]
    n, seeds = 4000, [0, 1]
    X, y = sample_data(s, n, seeds)
    fit = fit_likelihood(s.fit_model, X, y, start_points(s, n, seeds))
    losses = s.losses(fit.params, s.batched_truth(n, 2))
    assert (losses["box_max"] <= 1.0).all() and (losses["tv"] < 0.05).all()
    for key in ("beta1", "beta0", "a", "b"):
        assert float(fit.params[key].abs().max()) <= MLOGIT_BOUND


def test_losses_of_a_fit_on_the_wall_of_the_box() -> None:
    """A fit whose coordinates reach |.| = B in floating point (tanh saturates) has no boxed free
    point; its losses go through the unbounded model at the natural parameters (box_max = 1)."""
    s = SETTINGS["mlogit-softmax-vanish-box"]
    truth = s.batched_truth(500, 1)
    fit = s.fit_model.natural(s.fit_model.free({key: v[:, [1, 0, 0]] for key, v in truth.items()}))
    fit["a"] = fit["a"].clone()
    fit["a"][0, 0, 0, 0] = MLOGIT_BOUND  # exactly on the wall
    losses = s.losses(fit, truth)
    assert float(losses["box_max"][0]) == 1.0 and torch.isfinite(losses["tv"]).all()

