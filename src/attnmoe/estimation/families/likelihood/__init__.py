"""Likelihood mixtures of experts (issue 12): models, batched NLL + MLE fit, losses, study cells.

* :mod:`.model` -- Gaussian / Laplace MoE over softmax and top-K softmax gates, contaminated MoE
  (gate functions shared with the least-squares side: :mod:`attnmoe.moe.gates`,
  :func:`attnmoe.moe.mixture.topk_log_weights`);
* :mod:`.objective` -- mean NLL with autograd gradient / Hessian vmapped over replicates, MLE fit
  by the trust-region solver;
* :mod:`.voronoi` -- top-K Voronoi loss with an exponent table, Hellinger density error,
  parameter errors of the contaminated model;
* :mod:`.settings` -- named truths, nested data, starts;
* :mod:`.experiment` -- one study cell (a block of seeds fitted from every start kind).

The presets behind ``attnmoe rates --preset NAME`` are :mod:`attnmoe.estimation.study.presets.likelihood`;
the scikit-learn estimators ``GaussianMoERegressor`` and ``MoEClassifier`` are
:mod:`attnmoe.estimation.sklearn.likelihood`.
"""

from attnmoe.estimation.families.likelihood.model import (
    ContaminatedMoE,
    GaussianMoE,
    LikelihoodModel,
    MultinomialLogisticMoE,
)
from attnmoe.estimation.families.likelihood.objective import LikelihoodFit, LikelihoodObjective, fit_likelihood

__all__ = ["ContaminatedMoE", "GaussianMoE", "LikelihoodFit", "LikelihoodModel", "LikelihoodObjective",
           "MultinomialLogisticMoE", "fit_likelihood"]
