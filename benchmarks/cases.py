"""What several benchmarks fit: the four exact- and over-specified core settings they time, and
the paper preset's fit options for over-specified fits, read from the preset table (one
definition: ``attnmoe.estimation.study.presets.least_squares``)."""

from __future__ import annotations

from attnmoe.estimation.study import LEAST_SQUARES_PRESETS

EXACT = "monomial-sigmoid-exact,polynomial-linear-exact"
OVER = "monomial-linear-over,polynomial-linear-over,polynomial-sigmoid-over,monomial-sigmoid-over"


def paper_fit() -> dict[str, float | int]:
    """``bound``, ``dtol`` and ``max_iter`` of the ``paper`` preset (its starts: near-truth 0.1)."""
    fit = LEAST_SQUARES_PRESETS["paper"].fit
    return {"bound": fit.bound, "dtol": fit.dtol, "max_iter": fit.max_iter}
