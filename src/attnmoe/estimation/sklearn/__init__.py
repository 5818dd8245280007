"""scikit-learn estimators over the families: ``fit(X, y) -> self``, ``predict``, fitted
attributes ending in ``_``, ``ConvergenceWarning`` instead of silent failure.

* :mod:`.regressor` -- :class:`MoERegressor` (least squares, any registered gate x expert);
* :mod:`.likelihood` -- :class:`GaussianMoERegressor` and :class:`MoEClassifier` (maximum likelihood).
"""

from attnmoe.estimation.sklearn.likelihood import GaussianMoERegressor, MoEClassifier
from attnmoe.estimation.sklearn.regressor import MoERegressor, QuadraticGatingMoERegressor

__all__ = ["GaussianMoERegressor", "MoEClassifier", "MoERegressor", "QuadraticGatingMoERegressor"]
