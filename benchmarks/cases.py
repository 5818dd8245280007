"""What several benchmarks fit: the four exact- and over-specified core settings they time, and
the paper preset's fit options for over-specified fits, read from the preset table (one
definition: ``attnmoe.estimation.study.presets.least_squares``)."""

from __future__ import annotations

from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample
from attnmoe.estimation.study import LEAST_SQUARES_PRESETS

EXACT = "monomial-sigmoid-exact,polynomial-linear-exact"
OVER = "monomial-linear-over,polynomial-linear-over,polynomial-sigmoid-over,monomial-sigmoid-over"


def paper_fit() -> dict[str, float | int]:
    """``bound``, ``dtol`` and ``max_iter`` of the ``paper`` preset (its starts: near-truth 0.1)."""
    fit = LEAST_SQUARES_PRESETS["paper"].fit
    return {"bound": fit.bound, "dtol": fit.dtol, "max_iter": fit.max_iter}


def fit_kwargs(over: bool) -> dict[str, float | int | None]:
    """The paper preset's options for an over-specified fit; ``bench_fit.py --parts e``'s for an
    exact-specified one (no box, dtol 1e-10, max_iter 500)."""
    return paper_fit() if over else {"bound": None, "dtol": 1e-10, "max_iter": 500}


def problem(name: str, n: int, R: int, bound: float | None = None):
    """(layout, X, y, x0) of setting ``name``: seeds 0..R-1, near-truth 0.1 starts (inside 0.99 of
    the box when there is one)."""
    setting = get_setting(name)
    seeds = list(range(R))
    X, y = sample(setting, n, seeds)
    x0 = near_truth_init(setting.fit_layout, setting.true_params(), seeds, 0.1)
    if bound is not None:
        x0 = x0.clamp(-0.99 * bound, 0.99 * bound)
    return setting.fit_layout, X, y, x0
