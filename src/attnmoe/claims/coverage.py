"""Simulated coverage of the ledger's interval against the percentile bootstrap over seeds.

A study of S seeds, each with its own random slope (the "correlated design" of
``docs/rates.md``: a seed shares its inputs and noise across n): for seed s and size n_j,

    log loss_{s,j} = a_s + b_s log n_j + e_{s,j},  a_s ~ N(0, 1), b_s ~ N(β, τ²), e ~ N(0, σ_e²),

so the per-seed OLS slopes are i.i.d. normal about β. Each simulated study gives the ledger's
t-interval (:func:`attnmoe.claims.stats.t_interval` on the per-seed OLS slopes)
and the 95 % percentile bootstrap over whole seeds (the interval of ``summary.json``: resample S
seeds with replacement, slope of the per-n mean log loss = mean of the drawn seeds' slopes);
coverage = the share of studies whose interval holds β. Seeded: the same numbers every run.
"""

from __future__ import annotations

import numpy as np

from attnmoe.claims.stats import LEVEL, t_interval

__all__ = ["SEED_COUNTS", "simulate_coverage"]

#: Seed counts of the coverage table (issue 22: 4, 8 and 40 are checked by the tests).
SEED_COUNTS = (4, 8, 16, 40)


def simulate_coverage(seeds: int, studies: int = 2000, boot: int = 1000, slope: float = -0.5,
                      tau: float = 0.1, noise: float = 0.3, sizes: int = 5, rng_seed: int = 0) -> dict[str, float]:
    """Coverage of the t-interval and of the percentile seed bootstrap over ``studies`` studies."""
    rng = np.random.default_rng([rng_seed, seeds])
    x = np.log(np.logspace(3, 5, sizes))
    hit_t = hit_b = 0
    lo_q, hi_q = 100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2
    for _ in range(studies):
        a = rng.normal(0.0, 1.0, seeds)
        b = rng.normal(slope, tau, seeds)
        y = a[:, None] + b[:, None] * x[None, :] + rng.normal(0.0, noise, (seeds, sizes))
        xc = x - x.mean()
        vals = (y - y.mean(axis=1, keepdims=True)) @ xc / np.dot(xc, xc)  # per-seed OLS slopes
        iv = t_interval(vals)
        hit_t += bool(iv.low <= slope <= iv.high)
        draws = vals[rng.integers(0, seeds, size=(boot, seeds))].mean(axis=1)
        lo, hi = np.percentile(draws, [lo_q, hi_q])
        hit_b += bool(lo <= slope <= hi)
    return {"seeds": seeds, "studies": studies, "boot": boot, "slope": slope, "tau": tau, "noise": noise,
            "sizes": sizes, "t_interval": hit_t / studies, "percentile_bootstrap": hit_b / studies}
