"""attnmoe.estimation: ground truths, batched least-squares fitting, Voronoi losses, estimator."""

from attnmoe.estimation.estimator import MoERegressor
from attnmoe.estimation.experiment import fit_and_score
from attnmoe.estimation.fit import (
    FitResult,
    OptimResult,
    adam,
    fit_least_squares,
    fit_restarts,
    lbfgs,
    least_squares_objective,
    near_truth_init,
    random_init,
)
from attnmoe.estimation.truth import CORE_SETTINGS, Setting, get_setting, make_setting, sample
from attnmoe.estimation.voronoi import l2_error, voronoi_cells, voronoi_losses

__all__ = [
    "CORE_SETTINGS",
    "FitResult",
    "MoERegressor",
    "OptimResult",
    "Setting",
    "adam",
    "fit_and_score",
    "fit_least_squares",
    "fit_restarts",
    "get_setting",
    "l2_error",
    "lbfgs",
    "least_squares_objective",
    "make_setting",
    "near_truth_init",
    "random_init",
    "sample",
    "voronoi_cells",
    "voronoi_losses",
]
