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
from torch import Tensor

__all__ = ["PAD", "Record", "derive_seed", "jsonable", "near_best_set", "padded"]

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
