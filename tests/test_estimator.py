"""The scikit-learn MoERegressor: fit/predict, output layer, sample weights, warnings, checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from attnmoe.estimation import MoERegressor, make_setting, sample
from attnmoe.estimation.sklearn.regressor import QuadraticGatingMoERegressor

SETTING = make_setting(
    "monomial", "linear", 2, 2, noise_std=0.0, input_scale=2.0,
    params={"A": [[[0, 0], [0, 0]], [[1.5, 0.5], [0.5, -1.5]]], "c": [0.0, 0.3],
            "a": [[1.0, -1.0], [-0.5, 1.5]], "alpha": [1.0, -1.0]},
)
SIGMOID = make_setting(
    "monomial", "sigmoid", 2, 2, noise_std=0.0, input_scale=2.0,
    params={"A": [[[0, 0], [0, 0]], [[1.5, 0.5], [0.5, -1.5]]], "c": [0.0, 0.3],
            "a": [[2.0, -1.0], [-1.0, 2.0]], "alpha": [0.5, -0.5]},
)


def _data(n: int = 300, seed: int = 0, setting=SETTING) -> tuple[np.ndarray, np.ndarray]:
    X, y = sample(setting, n, [seed])
    return X[0].numpy(), y[0].numpy()


def _moe_numpy(model: MoERegressor, X: np.ndarray) -> np.ndarray:
    """offset + scale * sum_i softmax_i(x^T A_i x + c_i) sigmoid(a_i^T x + alpha_i), in numpy."""
    score = np.einsum("nd,kde,ne->nk", X, model.A_, X) + model.c_  # (n, k)
    gates = np.exp(score - score.max(1, keepdims=True))
    gates /= gates.sum(1, keepdims=True)
    experts = 1.0 / (1.0 + np.exp(-(X @ model.a_.T + model.alpha_)))  # (n, k)
    return model.output_offset_ + model.output_scale_ * (gates * experts).sum(1)


def test_fit_predict_recovers_noise_free_function() -> None:
    X, y = _data()
    model = MoERegressor(n_experts=2, gate="monomial", expert="linear", n_init=4, l2=0.0, random_state=0)
    assert model.fit(X, y) is model
    Xt, yt = _data(500, seed=1)
    assert model.score(Xt, yt) > 0.999  # R^2 on fresh inputs
    assert model.A_.shape == (2, 2, 2) and model.b_ is None and model.c_.shape == (2,)
    assert model.a_.shape == (2, 2) and model.alpha_.shape == (2,) and model.n_features_in_ == 2
    assert (model.output_scale_, model.output_offset_) == (1.0, 0.0)  # absorbed in linear experts
    np.testing.assert_array_equal(model.A_[0], 0.0)
    assert isinstance(model.n_iter_, int) and isinstance(model.converged_, bool) and model.loss_ >= 0
    again = clone(model).fit(X, y)
    np.testing.assert_allclose(again.predict(Xt), model.predict(Xt), rtol=0, atol=1e-6)
    assert not hasattr(clone(model), "c_")


def test_sigmoid_experts_predict_outside_the_unit_interval() -> None:
    # y = 300 + 80 f(x) with f a sigmoid-expert MoE: the old bounded estimator predicted in (0, 1)
    X, f = _data(400, setting=SIGMOID)
    y = 300.0 + 80.0 * f
    model = MoERegressor(random_state=0, l2=0.0, n_init=4).fit(X, y)
    Xt, ft = _data(500, seed=1, setting=SIGMOID)
    assert model.score(Xt, 300.0 + 80.0 * ft) > 0.99
    pred = model.predict(Xt)
    assert pred.min() > 250 and pred.max() < 400
    np.testing.assert_allclose(pred, _moe_numpy(model, Xt), rtol=1e-10)  # the documented formula
    np.testing.assert_allclose(model.loss_, np.mean((model.predict(X) - y) ** 2), rtol=1e-8)


def test_one_expert_linear_is_weighted_least_squares_and_ridge() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)) * [1.0, 5.0, 0.2]
    y = X @ [1.0, -0.3, 2.0] + 4.0 + rng.normal(size=80)
    w = rng.uniform(0.1, 3.0, size=80)
    ols = LinearRegression().fit(X, y, sample_weight=w)
    # tol well below the rtol checked: the start is random (random_state=None), the optimum is not
    moe = MoERegressor(n_experts=1, gate="linear", expert="linear", n_init=1, l2=0.0, tol=1e-10).fit(
        X, y, sample_weight=w)
    np.testing.assert_allclose(moe.a_[0], ols.coef_, rtol=1e-6)
    np.testing.assert_allclose(moe.alpha_[0], ols.intercept_, rtol=1e-6)
    # the penalty l2 * s_x^2 ||a||^2 (y units) is sklearn's Ridge with alpha = l2 s_x^2 sum(w)
    l2 = 0.3
    m_x = np.sum(w[:, None] * X) / (3 * w.sum())
    s_x2 = np.sum(w[:, None] * (X - m_x) ** 2) / (3 * w.sum())
    ridge = Ridge(alpha=l2 * s_x2 * w.sum()).fit(X, y, sample_weight=w)
    moe = MoERegressor(n_experts=1, gate="linear", expert="linear", n_init=1, l2=l2, tol=1e-10).fit(
        X, y, sample_weight=w)
    np.testing.assert_allclose(moe.a_[0], ridge.coef_, rtol=1e-6)
    np.testing.assert_allclose(moe.alpha_[0], ridge.intercept_, rtol=1e-6)


def test_integer_weights_equal_repeated_rows_and_zero_weights_removal() -> None:
    X, f = _data(60, setting=SIGMOID)
    y = f + 0.05 * np.random.default_rng(1).normal(size=60)
    sw = np.random.default_rng(2).integers(0, 4, size=60)
    order = np.random.default_rng(3).permutation(int(sw.sum()))
    X_rep, y_rep = np.repeat(X, sw, axis=0)[order], np.repeat(y, sw)[order]
    kw = {"n_init": 2, "max_iter": 100, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = MoERegressor(**kw).fit(X, y, sample_weight=sw)
        repeated = MoERegressor(**kw).fit(X_rep, y_rep)
        scaled = MoERegressor(**kw).fit(X, y, sample_weight=2.5 * sw)
    Xt, _ = _data(50, seed=4, setting=SIGMOID)
    np.testing.assert_array_equal(weighted.predict(Xt), repeated.predict(Xt))
    np.testing.assert_allclose(scaled.predict(Xt), weighted.predict(Xt), rtol=1e-6)
    # loss_ is the weighted mean squared error, computed here from the predictions
    keep = sw > 0
    direct = np.sum(sw[keep] * (y[keep] - weighted.predict(X[keep])) ** 2) / sw.sum()
    np.testing.assert_allclose(weighted.loss_, direct, rtol=1e-8)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_underdetermined_fit_warns_instead_of_raising() -> None:
    X, y = _data(10)
    with pytest.warns(UserWarning, match="not unique"):
        model = MoERegressor(n_experts=3, gate="polynomial", max_iter=20, n_init=1, selection="none").fit(X, y)
    assert np.isfinite(model.predict(X)).all()


def test_convergence_warning() -> None:
    X, y = _data(100)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        model = MoERegressor(n_experts=2, expert="linear", n_init=2, max_iter=2, random_state=0,
                              selection="none").fit(X, y)
    assert model.converged_ is False


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_deprecated_name_warns_and_fits_the_same() -> None:
    X, y = _data(100)
    kw = {"n_init": 1, "max_iter": 20, "random_state": 0}
    with pytest.warns(FutureWarning, match="MoERegressor"):
        old = QuadraticGatingMoERegressor(**kw).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        new = MoERegressor(**kw).fit(X, y)
    np.testing.assert_array_equal(old.predict(X), new.predict(X))


def test_bad_input() -> None:
    X, y = _data(100)
    model = MoERegressor(n_experts=2, n_init=1, max_iter=1)
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
        MoERegressor(n_experts=0).fit(X, y)
    with pytest.raises(ValueError, match="unknown gate"):
        MoERegressor(gate="cubic").fit(X, y)
    with pytest.raises(ValueError, match="unknown expert"):
        MoERegressor(expert="swish").fit(X, y)
    with pytest.raises(ValueError, match="l2"):
        MoERegressor(l2=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="[Nn]egative"):
        model.fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="non-zero"):
        model.fit(X, y, sample_weight=np.zeros(len(y)))


# Every scikit-learn estimator check, with a short optimiser budget to keep the suite fast (the
# default parameters pass the same checks: docs/estimation.md).
@parametrize_with_checks([MoERegressor(n_init=2, max_iter=30)])
def test_sklearn_compatible(estimator, check) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", "[0-9]+ distinct samples", UserWarning)  # tiny check data
        check(estimator)
