"""Named truths of the likelihood studies: models, true parameters (possibly n-dependent), nested
data, near-truth starts, losses and the slopes the theory predicts (choices: docs/likelihood.md).

Data of replicate seed s at size n are the first n rows of one stream of uniforms
(``numpy.random.default_rng([s, 7])``, row-major), mapped to inputs and noise by inverse CDFs, so
the sample at n is a prefix of the sample at n' > n (common random numbers across n and across
settings); the start noise is a second stream (``[s, 11]``), the same at every n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import ndtri
from torch import Tensor

from attnmoe.estimation.families.likelihood.model import (
    ContaminatedMoE,
    GaussianMoE,
    LikelihoodModel,
    MultinomialLogisticMoE,
)
from attnmoe.estimation.families.likelihood.temperature import NormalisedTemperatureMoE
from attnmoe.estimation.families.likelihood.voronoi import contaminated_errors, hellinger, topk_voronoi_loss

__all__ = ["LikSetting", "SETTINGS", "contaminated_setting", "START_KINDS", "sample_data", "start_points", "topk_setting",
           "TOPK_TRUTH"]

Params = dict[str, Tensor]


@dataclass(frozen=True)
class LikSetting:
    """One study setting.

    Args:
        name: unique name (records key).
        truth_model / fit_model: the data-generating and the fitted family.
        truth: n -> true natural parameters (unbatched).
        inputs: ``"uniform01"`` (X ~ U[0, 1]^d), ``"uniform11"`` (U[-1, 1]^d) or ``"normal"`` (N(0, I)).
        start: (truth batched (R, ...), noise (R, P)) -> free starts (R, P).
        losses: (fitted natural (R, ...), truth batched (R, ...)) -> dict of (R,) losses.
        theory: loss name -> slope of log(loss) on log(n) the theory predicts (None: no rate).
        claim: one line of what the paper says for this setting.
    """

    name: str
    truth_model: LikelihoodModel
    fit_model: LikelihoodModel
    truth: Callable[[int], Params]
    inputs: str
    start: Callable[[Params, Tensor], Tensor]
    losses: Callable[[Params, Params], dict[str, Tensor]]
    theory: Mapping[str, float | None] = field(default_factory=dict)
    claim: str = ""

    def batched_truth(self, n: int, R: int) -> Params:
        return {k: torch.as_tensor(v, dtype=torch.float64).unsqueeze(0).expand(R, *torch.as_tensor(v).shape)
                for k, v in self.truth(n).items()}


def _uniforms(seeds: Sequence[int], stream: int, shape: tuple[int, ...]) -> Tensor:
    return torch.from_numpy(np.stack([np.random.default_rng([int(s), stream]).random(shape) for s in seeds]))


def sample_data(setting: LikSetting, n: int, seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Inputs ``(R, n, d)`` and responses ``(R, n)`` of replicate ``seeds`` at size ``n``."""
    d = setting.truth_model.dim
    U = _uniforms(seeds, 7, (n, d + 2))  # (R, n, d + 2), rows nested in n
    if setting.inputs == "uniform01":
        X = U[..., :d]
    elif setting.inputs == "uniform11":
        X = 2.0 * U[..., :d] - 1.0
    else:
        X = torch.from_numpy(ndtri(U[..., :d].numpy()))
    y = setting.truth_model.sample(setting.batched_truth(n, len(seeds)), X, U[..., d:])
    return X, y


#: start kind -> (numpy stream of its standard-normal noise, factor on the setting's noise scale)
START_KINDS: dict[str, tuple[int, float]] = {"near-truth": (11, 1.0), "displaced": (13, 3.0)}


def start_points(setting: LikSetting, n: int, seeds: Sequence[int], kind: str = "near-truth") -> Tensor:
    """Starts ``(R, P)`` of ``seeds``: the setting's start recipe (truth, split for an
    over-specified fit) plus its per-block noise scale times standard-normal noise of stream 11
    (``near-truth``) or 3x the noise of stream 13 (``displaced``, which probes the width of the
    set of near-optimal fits; docs/likelihood.md)."""
    if kind not in START_KINDS:
        raise ValueError(f"unknown start kind {kind!r}; choose among {list(START_KINDS)}")
    stream, factor = START_KINDS[kind]
    # one seed at a time: element-wise maths on R rows may take a vectorised path whose last bit
    # depends on R (seen: contaminated starts 5.6e-17 apart alone and in a block of 2)
    return torch.cat([
        setting.start(setting.batched_truth(n, 1), factor * torch.from_numpy(
            np.random.default_rng([int(s), stream]).standard_normal((1, setting.fit_model.n_params))))
        for s in seeds])


# ---------------------------------------------------------------------------------- top-K
#: the group's public simulation truth of 2309.13850 (d = 1, k* = 2); nu are variances
TOPK_TRUTH: Params = {
    k: torch.tensor(v, dtype=torch.float64) for k, v in {
        "beta1": [[25.0], [0.0]], "beta0": [-8.0, 0.0], "a": [[-20.0], [20.0]], "b": [15.0, -5.0], "nu": [0.3, 0.4],
    }.items()
}
#: start noise scale per free block of the Gaussian MoE
TOPK_START_SCALE = {"beta1": 1.0, "beta0": 0.3, "a": 0.3, "b": 0.1, "lognu": 0.1}
X_GRID = torch.linspace(0.0, 1.0, 129, dtype=torch.float64).unsqueeze(-1)  # (129, 1)
Y_GRID = torch.linspace(-12.0, 22.0, 4097, dtype=torch.float64)  # covers means in [-5, 15] +- 11 sd


def _check_gaussian_truth(truth: Params, k_true: int) -> None:
    nu = torch.as_tensor(truth["nu"])
    if nu.shape != (k_true,) or not bool((nu > 0).all()) or not bool(torch.isfinite(nu).all()):
        raise ValueError(f"true variances nu must be {k_true} finite numbers > 0, got {nu.tolist()}")


def topk_setting(name: str, k: int, top_k: int | None, truth: Params = TOPK_TRUTH, split: int = 1,
                 theory: Mapping[str, float | None] | None = None, claim: str = "") -> LikSetting:
    """A top-K Gaussian-MoE setting: dense truth (K* = k*), fit with k experts and top-K.

    Over-specified starts (k = k* + 1) split true atom ``split`` into two copies of half its
    mass (beta0 - log 2 each), then add noise (:data:`TOPK_START_SCALE`).
    """
    k_true = int(torch.as_tensor(truth["b"]).shape[0])
    _check_gaussian_truth(truth, k_true)
    if top_k is not None and not 1 <= top_k <= k:
        raise ValueError(f"top-K needs 1 <= K <= k, got K={top_k} with k={k} experts")
    if not k_true <= k <= k_true + 1:
        raise ValueError(f"k must be k* or k* + 1 (= {k_true} or {k_true + 1}), got {k}")
    truth_model = GaussianMoE(k_true, 1)
    fit_model = GaussianMoE(k, 1, top_k=top_k)
    scale = torch.cat([torch.full((math.prod(s),), TOPK_START_SCALE[b]) for b, s in fit_model.blocks]).double()

    def start(tr: Params, noise: Tensor) -> Tensor:
        p = dict(tr)
        if k > k_true:  # split atom `split`: copies placed last so the pinned expert stays a copy
            order = [i for i in range(k_true) if i != split] + [split, split]
            p = {key: v[:, order] for key, v in tr.items()}
            p["beta0"] = p["beta0"].clone()
            p["beta0"][:, -2:] -= math.log(2.0)
        return fit_model.free(p) + scale * noise

    def losses(fit: Params, tr: Params) -> dict[str, Tensor]:
        vor = topk_voronoi_loss(fit, tr)
        h = hellinger(fit_model, fit, truth_model, {k_: v[:1] for k_, v in tr.items()}, X_GRID, Y_GRID)
        return {"voronoi": vor["voronoi"], "hellinger": h}

    return LikSetting(name, truth_model, fit_model, lambda n: dict(truth), "uniform01", start, losses,
                      theory or {}, claim)


# ---------------------------------------------------------------------------------- temperature
#: truth of the temperature / activation gate study (ours: 2401.13875's simulation values are not
#: available to us): d = 1, k* = 2, X ~ U[-1, 1] (inputs "uniform11"), tau* = 0.5
TEMP_TRUTH: Params = {
    k: torch.tensor(v, dtype=torch.float64) for k, v in {
        "beta1": [[2.0], [0.0]], "beta0": [0.0, 0.0], "tau": 0.5, "a": [[-2.0], [2.0]], "b": [1.0, -1.0],
        "nu": [0.3, 0.4],
    }.items()
}
TEMP_X_GRID = torch.linspace(-1.0, 1.0, 129, dtype=torch.float64).unsqueeze(-1)
TEMP_Y_GRID = torch.linspace(-10.0, 10.0, 4097, dtype=torch.float64)


def normalised_temperature_truth(truth: Params) -> Params:
    """The point of the normalised chart (:mod:`.temperature`, Frobenius N) with the same
    gamma = beta1 / tau as temperature-gate natural parameters ``truth``: beta1 / N, tau / N with
    N the norm of the slopes (the last expert's are 0). TEMP_TRUTH: beta1 = (1, 0), tau = 0.25."""
    norm = torch.as_tensor(truth["beta1"], dtype=torch.float64).square().sum().sqrt()
    return {**truth, "beta1": truth["beta1"] / norm, "tau": truth["tau"] / norm}


def temperature_setting(gate: str, normalised: bool = False) -> LikSetting:
    """Exact-specified (k = k* = 2) Gaussian MoE with a ``"temperature"`` or ``"activation"`` gate;
    ``normalised``: the temperature gate in the identifiable chart N(beta1) = 1
    (:class:`~.temperature.NormalisedTemperatureMoE`; the same data, gamma* = beta1* / tau* = 4).

    Losses: |tau - tau*|, ||beta1 - beta1*|| (max over experts; the last is pinned at 0 in both;
    not for the normalised gate with d = 1, k = 2, where beta1 = 1 is fixed), ||beta1 / tau -
    beta1* / tau*|| (the temperature gate's identifiable slope), ||a - a*|| + |b - b*| + |nu - nu*|
    summed over experts ("expert"), Hellinger. Starts: truth + 0.1 N(0, 1) in free coordinates.
    """
    _check_gaussian_truth(TEMP_TRUTH, 2)
    if normalised and gate != "temperature":
        raise ValueError(f"only the temperature gate has a normalised chart, got {gate!r}")
    model = NormalisedTemperatureMoE(2, 1) if normalised else GaussianMoE(2, 1, gate=gate)
    truth = normalised_temperature_truth(TEMP_TRUTH) if normalised else TEMP_TRUTH
    with_beta1 = not (normalised and model.m == 1)

    def start(tr: Params, noise: Tensor) -> Tensor:
        return model.free(tr) + 0.1 * noise

    def losses(fit: Params, tr: Params) -> dict[str, Tensor]:
        d_beta = (fit["beta1"] - tr["beta1"]).norm(dim=-1).amax(-1)
        ratio = (fit["beta1"] / fit["tau"].view(-1, 1, 1) - tr["beta1"] / tr["tau"].view(-1, 1, 1)).norm(dim=-1).amax(-1)
        expert = ((fit["a"] - tr["a"]).norm(dim=-1) + (fit["b"] - tr["b"]).abs() + (fit["nu"] - tr["nu"]).abs()).sum(-1)
        h = hellinger(model, fit, model, {k: v[:1] for k, v in tr.items()}, TEMP_X_GRID, TEMP_Y_GRID)
        out = {"tau": (fit["tau"] - tr["tau"]).abs(), "beta1": d_beta, "beta1_over_tau": ratio,
               "expert": expert, "hellinger": h}
        if not with_beta1:
            del out["beta1"]
        return out

    if normalised:
        theory = {"tau": -0.5, "beta1_over_tau": -0.5, "expert": -0.5, "hellinger": -0.5}
        claim = ("temperature gate, identifiable chart N(beta1) = 1 (ours): tau~ = 1/||beta1/tau|| is a smooth "
                 "function of the identified slope, n^-1/2 at this exact-specified truth (our derivation)")
    elif gate == "temperature":
        theory = {"tau": None, "beta1": None, "beta1_over_tau": -0.5, "expert": -0.5, "hellinger": -0.5}
        claim = ("temperature gate: tau interacts with beta (rescaling both leaves the density unchanged "
                 "in this parametrisation): tau, beta1 not consistently estimable; slower than polynomial (paper)")
    else:
        theory = {"tau": -0.5, "beta1": -0.5, "beta1_over_tau": -0.5, "expert": -0.5, "hellinger": -0.5}
        claim = "activation gate tanh(beta1 x)/tau + beta0: gating parameters O~(n^-1/2)"
    name = "temp-temperature-normalised" if normalised else f"temp-{gate}"
    return LikSetting(name, model, model, lambda n: dict(truth), "uniform11", start, losses, theory, claim)


# ---------------------------------------------------------------------------------- multinomial logistic
MLOGIT_X_GRID = torch.linspace(-1.0, 1.0, 257, dtype=torch.float64).unsqueeze(-1)


#: B of the multinomial fits' parameter box |beta1|, |beta0|, |a|, |b| < B (``*-box`` settings):
#: the truth's largest free coordinate is 3 (|a*| = 3; beta1* = 2 after pinning the last copy,
#: b* = +-1), so B = 5 holds it inside with a margin of 2 (at the truth the box map's slope
#: 1 - (3/5)^2 = 0.64 > 0: the information stays regular) and is the contaminated study's B
#: (docs/likelihood.md, "Multinomial logistic MoE inside a parameter box")
MLOGIT_BOUND = 5.0


def mlogit_setting(input_map: str, vanish: bool, bound: float | None = None) -> LikSetting:
    """Multinomial logistic MoE (arXiv 2310.14188), d = 1, S = 2 classes, X ~ U[-1, 1], k* = 2,
    fitted over-specified with k = 3 (our truth and protocol; docs/likelihood.md).

    Truth: gate beta1* = (2, 0), beta0* = (0, 0) on M(x) (M = identity or tanh); experts
    (a*, b*) = (0 if ``vanish`` else -3, 1) and (3, -1). Start: expert 1 split in two copies of
    half its mass, + 0.1 N(0, 1). Losses: the Voronoi loss with exponent 1 everywhere on
    (beta1, a, b) ("voronoi1", the mass-weighted distance of the fitted atoms to their cells) and
    the total-variation distance of P(Y | x), averaged over a grid of x ("tv").

    ``bound``: the fit (and truth) model boxes every free coordinate in |.| < bound
    (:func:`~.families.box`); the setting's name gets ``-box`` and a loss ``box_max`` = max |coordinate|
    / bound of the fit (1 at the wall).
    """
    truth = {k: torch.tensor(v, dtype=torch.float64) for k, v in {
        "beta1": [[2.0], [0.0]], "beta0": [0.0, 0.0], "a": [[[0.0 if vanish else -3.0]], [[3.0]]], "b": [[1.0], [-1.0]],
    }.items()}
    truth_model = MultinomialLogisticMoE(2, 1, 2, input_map, bound=bound)
    model = MultinomialLogisticMoE(3, 1, 2, input_map, bound=bound)
    plain, plain_truth = MultinomialLogisticMoE(3, 1, 2, input_map), MultinomialLogisticMoE(2, 1, 2, input_map)

    def start(tr: Params, noise: Tensor) -> Tensor:
        p = {key: v[:, [1, 0, 0]] for key, v in tr.items()}  # copies of expert 1 last (pinned one)
        p["beta0"] = p["beta0"] - torch.tensor([0.0, math.log(2.0), math.log(2.0)], dtype=torch.float64)
        p["beta1"] = p["beta1"] - p["beta1"][:, -1:]  # translate so the pinned copy has beta1 = 0
        return model.free(p) + 0.1 * noise

    def losses(fit: Params, tr: Params) -> dict[str, Tensor]:
        R = fit["b"].shape[0]
        flat = lambda p, k: {"beta1": p["beta1"], "beta0": p["beta0"], "a": p["a"].reshape(R, k, -1),  # noqa: E731
                             "b": p["b"][..., 0], "nu": torch.ones(R, k, dtype=torch.float64)}
        vor = topk_voronoi_loss(flat(fit, 3), flat(tr, 2), r_bar=(0.0, 1.0, 1.0, 1.0))["voronoi"]
        Xg = MLOGIT_X_GRID.unsqueeze(0).expand(R, -1, -1)
        # through the unbounded models: a fit on the box's wall (|.| = B in floating point) has no
        # boxed free coordinates, and the class probabilities of natural parameters need none
        p_fit = plain.proba(plain.free(fit), Xg)
        p_true = plain_truth.proba(plain_truth.free(tr), Xg)
        out = {"voronoi1": vor, "tv": 0.5 * (p_fit - p_true).abs().sum(-1).mean(-1)}
        if bound is not None:  # the free slopes / intercepts (last gate pinned at 0, class 0 of each expert)
            coords = torch.cat([fit["beta1"][:, :-1].flatten(1), fit["beta0"][:, :-1], fit["a"].flatten(1),
                                fit["b"].flatten(1)], 1)
            out["box_max"] = coords.abs().amax(1) / bound
        return out

    name = f"mlogit-{'modified' if input_map == 'tanh' else 'softmax'}-{'vanish' if vanish else 'full'}"
    name += "-box" if bound is not None else ""
    theory: dict[str, float | None] = {"voronoi1": None, "tv": -0.5}
    if bound is not None:
        theory["box_max"] = None
    claim = ("standard gate, an expert's slope a* = 0: parameter rates slower than polynomial" if input_map ==
             "identity" and vanish else "modified gate M = tanh: polynomial parameter rates" if vanish else
             "standard gate, no vanishing expert parameter (control)")
    return LikSetting(name, truth_model, model, lambda n: {k: v.double() for k, v in truth.items()}, "uniform11",
                      start, losses, theory, claim)


# ---------------------------------------------------------------------------------- contaminated
D_CONT = 8
#: compact gate space of the contaminated fits, |beta_p|, |tau| < GATE_BOUND (docs/likelihood.md)
GATE_BOUND = 5.0


def contaminated_setting(case: str) -> LikSetting:
    """arXiv 2505.18455's simulation, case ``"a"``, ``"b-i"`` or ``"b-ii"`` (d = 8, X ~ N(0, I)).

    eta0 = e1, nu0 = 0.001, beta* = 1/sqrt(d), tau* = 1; (a) f0 Laplace, eta* = -e1, nu* = nu0;
    (b-i) f0 Gaussian, eta* = e1 (1 + n^(-1/8)), nu* = nu0; (b-ii) f0 Gaussian, eta* = e1,
    nu* = nu0 (1 + n^(-1/8)). Starts: truth + 0.05 N(0, 1) on every free coordinate (log nu).
    """
    d, nu0 = D_CONT, 1e-3
    e1 = torch.zeros(d, dtype=torch.float64)
    e1[0] = 1.0
    f0 = "laplace" if case == "a" else "gaussian"
    if case not in ("a", "b-i", "b-ii"):
        raise ValueError(f"unknown contaminated case {case!r}; valid: a, b-i, b-ii")
    model = ContaminatedMoE(d, f0, tuple(e1.tolist()), nu0, gate_bound=GATE_BOUND)

    def truth(n: int) -> Params:
        delta = n ** (-1.0 / 8.0)
        eta = -e1 if case == "a" else e1 * (1.0 + delta) if case == "b-i" else e1.clone()
        nu = nu0 * (1.0 + delta) if case == "b-ii" else nu0
        return {"beta": torch.full((d,), 1.0 / math.sqrt(d), dtype=torch.float64),
                "tau": torch.tensor(1.0, dtype=torch.float64), "eta": eta,
                "nu": torch.tensor(nu, dtype=torch.float64)}

    def start(tr: Params, noise: Tensor) -> Tensor:
        return model.free(tr) + 0.05 * noise

    # heuristic rates (docs/likelihood.md): distinguishable -> n^-1/2 everywhere; otherwise the
    # gate is identified through w * Delta with Delta ~ n^-1/8 the prompt-to-f0 distance
    theory = {
        "a": {"beta": -0.5, "exp_tau": -0.5, "eta": -0.5, "nu": -0.5},
        "b-i": {"beta": -0.25, "exp_tau": -0.25, "eta": -0.375, "nu": -0.5},
        "b-ii": {"beta": -0.25, "exp_tau": -0.25, "eta": -0.5, "nu": -0.375},
    }[case]
    claim = ("distinguishable (Laplace f0): every parameter O~(n^-1/2)" if case == "a" else
             "not distinguishable, prompt -> f0 at n^-1/8: gate and prompt rates slower than n^-1/2")
    return LikSetting(f"contaminated-{case}", model, model, truth, "normal", start,
                      lambda fit, tr: contaminated_errors(fit, tr), theory, claim)


def _settings() -> dict[str, LikSetting]:
    out = [
        topk_setting("topk-exact", 2, None, theory={"voronoi": -0.5, "hellinger": -0.5},
                     claim="exact-specified (k = k* = 2): parameter and density rates parametric"),
        topk_setting("topk-over-K3", 3, 3, theory={"voronoi": -0.5, "hellinger": -0.5},
                     claim="over-specified k = 3, K = 3 >= total cell size: density parametric, "
                           "Voronoi loss with r_bar exponents ~ n^-1/2 (slow parameter rates)"),
        topk_setting("topk-over-K2", 3, 2, theory={"voronoi": None, "hellinger": None},
                     claim="over-specified k = 3, K = 2 < total cell size 3: no consistency guarantee"),
        *(contaminated_setting(c) for c in ("a", "b-i", "b-ii")),
        temperature_setting("temperature"), temperature_setting("activation"),
        temperature_setting("temperature", normalised=True),
        mlogit_setting("identity", True), mlogit_setting("tanh", True), mlogit_setting("identity", False),
        *(mlogit_setting(m, v, MLOGIT_BOUND) for m, v in (("identity", True), ("tanh", True), ("identity", False))),
    ]
    return {s.name: s for s in out}


SETTINGS: dict[str, LikSetting] = _settings()
