"""The temperature gate of arXiv 2401.13875 in an identifiable parametrisation (issue 22, item 3).

Our temperature gate (:class:`~.model.GaussianMoE` with ``gate="temperature"``) is

    u_i(x) = beta1_i^T x / tau + beta0_i,   i = 1..k,   beta1_k = 0, beta0_k = 0,

and depends on (beta1, tau) only through gamma = beta1 / tau: (beta1, tau) -> (c beta1, c tau),
c > 0, leaves every density unchanged, so the Fisher information has the exact null vector
(beta1, 1) in (beta1, log tau) coordinates and neither tau nor beta1 is identified
(docs/likelihood.md, "An identifiable temperature parametrisation").

Here the scale of the slopes is fixed by a normalisation N (positively homogeneous of degree 1):
N(beta1) = 1. Every orbit {(c beta1, c tau)} with gamma != 0 meets N = 1 exactly once, at

    beta1~ = gamma / N(gamma),   tau~ = 1 / N(gamma),

so tau~ is the temperature of unit-scale slopes (the inverse sharpness of the gate), a smooth
function of the identified gamma. Free coordinates (a chart of the constraint surface):

    v = s (1, w) in R^m, m = (k-1) d (the free slopes, flattened row-major),
    beta1~ = v / N(v),   tau~ = exp(logtau),

with w in R^(m-1) free and the sign s = +-1 of gamma's first coordinate a fixed choice of the
model (the chart covers the gammas with s gamma_11 > 0; a fit cannot cross gamma_11 = 0, which
is at infinity in w). The map (w, logtau) -> gamma = beta1~ / tau~ is a diffeomorphism onto that
half-space, so the information in (w, logtau, ...) is non-singular wherever gamma's is.

:data:`NORMALISATIONS` holds the choices of N: ``"frobenius"`` (the Euclidean norm of the m free
slopes: rotation invariant, our default) and ``"first"`` (|v_1|: beta1~_11 = s, tau~ = 1/|gamma_11|).
With d = 1 and k = 2 (the study) both give beta1~ = s and tau~ = 1/|gamma|, and there is no w.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnmoe.estimation.families.likelihood.model import GaussianMoE, _linear
from attnmoe.moe.gates import make_linear_score

__all__ = ["NORMALISATIONS", "NormalisedTemperatureMoE"]

#: normalisations N of the free slopes v ``(..., m)`` -> ``(...,)`` (positively homogeneous, degree 1)
NORMALISATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "frobenius": lambda v: v.square().sum(-1).sqrt(),
    "first": lambda v: v[..., 0].abs(),
}


@dataclass(frozen=True)
class NormalisedTemperatureMoE(GaussianMoE):
    """Gaussian (or Laplace) MoE with the temperature gate, slopes normalised to N(beta1) = 1.

    Free blocks: ``dir`` (m - 1 = (k-1) d - 1 coordinates w; absent when m = 1), ``beta0``,
    ``logtau``, ``a``, ``b``, ``lognu``. Natural parameters are those of the ``"temperature"``
    gate (``beta1`` with N = 1 and sign s on its first coordinate, ``tau`` = tau~), so the weights,
    means, sampling and the Hellinger distance are the parent's.

    Args (beyond :class:`GaussianMoE`'s; ``gate`` must stay ``"temperature"``):
        sign: s, the sign of gamma_11 = beta1_11 / tau the chart covers.
        normalisation: a key of :data:`NORMALISATIONS`.
    """

    gate: str = "temperature"
    sign: int = 1
    normalisation: str = "frobenius"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gate != "temperature":
            raise ValueError(f"the normalised temperature model needs gate='temperature', got {self.gate!r}")
        if self.k < 2:
            raise ValueError(f"the normalised temperature gate needs k >= 2 experts, got k={self.k}")
        if self.sign not in (1, -1):
            raise ValueError(f"sign must be +1 or -1, got {self.sign!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {self.normalisation!r}; valid: {list(NORMALISATIONS)}")

    @property
    def m(self) -> int:
        """Number of free slopes, (k - 1) d."""
        return (self.k - 1) * self.dim

    @property
    def blocks(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        k, d = self.k, self.dim
        direction = (("dir", (self.m - 1,)),) if self.m > 1 else ()
        return (*direction, ("beta0", (k - 1,)), ("logtau", (1,)), ("a", (k, d)), ("b", (k,)), ("lognu", (k,)))

    def slopes(self, w: Tensor | None, like: Tensor) -> Tensor:
        """beta1~ ``(..., k - 1, d)`` of chart coordinates ``w`` ``(..., m - 1)`` (None when m = 1;
        ``like`` gives the leading shape and dtype then)."""
        lead = like.shape[:-1] if w is None else w.shape[:-1]
        one = torch.full((*lead, 1), float(self.sign), dtype=like.dtype)
        v = one if w is None else torch.cat([one, self.sign * w], -1)  # v = s (1, w)
        v = v / NORMALISATIONS[self.normalisation](v).unsqueeze(-1)
        return v.reshape(*lead, self.k - 1, self.dim)

    def _full_slopes(self, free: dict[str, Tensor]) -> Tensor:
        """beta1 ``(..., k, d)`` with the pinned last row."""
        s = self.slopes(free.get("dir"), free["logtau"])
        return torch.cat([s, s.new_zeros(*s.shape[:-2], 1, self.dim)], -2)

    def _gate(self, free: dict[str, Tensor], xT: Tensor) -> Tensor:
        beta0 = torch.cat([free["beta0"], free["beta0"].new_zeros(1)], 0)  # (k,)
        tau = torch.exp(free["logtau"])
        return make_linear_score("temperature")(_linear(self._full_slopes(free), xT), tau) + beta0.unsqueeze(-1)

    def natural(self, flat: Tensor) -> dict[str, Tensor]:
        f = self.unpack(flat)
        lead = flat.shape[:-1]
        return {"beta1": self._full_slopes(f), "beta0": torch.cat([f["beta0"], flat.new_zeros(*lead, 1)], -1),
                "tau": torch.exp(f["logtau"][..., 0]), "a": f["a"], "b": f["b"], "nu": torch.exp(f["lognu"])}

    def free(self, natural: dict[str, Tensor]) -> Tensor:
        """Free coordinates of natural temperature-gate parameters of ANY slope scale: the point of
        the normalised chart with the same gamma = beta1 / tau, hence the same density."""
        t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in natural.items()}
        if bool((t["nu"] <= 0).any()):
            raise ValueError("variances nu must be > 0")
        if bool((t["tau"] <= 0).any()):
            raise ValueError("the temperature tau must be > 0")
        beta1 = t["beta1"] - t["beta1"][..., -1:, :]  # pin the last expert (translation)
        beta0 = t["beta0"] - t["beta0"][..., -1:]
        gamma = (beta1[..., :-1, :] / t["tau"][..., None, None]).flatten(-2)  # (..., m)
        if bool((self.sign * gamma[..., 0] <= 0).any()):
            raise ValueError(f"the chart needs sign(beta1_11 / tau) = {self.sign:+d} (model's sign); got "
                             f"{gamma[..., 0].flatten()[0].item():g}")
        free = {"beta0": beta0[..., :-1], "logtau": -torch.log(NORMALISATIONS[self.normalisation](gamma)).unsqueeze(-1),
                "a": t["a"], "b": t["b"], "lognu": torch.log(t["nu"])}
        if self.m > 1:
            free["dir"] = gamma[..., 1:] / gamma[..., :1]
        return self.pack(free)
