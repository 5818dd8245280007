"""attnmoe.estimation: MoE estimators, their rate studies, and the solvers under them.

Layout (lower layers never import higher ones):

* ``solvers/`` -- batched trust-region Newton, L-BFGS, Adam; batched autograd Hessians;
* ``families/`` -- one package per model family (``least_squares``, ``likelihood``, ``hmoe``),
  each with its truths, model / objective, losses and study cell; ``common`` (records, near-best);
* ``study/`` -- the one preset table (``registry``), the one run / resume / jobs loop
  (``engine``), backends (process, Ray), records, summaries, the figure; ``presets/`` holds
  each family's presets;
* ``sklearn/`` -- the scikit-learn estimators (``MoERegressor``, ``GaussianMoERegressor``,
  ``MoEClassifier``).

This module re-exports the least-squares family's everyday names and ``MoERegressor``.
"""

from attnmoe.estimation.families.least_squares.experiment import fit_and_score
from attnmoe.estimation.families.least_squares.fit import (
    FitResult,
    fit_least_squares,
    fit_restarts,
    least_squares_objective,
)
from attnmoe.estimation.families.least_squares.init import displaced_init, group_init, near_truth_init, random_init
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.families.least_squares.truth import CORE_SETTINGS, Setting, get_setting, make_setting, sample
from attnmoe.estimation.families.least_squares.voronoi import l2_error, split_cell_stats, voronoi_cells, voronoi_losses
from attnmoe.estimation.sklearn.regressor import MoERegressor
from attnmoe.estimation.solvers.optim import OptimResult, adam, lbfgs, trust_region

__all__ = [
    "CORE_SETTINGS",
    "FitOptions",
    "FitResult",
    "MoERegressor",
    "OptimResult",
    "Setting",
    "adam",
    "displaced_init",
    "fit_and_score",
    "fit_least_squares",
    "fit_restarts",
    "get_setting",
    "group_init",
    "l2_error",
    "lbfgs",
    "least_squares_objective",
    "make_setting",
    "near_truth_init",
    "random_init",
    "sample",
    "split_cell_stats",
    "trust_region",
    "voronoi_cells",
    "voronoi_losses",
]
