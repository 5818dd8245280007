"""Likelihood mixtures of experts (issue 12): families, batched NLL + MLE fit, losses, studies.

* :mod:`.families` -- Gaussian / Laplace MoE over softmax and top-K softmax gates, contaminated MoE
  (gate functions shared with the least-squares side: :mod:`attnmoe.moe.gates`,
  :func:`attnmoe.moe.mixture.topk_log_weights`);
* :mod:`.objective` -- mean NLL with autograd gradient / Hessian vmapped over replicates, MLE fit
  by the trust-region solver;
* :mod:`.voronoi` -- top-K Voronoi loss with an exponent table, Hellinger density error,
  parameter errors of the contaminated model;
* :mod:`.settings` -- named truths, nested data, starts;
* :mod:`.study` -- the presets behind ``attnmoe rates --preset NAME``;
* :mod:`.estimators` -- ``GaussianMoERegressor`` and ``MoEClassifier`` (scikit-learn).
"""

from attnmoe.estimation.likelihood.families import (
    ContaminatedMoE,
    GaussianMoE,
    LikelihoodModel,
    MultinomialLogisticMoE,
)
from attnmoe.estimation.likelihood.estimators import GaussianMoERegressor, MoEClassifier
from attnmoe.estimation.likelihood.objective import LikelihoodFit, LikelihoodObjective, fit_likelihood

__all__ = ["ContaminatedMoE", "GaussianMoE", "GaussianMoERegressor", "MoEClassifier", "LikelihoodFit", "LikelihoodModel", "LikelihoodObjective",
           "MultinomialLogisticMoE", "fit_likelihood"]
