"""One cell of a convergence-rate study: sample, fit and score R replicates as one program.

``fit_and_score(setting, n, seeds)`` draws replicate r's training sample, initialisation and
test sample from ``seeds[r]`` alone (streams 0/3, 1 and 2 of :func:`~attnmoe.estimation.truth.
derive_seed`), fits all replicates in ONE batched least-squares program, and returns one
JSON-serialisable record per seed with the Voronoi losses D1, D2 (and their mass part), the
L2 error of the regression function, convergence flag, iterations and time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from attnmoe.estimation.fit import fit_least_squares, fit_restarts, near_truth_init, random_init
from attnmoe.estimation.options import FitOptions
from attnmoe.estimation.truth import Setting, derive_seed, sample
from attnmoe.estimation.voronoi import l2_error, voronoi_losses

__all__ = ["INITS", "fit_and_score"]

INITS = ("near-truth", "random")


def fit_and_score(
    setting: Setting,
    n: int,
    seeds: Sequence[int],
    options: FitOptions | None = None,
) -> list[dict]:
    """Fit ``len(seeds)`` replicates of ``setting`` at sample size ``n``; one record per seed.

    Args:
        setting: the ground truth (gives k_fit, gate, expert, noise, input law).
        n: training sample size; must be >= the number of free parameters.
        seeds: one int per replicate.
        options: the fit options (:class:`~attnmoe.estimation.options.FitOptions`, defaults
            there); random restarts are clipped to 0.99 * bound when a box is set.

    Returns:
        ``[{"setting", "n", "seed", "losses": {"D1", "D2", "mass", "atom", "L2"}, "converged",
        "iterations", "seconds" (batch wall time / R), "train_loss"}, ...]``.
    """
    o = options if options is not None else FitOptions()
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a Setting, got {type(setting).__name__}")
    if o.init not in INITS:
        raise ValueError(f"unknown init {o.init!r}; valid: {list(INITS)}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    layout = setting.fit_layout
    if n < layout.n_params:
        raise ValueError(
            f"n = {n} is smaller than the number of free parameters ({layout.n_params}) of {setting.name}"
        )
    start = time.perf_counter()
    X, y = sample(setting, n, seeds)
    fit_kwargs = dict(method=o.method, max_iter=o.max_iter, tol=o.tol, bound=o.bound)
    if o.init == "near-truth":
        x0 = near_truth_init(layout, setting.true_params(), seeds, o.init_scale)
        res = fit_least_squares(layout, X, y, x0, **fit_kwargs)
    else:
        inits = torch.stack(
            [random_init(layout, X[r : r + 1], y[r : r + 1], o.n_init,
                         torch.Generator().manual_seed(derive_seed(s, 1)))[:, 0]
             for r, s in enumerate(seeds)],
            dim=1,
        )  # (n_init, R, P)
        if o.bound is not None:
            inits = inits.clamp(-0.99 * o.bound, 0.99 * o.bound)
        res = fit_restarts(layout, X, y, inits, **fit_kwargs)
    losses = voronoi_losses(res.params, setting.true_params())
    losses["L2"] = l2_error(res.params, setting, o.n_test, seeds)
    seconds = (time.perf_counter() - start) / len(seeds)
    records = []
    for r, s in enumerate(seeds):
        records.append(
            {
                "setting": setting.name,
                "n": int(n),
                "seed": s,
                "losses": {k: _num(v[r]) for k, v in losses.items()},
                "converged": bool(res.converged[r]),
                "iterations": int(res.n_iter[r]),
                "seconds": seconds,
                "train_loss": _num(res.loss[r]),
            }
        )
    return records


def _num(v: torch.Tensor) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    x = float(v)
    return x if math.isfinite(x) else None
