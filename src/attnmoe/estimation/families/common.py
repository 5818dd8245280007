"""What every family shares: padding, seed streams, JSON-ready records, the near-best set of fits.

A cell (``fit(*job) -> records``, e.g. :func:`attnmoe.estimation.families.hmoe.experiment.fit_block`) fits a
block of replicate seeds and returns one JSON-ready record per seed; :func:`jsonable` makes the
values strict JSON, :func:`near_best_set` picks the fits whose width a record reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["MAX_PERTURB", "PAD", "PERTURB_STREAM", "Record", "check_perturb", "derive_seed", "jsonable", "near_best_set", "padded",
           "perturb_starts"]

#: the sample axis of every objective is padded to a multiple of PAD (a multiple of every CPU
#: vector width) with zero-weight points, so a replicate's values do not depend on its batch
PAD = 64

#: one fit's record (JSON object): at least setting, n, seed, losses, converged, iterations
Record = dict[str, Any]


def padded(length: int) -> int:
    """``length`` rounded up to a multiple of :data:`PAD`."""
    return -(-length // PAD) * PAD


def derive_seed(seed: int, stream: int) -> int:
    """An independent 32-bit seed for random stream ``stream`` of replicate ``seed``.

    Streams used here: 0 = training sample, 1 = initialisation, 2 = test sample.
    """
    return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1)[0])


#: random stream (of :func:`derive_seed`) of the rounding-level start perturbation
PERTURB_STREAM = 97

#: the largest ``--perturb``: the option is a solver-path check at rounding level, not a new start
MAX_PERTURB = 1e-6


def check_perturb(eps: object, name: str = "--perturb") -> None:
    """One-line error unless ``eps`` is a number in [0, :data:`MAX_PERTURB`] (every carrier of the
    option checks it here)."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0.0 <= eps <= MAX_PERTURB):
        raise ValueError(f"{name} must be a number in [0, {MAX_PERTURB:g}], got {eps!r}")


def perturb_starts(x0: Tensor, seeds: Sequence[int], eps: float) -> Tensor:
    """Starts ``x0`` ``(S, R, P)`` (start kind, replicate seed, parameter) moved at rounding level:

        x0[s, r, p] + eps * max(|x0[s, r, p]|, 1) * z[s, p],   z ~ N(0, 1) of stream
        derive_seed(seeds[r], PERTURB_STREAM)

    so a fit's start depends on its key (seed, start) only. The solver-path robustness check of
    the claims ledger (rule 7, ``attnmoe rates --perturb 1e-9``): an over-specified fit whose
    record moves under such a change reports where its solver's path went, not the estimator.
    ``eps == 0`` returns ``x0`` itself (no draw)."""
    check_perturb(eps)
    if eps == 0.0:
        return x0
    S, R, P = x0.shape
    if R != len(seeds):
        raise ValueError(f"x0 has {R} replicates, seeds {len(seeds)}")
    z = torch.stack([torch.randn(S, P, generator=torch.Generator().manual_seed(derive_seed(s, PERTURB_STREAM)),
                                 dtype=torch.float64) for s in seeds], 1).to(x0)  # (S, R, P)
    return x0 + eps * x0.abs().clamp(min=1.0) * z


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy / 0-d torch scalars as Python numbers and NaN/inf as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None  # strict JSON has no NaN/inf
    if hasattr(obj, "item"):  # 0-d torch tensor
        return jsonable(obj.item())
    return obj


def near_best_set(fits: Sequence[int], loss: Tensor, converged: Tensor, window: float) -> list[int]:
    """The near-best set of one replicate's fits ``fits`` (indices into ``loss`` / ``converged``):
    the converged ones whose training loss is within ``window`` of the best converged one
    (empty when none converged). The width of a study is the largest loss over this set."""
    ok = [i for i in fits if bool(converged[i])]
    best = min((float(loss[i]) for i in ok), default=math.nan)
    return [i for i in ok if float(loss[i]) <= best + window]
