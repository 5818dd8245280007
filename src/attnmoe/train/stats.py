"""Tests of a comparison of attention variants over seeds (``attnmoe compare``'s summary, and the
claims ledger's Holm correction): Welch's unequal-variance t-test, the paired t-test with the exact
paired permutation p beside it, and Holm's step-down adjustment.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["holm", "paired", "welch"]


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float] | None:
    """Welch's t-test of ``a`` against ``b`` (two-sided); ``None`` when a group has n < 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():  # identical values: scipy warns, returns nan
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False)
    return {"t": float(result.statistic), "p": float(result.pvalue), "df": float(result.df)}


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Paired tests of ``a - b`` over the seeds both have (same seed = same initialisation
    stream and data order); ``None`` with fewer than 2 pairs.

    ``p``: the paired t-test (scipy ``ttest_rel``). ``p_exact``: the exact paired permutation
    test, :func:`attnmoe.claims.stats.sign_flip_p` of the k differences about 0 (statistic
    |Σ d|, all 2^k sign patterns enumerated, so ``p_exact >= 2/2^k``; ``exact`` names the method,
    a seeded Monte Carlo beyond ``EXACT_SIGN_FLIP_MAX`` pairs) — the same function the claims
    ledger uses, so the two report one number.
    """
    from attnmoe.claims.stats import sign_flip_p  # here: attnmoe.claims imports this module

    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    x = np.asarray([a[s] for s in common], float)
    y = np.asarray([b[s] for s in common], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(x, y)
    p_exact, how = sign_flip_p(x - y, 0.0)
    return {"mean_diff": float(np.mean(x - y)), "t": float(result.statistic),
            "p": float(result.pvalue), "p_exact": p_exact, "exact": how, "n_pairs": len(common),
            "n_negative": int(np.sum(x - y < 0)), "n_positive": int(np.sum(x - y > 0))}


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (Holm 1979, step-down) of a family of tests.

    p_(1) <= ... <= p_(m) sorted; adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    ``None`` (a test that could not be run) stays ``None`` and does not count in m.
    """
    present = sorted(((p, key) for key, p in pvalues.items() if p is not None and not math.isnan(p)))
    m, running, out = len(present), 0.0, dict.fromkeys(pvalues)
    for i, (p, key) in enumerate(present):
        running = max(running, min(1.0, (m - i) * p))
        out[key] = running
    return out
