"""Noise sweeps: slopes of log(loss) against log(n / sigma^2), the effective sample size.

Local-asymptotic equivalence (the reason a sweep over sigma at fixed n reads the same rate as a
sweep over n). With Y = f_G*(X) + sigma eps, the least-squares criterion is
L_n(G) = (1/n) sum_j (f_G*(X_j) - f_G(X_j) + sigma eps_j)^2. Near the truth its random part,
the empirical process (2 sigma / n) sum_j eps_j (f_G* - f_G)(X_j), has standard deviation of order
sigma / sqrt(n) times ||f_G* - f_G||, while the deterministic part (1/n) sum_j (f_G* - f_G)(X_j)^2
converges to ||f_G* - f_G||^2 at rate 1/sqrt(n) whatever sigma is. Dividing L_n - sigma^2 (mean
eps^2) by sigma^2 shows that, up to the design's own O(1/sqrt(n)) fluctuation, the estimator
depends on (n, sigma) only through n / sigma^2: halving sigma is worth four times the data. So
log(loss) against log(n / sigma^2) has the same slope as against log n at fixed sigma, as long
as the design fluctuation is negligible (checked in docs/rates.md by comparing a sweep over
sigma with one over n). Because a seed's inputs and standard-normal noise are the same at every
sigma (only the scale changes), the seed is again the resampling unit.

Records of a sweep come from settings made by :func:`attnmoe.estimation.families.least_squares.truth.with_noise`
(``<base>-sd<sigma>``); each record's ``noise`` is read from the setting name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnmoe.estimation.study.summary import loss_value, setting_rng, slope_with_ci

__all__ = ["split_noise_name", "sweep_summary"]


def split_noise_name(name: str) -> tuple[str, float | None]:
    """``"<base>-sd<sigma>"`` -> (base, sigma); other names -> (name, None)."""
    base, sep, tail = name.rpartition("-sd")
    if not sep:
        return name, None
    try:
        return base, float(tail)
    except ValueError:
        return name, None


def sweep_summary(records: Sequence[dict[str, Any]], *, n_boot: int = 2000) -> dict[str, Any]:
    """Per base setting (with at least two distinct n / sigma^2) and loss: the slope of the mean
    log loss on log(n / sigma^2) with a seed-bootstrap 95% CI, and the converged fraction."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        base, sigma = split_noise_name(str(r["setting"]))
        if sigma is not None and sigma > 0:
            groups.setdefault(base, []).append({**r, "_x": math.log(int(r["n"]) / sigma**2)})
    out: dict[str, Any] = {}
    for base in sorted(groups):
        recs = sorted(groups[base], key=lambda r: (int(r["seed"]), r["_x"]))
        xs = sorted({r["_x"] for r in recs})
        seeds = sorted({int(r["seed"]) for r in recs})
        if len(xs) < 2:
            continue
        rng = setting_rng(base + "/sweep")
        draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
        col, row = {x: i for i, x in enumerate(xs)}, {s: i for i, s in enumerate(seeds)}
        losses: dict[str, Any] = {}
        for loss in sorted({k for r in recs for k in r["losses"]}):
            table = np.full((len(seeds), len(xs)), np.nan)
            for r in recs:
                v = loss_value(r["losses"].get(loss))
                if v is not None:
                    table[row[int(r["seed"])], col[r["_x"]]] = v
            if np.isfinite(table).any(axis=0).sum() < 2:
                continue
            losses[loss] = slope_with_ci(np.array(xs), table, draws)
        out[base] = {
            "cells": len(xs),
            "fits": len(recs),
            "converged_fraction": float(np.mean([bool(r["converged"]) for r in recs])),
            "x_range": [min(xs), max(xs)],
            "losses": losses,
        }
    return {
        "method": "OLS slope of the mean log loss on log(n / sigma^2); 95% bootstrap CI over seeds",
        "settings": out,
    }
