"""The statistics of the claims ledger: per-seed slopes, the t-interval, sign-flip p, power.

The study's statistical unit is the replicate seed (common random numbers across n and across
settings, ``docs/rates.md``). Each seed gives ONE number:

* a rate claim: the OLS slope of that seed's log(loss) on log(n) (or log(n/σ²) for a noise
  sweep); with every seed present at every n, the mean of the per-seed slopes equals the OLS
  slope of the per-n mean log loss that ``summary.json`` reports;
* a contrast of two settings fitted on the same seeds: the per-seed difference of slopes;
* a real-data comparison: the per-seed difference variant − baseline (same seed, same data
  order and initialisation stream).

**Interval** (:func:`t_interval`): mean ± t_{1-α/2, S-1} · sd / √S over the S per-seed numbers
(Student 1908). It is exact when the per-seed numbers are i.i.d. normal, whatever S; the
percentile bootstrap over seeds used by ``summary.json`` is not (it covers 81 % at 4 seeds for
a nominal 95 %, issue 22). ``tests/test_claims_stats.py`` checks the coverage by simulation at
4, 8 and 40 seeds. **Exact sign-flip p** (:func:`sign_flip_p`): under H0 "the per-seed numbers
are symmetric about c" every sign pattern of (x_s − c) is equally likely (Fisher 1935); all 2^S
patterns are enumerated up to S = :data:`EXACT_SIGN_FLIP_MAX`, beyond that a seeded Monte Carlo
of :data:`SIGN_FLIP_DRAWS` patterns estimates the same p. **Power** (:func:`seeds_for_power`):
the smallest S at which the two-sided one-sample t-test at level α rejects c with probability
≥ 0.8 when the true mean is ``effect`` away, from the noncentral t distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import integrate, special
from scipy import stats as sps

__all__ = [
    "EXACT_SIGN_FLIP_MAX",
    "LEVEL",
    "POWER",
    "SIGN_FLIP_DRAWS",
    "Interval",
    "per_seed_slopes",
    "seeds_for_power",
    "sign_flip_p",
    "t_interval",
    "t_test_p",
]

#: Confidence level of every interval in the ledger.
LEVEL = 0.95
#: Target power of the "seeds needed" column.
POWER = 0.80
#: Largest number of seeds for which the sign-flip p enumerates all 2^S patterns.
EXACT_SIGN_FLIP_MAX = 20
#: Monte Carlo draws of sign patterns beyond that (generator seeded with 0: reproducible).
SIGN_FLIP_DRAWS = 50_000
#: Most seeds the power search considers (beyond that: "more than" this).
MAX_SEEDS = 100_000


@dataclass(frozen=True)
class Interval:
    """Mean of the per-seed numbers, its t-interval, sd and count."""

    mean: float
    low: float
    high: float
    sd: float
    seeds: int


def per_seed_slopes(points: Mapping[int, Sequence[tuple[float, float]]]) -> dict[int, float]:
    """OLS slope of y on x per seed; ``points[seed]`` = [(x, y), ...].

    A seed with fewer than two distinct x has no slope and is left out.
    """
    out: dict[int, float] = {}
    for seed in sorted(points):
        pts = np.asarray(points[seed], dtype=float).reshape(-1, 2)
        x, y = pts[:, 0], pts[:, 1]
        if np.unique(x).size < 2:
            continue
        xc = x - x.mean()
        out[seed] = float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))
    return out


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean ± t_{(1+level)/2, S-1} · sd/√S. Needs S ≥ 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t-interval needs at least 2 seeds, got {x.size}")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1)) * sd / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, sd, int(x.size))


def t_test_p(values: Sequence[float], null: float) -> float:
    """Two-sided one-sample t-test p of H0: mean = ``null`` (1.0 when every value equals it)."""
    x = np.asarray(values, dtype=float) - null
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return 1.0 if float(np.abs(x).max()) == 0.0 else 0.0
    t = float(x.mean()) / (sd / math.sqrt(x.size))
    return float(2 * sps.t.sf(abs(t), x.size - 1))


@lru_cache(maxsize=64)
def _sign_patterns(s: int) -> tuple[np.ndarray, str]:
    """Every ±1 pattern of length s (s ≤ EXACT_SIGN_FLIP_MAX), else SIGN_FLIP_DRAWS seeded ones."""
    if s <= EXACT_SIGN_FLIP_MAX:
        codes = np.arange(2**s, dtype=np.int64)[:, None]
        return (1 - 2 * ((codes >> np.arange(s)) & 1)).astype(float), "exact"
    rng = np.random.default_rng([0, s])
    signs = rng.choice((-1.0, 1.0), size=(SIGN_FLIP_DRAWS, s))
    signs[0] = 1.0  # the observed pattern is one of the draws
    return signs, f"Monte Carlo ({SIGN_FLIP_DRAWS} patterns)"


def sign_flip_p(values: Sequence[float], null: float = 0.0) -> tuple[float, str]:
    """Two-sided sign-flip permutation p of H0: symmetric about ``null``; and how it was computed.

    Statistic |Σ(x − null)|; p = share of sign patterns whose statistic is ≥ the observed one
    (the identity pattern included, so p ≥ 2/2^S). Exact enumeration up to
    :data:`EXACT_SIGN_FLIP_MAX` seeds, else the share among :data:`SIGN_FLIP_DRAWS` seeded random
    patterns whose first is the identity.
    """
    d = np.asarray(values, dtype=float) - null
    signs, how = _sign_patterns(d.size)
    observed = abs(float(d.sum())) * (1 - 1e-12)  # ties count as "as extreme"
    return float(np.mean(np.abs(signs @ d) >= observed)), how


def _power(seeds: int, effect: float, sd: float, alpha: float) -> float:
    """Power of the two-sided one-sample t-test: P(|T| > t_crit) for T ~ t'(S − 1, δ√S/sd).

    scipy's noncentral t where it is finite; where it returns NaN (large noncentrality at small
    df) the same probability integrated over V ~ χ²_{S−1}: P(T > c) = E[Φ(δ' − c√(V/df))].
    """
    df = seeds - 1
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = abs(effect) * math.sqrt(seeds) / sd
    value = float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))
    if math.isfinite(value):
        return value
    log_norm = -(df / 2) * math.log(2.0) - float(special.gammaln(df / 2))

    def integrand(v: float) -> float:
        scale = crit * math.sqrt(v / df)
        pdf = math.exp(log_norm + (df / 2 - 1) * math.log(v) - v / 2)
        return float(special.ndtr(nc - scale) + special.ndtr(-nc - scale)) * pdf

    lo, hi = sps.chi2.ppf(1e-12, df), sps.chi2.ppf(1 - 1e-12, df)
    return float(integrate.quad(integrand, lo, hi, limit=200)[0])


def seeds_for_power(effect: float, sd: float, alpha: float = 1 - LEVEL,
                    power: float = POWER) -> int | None:
    """Smallest S ≥ 2 at which the two-sided t-test at ``alpha`` has ``power`` to detect a mean
    ``effect`` away from the null when the per-seed sd is ``sd``; None beyond :data:`MAX_SEEDS`
    (or for a zero effect)."""
    if effect == 0.0 or not math.isfinite(effect) or not math.isfinite(sd):
        return None
    if sd <= 0.0:
        return 2
    # normal approximation as the starting point, then step up with the noncentral t
    z = float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))
    guess = max(2, int((z * sd / abs(effect)) ** 2) - 2)
    if guess > MAX_SEEDS:
        return None
    s = guess
    while s > 2 and _power(s - 1, effect, sd, alpha) >= power:
        s -= 1
    while _power(s, effect, sd, alpha) < power:
        s += 1
        if s > MAX_SEEDS:
            return None
    return s
