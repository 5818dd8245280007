"""attnmoe.estimation: ground truths, batched least-squares fitting, Voronoi losses, estimator.

Layout: ``truth`` (settings, sampling), ``objective`` (closed-form loss, gradient, Hessian),
``optim`` (generic batched solvers: L-BFGS, Adam; re-exports ``newton.trust_region``),
``newton`` (trust-region Newton), ``optim_base`` (the solvers' shared types),
``derivatives`` (batched autograd Hessians), ``autograd_objective`` (least squares for gates
without a closed form), ``init`` (starts), ``fit`` (least-squares fits), ``voronoi`` (losses),
``options`` (the fit-option table), ``experiment`` (one study cell), ``study`` (the rates
study), ``gating_truths`` (the gating family's truths), ``likelihood`` (maximum-likelihood
MoE), ``hmoe`` (the gate-position study).
"""

from attnmoe.estimation.estimator import MoERegressor
from attnmoe.estimation.experiment import fit_and_score
from attnmoe.estimation.fit import (
    FitResult,
    fit_least_squares,
    fit_restarts,
    least_squares_objective,
)
from attnmoe.estimation.init import displaced_init, group_init, near_truth_init, random_init
from attnmoe.estimation.optim import OptimResult, adam, lbfgs, trust_region
from attnmoe.estimation.options import FitOptions
from attnmoe.estimation.truth import CORE_SETTINGS, Setting, get_setting, make_setting, sample
from attnmoe.estimation.voronoi import l2_error, split_cell_stats, voronoi_cells, voronoi_losses

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
