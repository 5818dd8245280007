"""The ledger's statistics against independent computations (NumPy, SciPy, hand loops, simulation)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from attnmoe.claims import stats
from attnmoe.claims.coverage import simulate_coverage


def test_per_seed_slopes_equal_polyfit_and_skip_single_size() -> None:
    rng = np.random.default_rng(1)
    x = np.log([1000, 2000, 4000, 8000])
    points = {s: [(xi, -0.4 * xi + rng.normal()) for xi in x] for s in range(5)}
    points[9] = [(x[0], 1.0), (x[0], 2.0)]  # one distinct size: no slope
    got = stats.per_seed_slopes(points)
    assert sorted(got) == list(range(5))
    for s in range(5):
        xs, ys = np.array(points[s]).T
        assert got[s] == pytest.approx(np.polyfit(xs, ys, 1)[0], rel=1e-12)


def test_t_interval_and_t_test_equal_scipy() -> None:
    v = np.array([-0.61, -0.42, -0.55, -0.47, -0.39, -0.58])
    iv = stats.t_interval(v)
    lo, hi = sps.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=sps.sem(v))
    assert (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-12)
    assert iv.sd == pytest.approx(v.std(ddof=1))
    assert stats.t_test_p(v, -0.25) == pytest.approx(sps.ttest_1samp(v, -0.25).pvalue, rel=1e-10)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.t_interval([0.1])


def _sign_flip_loop(d: np.ndarray, null: float) -> float:
    x = d - null
    obs = abs(x.sum())
    hits = [abs(np.dot(signs, x)) >= obs - 1e-12 for signs in itertools.product((1, -1), repeat=len(x))]
    return float(np.mean(hits))


@pytest.mark.parametrize("values,null", [([0.3, -0.1, 0.5, 0.2, 0.7], 0.0), ([-0.5, -0.52, -0.45, -0.61], -0.25),
                                         ([1.0, 1.0, 1.0], 0.0)])
def test_sign_flip_exact_equals_hand_loop(values: list[float], null: float) -> None:
    p, how = stats.sign_flip_p(values, null)
    assert how == "exact"
    assert p == pytest.approx(_sign_flip_loop(np.array(values), null))


def test_sign_flip_floor_and_monte_carlo() -> None:
    assert stats.sign_flip_p([0.1, 0.2, 0.3])[0] == pytest.approx(2 / 8)  # 3 seeds: never below 0.25
    rng = np.random.default_rng(0)
    strong = rng.normal(1.0, 0.3, 30)
    p, how = stats.sign_flip_p(strong)
    assert how.startswith("Monte Carlo") and p == pytest.approx(1 / stats.SIGN_FLIP_DRAWS)
    null = rng.normal(0.0, 1.0, 30)
    p_null = stats.sign_flip_p(null)[0]
    z = abs(null.sum()) / np.sqrt((null**2).sum())  # the sign-flip statistic's normal approximation
    assert p_null == pytest.approx(2 * sps.norm.sf(z), abs=0.03)


def test_seeds_for_power_is_the_smallest_count_with_80_percent() -> None:
    def power(s: int, effect: float, sd: float, alpha: float) -> float:  # scipy's noncentral t, by hand
        crit = sps.t.ppf(1 - alpha / 2, s - 1)
        nc = effect * np.sqrt(s) / sd
        return sps.nct.sf(crit, s - 1, nc) + sps.nct.cdf(-crit, s - 1, nc)

    for effect, sd, alpha in ((0.25, 0.3, 0.05), (0.1, 0.4, 0.05 / 4), (1.0, 0.5, 0.05)):
        s = stats.seeds_for_power(effect, sd, alpha=alpha)
        assert power(s, effect, sd, alpha) >= 0.8 > power(s - 1, effect, sd, alpha) or s == 2
    assert stats.seeds_for_power(0.0, 1.0) is None
    # large noncentrality at small df, where scipy's nct gives NaN: the integral path, checked by simulation
    rng = np.random.default_rng(3)
    sims = rng.normal(0.0034, 0.00063, size=(20000, 4))
    t = sims.mean(1) / (sims.std(1, ddof=1) / 2)
    empirical = np.mean(np.abs(t) > sps.t.ppf(1 - 0.05 / 32, 3))
    assert stats._power(4, 0.0034, 0.00063, 0.05 / 16) == pytest.approx(empirical, abs=0.015)


@pytest.mark.parametrize("seeds", [4, 8, 40])
def test_t_interval_covers_at_least_93_percent(seeds: int) -> None:
    cov = simulate_coverage(seeds, studies=2000, boot=400)
    assert cov["t_interval"] >= 0.93


def test_percentile_bootstrap_undercovers_at_4_seeds() -> None:
    """The check above can fail: the interval the ledger replaced fails it at 4 seeds."""
    assert simulate_coverage(4, studies=2000, boot=400)["percentile_bootstrap"] < 0.9
