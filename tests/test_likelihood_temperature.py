"""The temperature gate in the identifiable chart N(beta1) = 1 (estimation/families/likelihood/temperature.py,
issue 22 item 3; derivation in docs/likelihood.md): the density equals the original
parametrisation's at mapped parameters (against a SciPy loop of the original formula), the
per-sample scores at the truth are rank-deficient in the original chart and not in this one, the
Hessian at the MLE likewise, large-n recovery, derivatives, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from attnmoe.estimation.families.likelihood import GaussianMoE, LikelihoodObjective, fit_likelihood
from attnmoe.estimation.families.likelihood.settings import (
    SETTINGS,
    TEMP_TRUTH,
    normalised_temperature_truth,
    sample_data,
    start_points,
)
from attnmoe.estimation.families.likelihood.temperature import NORMALISATIONS, NormalisedTemperatureMoE

pytestmark = pytest.mark.usefixtures("float64_default")


def _scipy_nll(beta1, beta0, tau, a, b, nu, X, y) -> float:
    """Mean NLL of the ORIGINAL temperature gate softmax(beta1 x / tau + beta0), Gaussian experts,
    by a loop over samples (NumPy / SciPy only)."""
    total = 0.0
    for x, yy in zip(X, y):
        u = beta1 @ x / tau + beta0
        w = np.exp(u - u.max())
        w /= w.sum()
        total -= math.log(float(w @ stats.norm.pdf(yy, a @ x + b, np.sqrt(nu))))
    return total / len(y)


def _random_natural(k: int, d: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    beta1 = torch.randn(k, d, generator=gen)
    beta1[0, 0] = 1.0 + beta1[0, 0].abs()  # positive gamma_11 (sign +1 of the chart)
    return {"beta1": beta1, "beta0": torch.randn(k, generator=gen), "tau": torch.tensor(0.7),
            "a": torch.randn(k, d, generator=gen), "b": torch.randn(k, generator=gen),
            "nu": 0.5 + torch.rand(k, generator=gen)}


@pytest.mark.parametrize("normalisation", list(NORMALISATIONS))
@pytest.mark.parametrize("k,d", [(2, 1), (3, 2)])
def test_density_equals_the_original_parametrisation_at_mapped_parameters(k, d, normalisation) -> None:
    gen = torch.Generator().manual_seed(5)
    nat = _random_natural(k, d, gen)
    X, y = torch.randn(1, 37, d, generator=gen), torch.randn(1, 37, generator=gen)
    model = NormalisedTemperatureMoE(k, d, normalisation=normalisation)
    flat = model.free({key: v.unsqueeze(0) for key, v in nat.items()})
    ref = _scipy_nll(*(nat[key].numpy() for key in ("beta1", "beta0")), float(nat["tau"]),
                     *(nat[key].numpy() for key in ("a", "b", "nu")), X[0].numpy(), y[0].numpy())
    assert LikelihoodObjective(model, X, y)(flat)[0].item() == pytest.approx(ref, rel=1e-11)
    # the chart's natural parameters: N(beta1) = 1, the same gamma = beta1 / tau
    back = model.natural(flat)
    slopes = (back["beta1"][0, :-1] - 0).flatten()
    assert float(NORMALISATIONS[normalisation](slopes)) == pytest.approx(1.0, rel=1e-12)
    g_orig = (nat["beta1"] - nat["beta1"][-1:])[:-1] / nat["tau"]
    assert torch.allclose(back["beta1"][0, :-1] / back["tau"][0], g_orig, rtol=1e-12)
    # and the original model at the original parameters gives the same value too
    orig = GaussianMoE(k, d, gate="temperature")
    f_orig = orig.free({key: v.unsqueeze(0) for key, v in nat.items()})
    assert LikelihoodObjective(orig, X, y)(f_orig)[0].item() == pytest.approx(ref, rel=1e-11)


def test_the_study_truths_are_one_density_and_one_data_stream() -> None:
    t = normalised_temperature_truth(TEMP_TRUTH)
    assert t["beta1"].tolist() == [[1.0], [0.0]] and float(t["tau"]) == 0.25  # gamma* = 2 / 0.5 = 4
    so, sn = SETTINGS["temp-temperature"], SETTINGS["temp-temperature-normalised"]
    Xo, yo = sample_data(so, 300, [0, 3])
    Xn, yn = sample_data(sn, 300, [0, 3])
    assert torch.equal(Xo, Xn) and torch.equal(yo, yn)  # same seeds, same data: paired arms


def _scores(model, flat: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample scores d log p(y_j | x_j) / d theta ``(n, P)`` of one replicate."""
    def logp(f):
        return model.log_density(model.unpack(f), X.T, y)
    return torch.func.jacrev(logp)(flat)


def test_scores_at_the_truth_are_rank_deficient_only_in_the_original_chart() -> None:
    """The empirical Fisher information (1/n) S^T S at the truth: in (beta1, log tau) the
    direction (beta1, 1) is an exact null vector (the rescaling orbit), in the normalised chart
    the smallest eigenvalue is of the order of the others."""
    so, sn = SETTINGS["temp-temperature"], SETTINGS["temp-temperature-normalised"]
    X, y = sample_data(so, 4000, [0])
    out = {}
    for s in (so, sn):
        flat = s.fit_model.free(s.batched_truth(4000, 1))[0]
        S = _scores(s.fit_model, flat, X[0], y[0])
        out[s.name] = (torch.linalg.eigvalsh(S.T @ S / len(y[0])), S, flat)
    ev_o, S_o, flat_o = out["temp-temperature"]
    ev_n = out["temp-temperature-normalised"][0]
    assert float(ev_o[0] / ev_o[-1]) < 1e-14  # exactly singular up to rounding
    null = torch.zeros_like(flat_o)  # (beta1, log tau) = (2, 1) scaled: the orbit's tangent
    null[0], null[2] = TEMP_TRUTH["beta1"][0, 0], 1.0
    assert float((S_o @ null).abs().max()) < 1e-12
    assert float(ev_n[0] / ev_n[-1]) > 1e-3
    assert float(ev_n[0]) > 1e-2


def test_large_n_recovery_and_a_regular_hessian_at_the_mle() -> None:
    """n = 20 000, 2 seeds: the normalised fit converges, its NLL is no worse than the truth's,
    every free coordinate (tau~ included) within 5 standard errors of the observed information,
    which is well conditioned; the original chart's Hessian at its MLE is singular to ~1e-5."""
    n, seeds = 20_000, [0, 1]
    sn, so = SETTINGS["temp-temperature-normalised"], SETTINGS["temp-temperature"]
    X, y = sample_data(sn, n, seeds)
    fit = fit_likelihood(sn.fit_model, X, y, start_points(sn, n, seeds))
    assert fit.converged.all()
    truth = sn.fit_model.free(sn.batched_truth(n, 2))
    obj = LikelihoodObjective(sn.fit_model, X, y)
    assert (fit.nll <= obj(truth)).all()
    _, _, H = obj.hessian(fit.flat)
    ev = torch.linalg.eigvalsh(H)
    assert (ev[:, 0] > 0.02).all()
    se = torch.diagonal(torch.linalg.inv(H), dim1=1, dim2=2).div(n).sqrt()
    assert ((fit.flat - truth).abs() < 5 * se).all()
    assert ((fit.params["tau"] - 0.25).abs() < 0.02).all()
    fo = fit_likelihood(so.fit_model, X, y, start_points(so, n, seeds))
    assert fo.converged.all()
    _, _, Ho = LikelihoodObjective(so.fit_model, X, y).hessian(fo.flat)
    ev_o = torch.linalg.eigvalsh(Ho)
    assert (ev_o[:, 0].abs() < 1e-4).all()  # the flat orbit direction
    # one maximum, two charts: the same NLL (within the decrement tolerance 1e-3 / n) and gamma
    assert torch.allclose(fit.nll, fo.nll, rtol=0, atol=1e-7)
    gamma = [f.params["beta1"][:, 0, 0] / f.params["tau"] for f in (fit, fo)]
    assert torch.allclose(gamma[0], gamma[1], rtol=1e-3)


def test_gradient_and_hessian_match_finite_differences() -> None:
    model = NormalisedTemperatureMoE(3, 2)
    gen = torch.Generator().manual_seed(4)
    flat = 0.5 * torch.randn(2, model.n_params, generator=gen)
    X, y = torch.randn(2, 40, 2, generator=gen), torch.randn(2, 40, generator=gen)
    obj = LikelihoodObjective(model, X, y)
    _, g, H = obj.hessian(flat)
    h, eye = 1e-5, torch.eye(model.n_params)
    fd_g = torch.stack([(obj(flat + h * eye[p]) - obj(flat - h * eye[p])) / (2 * h) for p in range(model.n_params)], -1)
    fd_H = torch.stack([(obj.value_and_grad(flat + h * eye[p])[1] - obj.value_and_grad(flat - h * eye[p])[1]) / (2 * h)
                        for p in range(model.n_params)], -1)
    assert torch.allclose(g, fd_g, rtol=1e-6, atol=1e-8)
    assert torch.allclose(H, fd_H, rtol=1e-5, atol=1e-7)


def test_bad_input_is_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="gate='temperature'"):
        NormalisedTemperatureMoE(2, 1, gate="softmax")
    with pytest.raises(ValueError, match="unknown normalisation"):
        NormalisedTemperatureMoE(2, 1, normalisation="max")
    with pytest.raises(ValueError, match="sign"):
        NormalisedTemperatureMoE(2, 1, sign=0)
    with pytest.raises(ValueError, match=r"sign\(beta1_11 / tau\) = \+1"):
        NormalisedTemperatureMoE(2, 1).free({**TEMP_TRUTH, "beta1": -TEMP_TRUTH["beta1"]})
    assert NormalisedTemperatureMoE(2, 1, sign=-1).free({**TEMP_TRUTH, "beta1": -TEMP_TRUTH["beta1"]}).shape == (8,)
