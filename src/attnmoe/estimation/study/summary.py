"""Slopes of log(loss) on log(n) with bootstrap CIs that resample whole replicate seeds.

The design (``docs/rates.md``): replicate seed s shares its nested training inputs, start noise
and test inputs across every n (common random numbers), so the log losses of one seed at
different n are correlated, and the seed, not the record, is the independent unit. For each
setting and loss:

* **Point estimate.** The per-n mean of log(loss) over the seeds present at that n, regressed
  on log(n) by OLS. With every seed present at every n (the study's design) this is OLS on all
  (log n, log loss) points.
* **Interval.** 95% percentile bootstrap over seeds: draw S seeds with replacement from the S
  seeds of the setting and take *every* n's record of each drawn seed, so each resample keeps
  the correlation across n (Davison & Hinkley 1997, §3.8: resample the independent units).
  A seed missing at some n (a lost fit, or a NaN / non-positive loss there) enters the
  per-n means only at the n where it has a value, with its multiplicity in the resample; a
  resample in which fewer than two n have any drawn seed has no slope and is left out of the
  quantiles (counted in ``boot_unused``).
* **Randomness.** One numpy generator per setting, seeded from a SHA-256 hash of the setting's
  name (and the ``seed`` argument), drawn once per setting and shared by its losses: a
  setting's CI does not depend on which other settings or losses are summarised with it, and
  records are sorted by (seed, n) first, so it does not depend on their order either.

Convergence is reported beside every slope: the converged fraction, the mean iterations and,
when records carry a ``reason`` key, the count of each convergence reason.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnmoe.estimation.study.records import Record, jsonable, record_key
from attnmoe.estimation.families.least_squares.truth import Setting

__all__ = ["METHOD", "loss_value", "ols_slope", "setting_rng", "slope_with_ci", "summarize_records"]

METHOD = (
    "OLS slope of the per-n mean of log(loss) on log(n) (= OLS on all points when every seed "
    "is present at every n); 95% percentile bootstrap CI resampling whole replicate seeds "
    "(each drawn seed brings its records at every n)"
)


def ols_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slope of ``y`` on ``x`` along the last axis (``y``: (..., m), ``x``: (m,)); NaN in
    ``y`` marks a missing point (left out of that row's fit; NaN if fewer than 2 remain)."""
    w = np.isfinite(y).astype(float)  # (..., m)
    y0 = np.where(w > 0, y, 0.0)
    count = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_bar = (w * x).sum(axis=-1) / count
        y_bar = (w * y0).sum(axis=-1) / count
        xc = (x - x_bar[..., None]) * w
        slope = (xc * (y0 - y_bar[..., None])).sum(axis=-1) / (xc * xc).sum(axis=-1)
    return np.where(count >= 2, slope, np.nan)


def setting_rng(name: str, seed: int = 0) -> np.random.Generator:
    """The bootstrap generator of setting ``name``: a function of the name and ``seed`` only."""
    digest = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([int(seed), digest])


def slope_with_ci(
    log_n: np.ndarray,
    table: np.ndarray,
    draws: np.ndarray,
    *,
    level: float = 0.95,
) -> dict[str, float | int | None]:
    """Slope of the per-n mean log-loss on log n, with a seed-bootstrap percentile CI.

    Args:
        log_n: ``(m,)`` log sample sizes, increasing.
        table: ``(S, m)`` log losses, row = replicate seed, NaN where a seed has no value.
        draws: ``(B, S)`` indices of the seeds drawn by each bootstrap resample.
        level: coverage of the interval.

    Returns:
        ``slope``, ``intercept``, ``ci_low``, ``ci_high`` and ``boot_unused`` (resamples with
        fewer than two sizes).
    """
    present = np.isfinite(table)
    values = np.where(present, table, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = values.sum(axis=0) / present.sum(axis=0)  # (m,), NaN where no seed
    slope = float(ols_slope(log_n, means))
    if not math.isfinite(slope):
        raise ValueError("a slope needs at least two sample sizes")
    ok = np.isfinite(means)
    intercept = float(means[ok].mean() - slope * log_n[ok].mean())
    weights = np.zeros((len(draws), table.shape[0]))  # (B, S) multiplicity of each seed
    np.add.at(weights, (np.arange(len(draws))[:, None], draws), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_means = (weights @ values) / (weights @ present)  # (B, m)
    boot = ols_slope(log_n, boot_means)
    boot = boot[np.isfinite(boot)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha]) if boot.size else (np.nan, np.nan)
    return {
        "slope": slope,
        "intercept": intercept,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "boot_unused": int(len(draws) - boot.size),
    }


def loss_value(value: object) -> float | None:
    """log(value) for a usable loss (a finite number > 0), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not (math.isfinite(value) and value > 0):
        return None
    return math.log(value)


def summarize_records(
    records: Sequence[Record],
    *,
    n_boot: int = 2000,
    settings: Sequence[Setting] | None = None,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Per setting and loss: slope, bootstrap CI, n range, replicates; convergence (JSON-ready).

    Loss names are whatever the records carry. A loss value that is missing, zero, negative,
    non-finite or not a number leaves that loss of that record out of the fit (counted in
    ``dropped`` and named in a ``RuntimeWarning``). Every fit enters the slope whether or not
    the optimiser reported convergence; ``converged_fraction`` (and ``reasons``, when records
    carry a ``reason``) say how many did and why they stopped.

    Raises:
        ValueError: two records with the same ``(setting, n, seed)``.
    """
    by_setting: dict[str, list[Record]] = {}
    for r in records:
        by_setting.setdefault(str(r["setting"]), []).append(r)
    meta = {s.name: s for s in settings} if settings is not None else {}
    out: dict[str, Any] = {}
    for name in sorted(by_setting):
        recs = sorted(by_setting[name], key=lambda r: (int(r["seed"]), int(r["n"])))
        keys = [record_key(r) for r in recs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"two records for setting {dup[0]}, n={dup[1]}, seed={dup[2]}")
        seeds = sorted({int(r["seed"]) for r in recs})
        draws = setting_rng(name, seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
        loss_names = sorted({k for r in recs for k in r["losses"]})
        losses = {
            loss: _loss_entry(name, loss, recs, seeds, draws, level) for loss in loss_names
        }
        info: dict[str, Any] = {"fits": len(recs), **convergence(recs), "losses": losses}
        if name in meta:
            info["setting"] = _setting_dict(meta[name])
        out[name] = info
    return {"method": METHOD, "n_boot": n_boot, "level": level, "settings": out}


def _loss_entry(
    setting: str,
    loss: str,
    recs: list[Record],
    seeds: list[int],
    draws: np.ndarray,
    level: float,
) -> dict[str, Any]:
    ns = sorted({int(r["n"]) for r in recs})
    row = {s: i for i, s in enumerate(seeds)}
    col = {n: j for j, n in enumerate(ns)}
    table = np.full((len(seeds), len(ns)), np.nan)  # (S, m) log losses
    dropped = 0
    for r in recs:
        v = loss_value(r["losses"].get(loss))
        if v is None:
            dropped += 1
        else:
            table[row[int(r["seed"])], col[int(r["n"])]] = v
    if dropped:
        warnings.warn(
            f"{setting}: {dropped} record(s) whose {loss} is missing, NaN, non-positive or not a "
            f"number left out of the {loss} slope",
            RuntimeWarning,
            stacklevel=3,
        )
    counts = np.isfinite(table).sum(axis=0)
    keep = counts > 0
    ns_kept = [n for n, k in zip(ns, keep) if k]
    table = table[:, keep]
    entry: dict[str, Any] = {
        "n_min": ns_kept[0] if ns_kept else None,
        "n_max": ns_kept[-1] if ns_kept else None,
        "sizes": len(ns_kept),
        "replicates": int(counts[keep].min()) if ns_kept else 0,
        "seeds": int(np.isfinite(table).any(axis=1).sum()),
        "points": int(np.isfinite(table).sum()),
        "dropped": dropped,
        "mean_log_loss": {str(n): float(np.nanmean(table[:, j])) for j, n in enumerate(ns_kept)},
    }
    if len(ns_kept) >= 2:
        entry.update(slope_with_ci(np.log(np.array(ns_kept, dtype=float)), table, draws, level=level))
    else:
        entry.update(slope=None, intercept=None, ci_low=None, ci_high=None, boot_unused=None)
    return entry


def convergence(recs: Sequence[Record]) -> dict[str, Any]:
    """Converged fraction, mean iterations and (when records carry ``reason``) reason counts."""
    conv = [bool(r["converged"]) for r in recs]
    iters = [r["iterations"] for r in recs if isinstance(r.get("iterations"), (int, float))]
    info: dict[str, Any] = {
        "converged_fraction": float(np.mean(conv)) if conv else None,
        "mean_iterations": float(np.mean(iters)) if iters else None,
    }
    reasons = Counter(str(r["reason"]) for r in recs if "reason" in r)
    if reasons:
        info["reasons"] = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    walled = [bool(r["converged"]) and r["at_bound"] > 0 for r in recs
              if isinstance(r.get("at_bound"), int)]
    if walled:  # converged on the box's wall: the unconstrained infimum is at infinity
        info["converged_at_bound_fraction"] = float(np.mean(walled))
    return info


def _setting_dict(setting: Setting) -> dict[str, Any]:
    return {k: v for k, v in jsonable(setting.to_dict()).items() if isinstance(v, (str, int, float, bool))}
