"""Starting points of least-squares fits, ``(R, P)`` or ``(S, R, P)`` free-parameter tensors.

Every start of replicate r is drawn from ``seeds[r]`` alone (stream 1 of
:func:`~attnmoe.estimation.families.common.derive_seed`), so a start never depends on the batch.

* :func:`near_truth_init` -- the true atoms (split when k > k*, :func:`split_atoms`) plus an
  n-independent perturbation ``scale * N(0, 1)``: local error around the truth.
* :func:`displaced_init` -- the split atom's copies moved apart by ``delta`` along the pair's
  flat direction (the directions in which f does not change, to first or all orders): starts
  on the far side of the set of near-optimal fits, to measure how wide that set is.
* :func:`group_init` -- truth + N(0, 0.005 n^(-0.083)) per parameter: the start used by the
  research group's public simulation code. It shrinks with n, so part of a slope measured
  from it is built into the start; offered for comparison only.
* :func:`random_init` -- data-driven random restarts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attnmoe.moe import ParameterLayout

__all__ = [
    "INIT_KINDS",
    "InitSpec",
    "displaced_init",
    "group_init",
    "make_starts",
    "near_truth_init",
    "parse_init",
    "parse_inits",
    "random_init",
    "split_atoms",
    "split_source",
]

#: ``--init`` kinds: name -> whether it takes a number (``kind:VALUE``)
INIT_KINDS: dict[str, bool] = {
    "near-truth": True, "displaced": True, "displaced-gate": True, "group": False, "random": False,
}


def _generator(seed: int, start: int, stream: int = 1) -> torch.Generator:
    """Generator of start ``start`` of replicate ``seed`` (start 0 = the historical stream)."""
    key = [int(seed), stream] if start == 0 else [int(seed), stream, int(start)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


def split_source(k_true: int, k_fit: int) -> list[int]:
    """Which true atom each of the k_fit fitted atoms copies (:func:`split_atoms`)."""
    if k_fit < k_true:
        raise ValueError(f"k_fit ({k_fit}) must be >= k* ({k_true})")
    pool = list(range(1, k_true)) or [0]
    return list(range(k_true)) + [pool[i % len(pool)] for i in range(k_fit - k_true)]
def split_atoms(true_params: dict[str, Tensor], k_fit: int, gate_keys: Sequence[str]) -> dict[str, Tensor]:
    """Natural params with k* atoms -> k_fit >= k* atoms representing the same f (softmax).

    Extra atoms copy true atoms 1, 2, ..., k*-1, 1, ... in turn (atom 0 when k* = 1); an atom
    split into m copies gives each copy c_j - log m, so the copies' total mass exp(c_j) is kept.
    """
    k_true = next(iter(true_params.values())).shape[1]
    source = split_source(k_true, k_fit)
    counts = np.bincount(source, minlength=k_true)
    src = torch.tensor(source)
    out = {key: v[:, src].clone() for key, v in true_params.items()}
    if "c" in out and "c" in gate_keys:
        out["c"] = out["c"] - torch.log(torch.tensor(counts, dtype=out["c"].dtype))[src]
    return out


def _split_truth(layout: ParameterLayout, true_params: dict[str, Tensor], R: int) -> dict[str, Tensor]:
    """The truth split into the layout's k atoms. Sigmoid gating: a true atom split into m copies
    gives each copy c with sigmoid(c) = sigmoid(c*) / m (exact when its gating slopes are zero)."""
    params = {k: v[:1].expand(R, *v.shape[1:]) for k, v in true_params.items()}
    if layout.normalization == "sigmoid" and "c" in params:
        k_true = params["c"].shape[1]
        src = torch.tensor(split_source(k_true, layout.n_experts))
        counts = torch.bincount(src, minlength=k_true).to(params["c"])[src]  # (k,)
        out = {key: v[:, src].clone() for key, v in params.items()}
        out["c"] = torch.logit(torch.sigmoid(out["c"]) / counts)
        return out
    return split_atoms(params, layout.n_experts, layout.gate.param_names)


def near_truth_init(
    layout: ParameterLayout,
    true_params: dict[str, Tensor],
    seeds: Sequence[int],
    scale: float = 0.1,
    start: int = 0,
) -> Tensor:
    """Near-truth initialisation ``(R, P)`` as simulation studies use it.

    True atoms (split as in :func:`split_atoms` when k > k*) are packed and every free
    parameter is perturbed by ``scale * N(0, 1)``; replicate r's noise comes from its seed and
    ``start`` only (start 0: stream ``derive_seed(seeds[r], 1)``).
    """
    flat = layout.pack(_split_truth(layout, true_params, len(seeds)))  # (R, P)
    noise = torch.stack(
        [torch.randn(layout.n_params, generator=_generator(s, start), dtype=flat.dtype) for s in seeds]
    )
    return flat + scale * noise


def displaced_init(
    layout: ParameterLayout,
    true_params: dict[str, Tensor],
    seeds: Sequence[int],
    delta: float,
    *,
    gate: bool = False,
    start: int = 0,
) -> Tensor:
    """The split atom's two copies displaced by +-delta along the pair's flat direction ``(R, P)``.

    For the first split pair (true atom j copied into fitted atoms i and i', equal gates, masses
    pi = 1/2 each; :func:`split_atoms`), with a unit vector v drawn from the seed and ``start``:

    * experts (default): (a_i, alpha_i) = (a*, alpha*) + delta v, (a_i', alpha_i') = (a*, alpha*)
      - delta v. With linear experts the pair contributes w (pi h_i + (1 - pi) h_i') = w h*
      exactly, so f is unchanged: the least-squares minimisers contain this whole segment
      (docs/rates.md, "The flat direction"). With non-linear experts f changes at order delta^2.
    * ``gate=True`` (gates with a linear part b): b_i = b* + delta v, b_i' = b* - delta v and
      A_i = A_i' = A* - delta^2 v v^T / 2. Since exp(g + delta v^T x) + exp(g - delta v^T x) =
      2 exp(g) cosh(delta v^T x) = 2 exp(g + (delta v^T x)^2 / 2 + O(delta^4)), the pair's total
      gate weight, hence f, changes only at order delta^4: the b-A interaction of the polynomial
      gate.
    """
    k_true = true_params["c" if "c" in true_params else "a"].shape[1]
    src = split_source(k_true, layout.n_experts)
    pairs = [(src.index(j), i) for i, j in enumerate(src) if i >= k_true]
    if not pairs:
        raise ValueError("displaced starts need an over-specified fit (k > k*)")
    if gate and "b" not in layout.gate.param_names:
        raise ValueError(f"the {layout.gate.name} gate has no linear part b to displace")
    i, i2 = pairs[0]
    R, d = len(seeds), layout.dim
    params = {k: v.clone() for k, v in _split_truth(layout, true_params, R).items()}
    width = d if gate else d + 1
    v = torch.stack([torch.randn(width, generator=_generator(s, start, 4), dtype=torch.float64)
                     for s in seeds])
    v = v / v.norm(dim=-1, keepdim=True)  # (R, width)
    if gate:
        for idx, sign in ((i, 1.0), (i2, -1.0)):
            params["b"][:, idx] = params["b"][:, idx] + sign * delta * v
            params["A"][:, idx] = params["A"][:, idx] - 0.5 * delta**2 * v.unsqueeze(-1) * v.unsqueeze(-2)
    else:
        for idx, sign in ((i, 1.0), (i2, -1.0)):
            params["a"][:, idx] = params["a"][:, idx] + sign * delta * v[:, :d]
            params["alpha"][:, idx] = params["alpha"][:, idx] + sign * delta * v[:, d]
    return layout.pack(params)


def group_init(
    layout: ParameterLayout,
    true_params: dict[str, Tensor],
    seeds: Sequence[int],
    n: int,
    start: int = 0,
) -> Tensor:
    """Truth + N(0, sigma_n^2) per free parameter, sigma_n = 0.005 n^(-0.083) ``(R, P)``.

    The start of the research group's public simulation code (its scale shrinks with n, so a
    slope measured from it is partly the start's); for comparison, not as a default.
    """
    return near_truth_init(layout, true_params, seeds, 0.005 * n ** (-0.083), start)


def random_init(
    layout: ParameterLayout,
    X: Tensor,
    y: Tensor,
    n_init: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Data-driven random restarts ``(n_init, R, P)``.

    With s_x the standard deviation of X's entries (per replicate): A entries ~ N(0, 1)/s_x^2
    (then symmetrised by packing), b ~ N(0, 1)/s_x, c ~ N(0, 0.5^2). Linear experts: ordinary
    least squares (a_ols, alpha_ols) of y on X plus N(0, 1) * s_y / (s_x sqrt(d)) resp. N(0, s_y^2);
    activated experts: a ~ N(0, 1)/(s_x sqrt(d)), alpha ~ N(0, 1).
    """
    if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be an int >= 1, got {n_init!r}")
    R, n, d = X.shape
    k, dt = layout.n_experts, X.dtype
    s_x = X.reshape(R, -1).std(-1).clamp_min(1e-12).view(1, R, 1)  # (1, R, 1)
    s_y = y.std(-1).clamp_min(1e-12).view(1, R, 1)  # (1, R, 1)

    def rnd(*shape: int) -> Tensor:  # (S, R, k, *shape)
        return torch.randn(n_init, R, k, *shape, generator=generator, dtype=dt)

    def per_r(v: Tensor, extra: int) -> Tensor:  # (1, R, 1) -> (1, R, 1, *[1]*extra)
        return v.view(1, R, 1, *([1] * extra))

    params: dict[str, Tensor] = {}
    if "A" in layout.gate.param_names:
        params["A"] = rnd(d, d) / per_r(s_x, 2).square()
    if "b" in layout.gate.param_names:
        params["b"] = rnd(d) / per_r(s_x, 1)
    params["c"] = 0.5 * rnd()
    if layout.expert.name == "linear":
        design = torch.cat([X, X.new_ones(R, n, 1)], -1)  # (R, n, d+1)
        coef = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)  # (R, d+1)
        params["a"] = coef[None, :, None, :d] + rnd(d) * per_r(s_y / (s_x * math.sqrt(d)), 1)
        params["alpha"] = coef[None, :, None, d] + rnd() * s_y
    else:
        params["a"] = rnd(d) / per_r(s_x * math.sqrt(d), 1)
        params["alpha"] = rnd()
    flat = layout.pack({key: v.reshape(n_init * R, *v.shape[2:]) for key, v in params.items()})
    return flat.reshape(n_init, R, layout.n_params)


@dataclass(frozen=True)
class InitSpec:
    """A parsed ``--init`` value: ``near-truth:SCALE``, ``displaced:DELTA``,
    ``displaced-gate:DELTA``, ``group`` or ``random``."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_init(text: str, default_scale: float = 0.1) -> InitSpec:
    """Parse an ``--init`` value; raises ValueError with the accepted forms."""
    forms = "near-truth[:SCALE], displaced:DELTA, displaced-gate:DELTA, group, random"
    kind, _, value = str(text).strip().partition(":")
    if kind not in INIT_KINDS:
        raise ValueError(f"--init {text!r}: unknown kind {kind!r}; use one of {forms}")
    if not INIT_KINDS[kind]:
        if value:
            raise ValueError(f"--init {text!r}: {kind} takes no value")
        return InitSpec(kind)
    if not value:
        if kind != "near-truth":
            raise ValueError(f"--init {text!r}: {kind} needs a value, e.g. {kind}:0.3")
        return InitSpec(kind, default_scale)
    try:
        number = float(value)
    except ValueError as err:
        raise ValueError(f"--init {text!r}: {value!r} is not a number") from err
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"--init {text!r}: the value must be a finite number >= 0")
    return InitSpec(kind, number)


def parse_inits(text: str) -> list[InitSpec]:
    """Parse ``SPEC[+SPEC...]``: several kinds of start per replicate (e.g.
    ``near-truth:0.1+displaced:0.3``); each kind gets ``starts`` starts."""
    specs = [parse_init(part) for part in str(text).split("+")]
    if len({sp.kind for sp in specs}) != len(specs):
        raise ValueError(f"--init {text!r}: each kind of start may appear once")
    return specs


def make_starts(
    spec: InitSpec,
    layout: ParameterLayout,
    true_params: dict[str, Tensor],
    seeds: Sequence[int],
    n: int,
    starts: int,
    X: Tensor | None = None,
    y: Tensor | None = None,
) -> Tensor:
    """``starts`` starting points per replicate ``(S, R, P)`` of the kind ``spec``."""
    out = []
    for s in range(starts):
        if spec.kind == "near-truth":
            out.append(near_truth_init(layout, true_params, seeds, float(spec.value), s))
        elif spec.kind in ("displaced", "displaced-gate"):
            out.append(displaced_init(layout, true_params, seeds, float(spec.value),
                                      gate=spec.kind == "displaced-gate", start=s))
        elif spec.kind == "group":
            out.append(group_init(layout, true_params, seeds, n, s))
        else:
            if X is None or y is None:
                raise ValueError("random starts need the data X, y")
            out.append(torch.cat([
                random_init(layout, X[r : r + 1], y[r : r + 1], 1, _generator(sd, s))[0]
                for r, sd in enumerate(seeds)
            ]))
    return torch.stack(out)
