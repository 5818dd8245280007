"""The scikit-learn style QuadraticGatingMoERegressor: fit/predict, warnings, input errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from attnmoe.estimation import make_setting, sample
from attnmoe.estimation.estimator import QuadraticGatingMoERegressor

SETTING = make_setting(
    "monomial", "linear", 2, 2, noise_std=0.0, input_scale=2.0,
    params={"A": [[[0, 0], [0, 0]], [[1.5, 0.5], [0.5, -1.5]]], "c": [0.0, 0.3],
            "a": [[1.0, -1.0], [-0.5, 1.5]], "alpha": [1.0, -1.0]},
)


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = sample(SETTING, n, [seed])
    return X[0].numpy(), y[0].numpy()


def test_fit_predict_recovers_noise_free_function() -> None:
    X, y = _data()
    model = QuadraticGatingMoERegressor(n_experts=2, gate="monomial", expert="linear", n_init=4,
                                        max_iter=300, random_state=0)
    assert model.fit(X, y) is model
    Xt, yt = _data(500, seed=1)
    assert model.score(Xt, yt) > 0.999  # R^2 on fresh inputs
    assert model.A_.shape == (2, 2, 2) and model.b_ is None and model.c_.shape == (2,)
    assert model.a_.shape == (2, 2) and model.alpha_.shape == (2,) and model.n_features_in_ == 2
    np.testing.assert_array_equal(model.A_[0], 0.0)
    assert isinstance(model.n_iter_, int) and isinstance(model.converged_, bool) and model.loss_ >= 0
    # same random_state -> same fit (to optimiser accuracy: summation order in BLAS kernels may
    # differ between calls, and on noise-free data the stopping point sits at round-off level)
    again = clone(model).fit(X, y)
    np.testing.assert_allclose(again.predict(Xt), model.predict(Xt), rtol=0, atol=1e-6)
    assert not hasattr(clone(model), "c_")


def test_convergence_warning() -> None:
    X, y = _data(100)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        model = QuadraticGatingMoERegressor(n_experts=2, expert="linear", n_init=2, max_iter=2,
                                            random_state=0).fit(X, y)
    assert model.converged_ is False


def test_bad_input() -> None:
    X, y = _data(100)
    model = QuadraticGatingMoERegressor(n_experts=2, n_init=1, max_iter=1)
    with pytest.raises(NotFittedError):
        model.predict(X)
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(Xn, y)
    yi = y.copy()
    yi[3] = np.inf
    with pytest.raises(ValueError, match="[Ii]nf"):
        model.fit(X, yi)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        model.fit(X, y[:-1])
    with pytest.raises(ValueError, match="n_experts"):
        QuadraticGatingMoERegressor(n_experts=0).fit(X, y)
    with pytest.raises(ValueError, match="unknown gate"):
        QuadraticGatingMoERegressor(gate="cubic").fit(X, y)
    with pytest.raises(ValueError, match="unknown expert"):
        QuadraticGatingMoERegressor(expert="swish").fit(X, y)
    with pytest.raises(ValueError, match="number of free parameters"):
        QuadraticGatingMoERegressor(n_experts=3, gate="polynomial").fit(X[:10], y[:10])
