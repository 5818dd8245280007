"""scikit-learn estimators fitted by maximum likelihood (issue 12).

* :class:`GaussianMoERegressor` -- softmax (or top-K softmax) gated mixture of Gaussian linear
  experts, p(y | x) = sum_i w_i(x) N(y | a_i^T x + b_i, nu_i) (arXiv 2309.13850's model), with
  any gate of :class:`~attnmoe.estimation.families.likelihood.model.GaussianMoE` (linear, temperature,
  activation, quadratic polynomial / monomial, cosine, perturbed cosine);
  ``predict`` is the conditional mean sum_i w_i(x) (a_i^T x + b_i), ``predict_density`` p(y | x).
* :class:`MoEClassifier` -- softmax-gated multinomial logistic MoE (arXiv 2310.14188), standard
  or modified (``input_map="tanh"``) gate; ``predict_proba`` P(Y = s | x).

Both standardise X (and the regressor y) with the sample mean and standard deviation (the
regressor only as far as its gate family allows, :data:`X_STANDARDISATION`: centring x changes a
monomial, activation or cosine gate's model, so those gates see x scaled or raw), fit
``n_init`` random starts as ONE batched trust-region program
(:func:`~attnmoe.estimation.families.likelihood.objective.fit_likelihood`; the starts are replicates of
the same data) and keep the start with the lowest NLL; a ``ConvergenceWarning`` is raised when
that start did not converge, and a one-line ``ValueError`` when every start ended with a
non-finite NLL or the input's scale overflows the standardisation. Fits run on ``n_threads``
torch threads (default 1, so ``GridSearchCV(n_jobs=...)`` is the parallelism knob). Nothing but
assignment happens in ``__init__``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from attnmoe.estimation.sklearn.regressor import check_input_scale, torch_threads
from attnmoe.estimation.families.likelihood.model import GaussianMoE, MultinomialLogisticMoE
from attnmoe.estimation.families.likelihood.objective import fit_likelihood

__all__ = ["GaussianMoERegressor", "MoEClassifier"]

#: how GaussianMoERegressor may standardise x for each gate without leaving the gate's family:
#: "affine" (centre and scale: the gate family is closed under x -> (x - m) / s), "scale" (scale
#: only: x^T A_i x and tanh(beta1_i^T x) absorb a diagonal scaling but not a shift), "none" (the
#: cosine routers: both change the angles). The linear experts absorb any of these.
X_STANDARDISATION = {"softmax": "affine", "temperature": "affine", "linear": "affine", "polynomial": "affine",
                     "monomial": "scale", "activation": "scale", "cosine": "none", "perturbed-cosine": "none"}

#: standard deviation of the random starts of each free block of a GaussianMoE (d -> scale)
START_SCALE = {
    "beta1": lambda d: 1.0, "beta0": lambda d: 0.5, "logtau": lambda d: 0.1,
    "gate_A": lambda d: 0.5 / d, "gate_b": lambda d: 1.0, "gate_c": lambda d: 0.5,
    "a": lambda d: 1.0 / math.sqrt(d), "b": lambda d: 1.0, "lognu": lambda d: 0.1,
}


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0)
    scale = X.std(0)
    return mean, np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)


def _fit_starts(model, Xs: np.ndarray, ys: np.ndarray, inits: torch.Tensor, max_iter: int):
    """Fit the starts ``inits`` ``(S, P)`` on the same data; the best fit's index and the fit."""
    S = inits.shape[0]
    X = torch.from_numpy(Xs).unsqueeze(0).expand(S, *Xs.shape).contiguous()  # (S, n, d)
    y = torch.from_numpy(ys).unsqueeze(0).expand(S, -1).contiguous()  # (S, n)
    fit = fit_likelihood(model, X, y, inits, max_iter=max_iter)
    nll = torch.where(torch.isfinite(fit.nll), fit.nll, torch.inf)
    best = int(nll.argmin())
    if not torch.isfinite(nll[best]):
        raise ValueError(f"the maximum-likelihood fit failed: all {S} starts ended with a non-finite "
                         "negative log-likelihood; rescale X and y")
    return best, fit


def _warn_if_not_converged(fit, best: int, max_iter: int) -> bool:
    converged = bool(fit.converged[best])
    if not converged:
        warnings.warn(f"the maximum-likelihood fit did not converge in max_iter={max_iter} trust-region "
                      f"iterations (stopped: {fit.reason[best]}); increase max_iter.", ConvergenceWarning,
                      stacklevel=3)
    return converged


class GaussianMoERegressor(RegressorMixin, BaseEstimator):
    """Gaussian mixture-of-experts regressor fitted by maximum likelihood.

    Args:
        n_experts: k >= 1.
        top_k: K of a top-K sparse softmax gate (None: dense softmax); 1 <= K <= k.
        gate: the gate's name (:class:`~attnmoe.estimation.families.likelihood.model.GaussianMoE`):
            ``"softmax"`` (linear scores), ``"temperature"``, ``"activation"``, ``"polynomial"``,
            ``"monomial"``, ``"cosine"``, ``"perturbed-cosine"`` (``"linear"`` = ``"softmax"``
            through the registry's gate).
        n_init: random starts, fitted as one batched program.
        max_iter: trust-region iterations per start.
        n_threads: torch intra-op threads while fitting (default 1; None: torch's setting).
        random_state: seed / ``np.random.RandomState`` of the starts.

    Attributes:
        params_: natural parameters on the standardised scale (beta1, beta0, a, b, nu; tau for the
            temperature and activation gates; gate_A, gate_b, gate_c for registry gates).
        x_mean_, x_scale_, y_mean_, y_scale_: the standardisation (x_mean_ = 0 for the monomial,
            activation and cosine gates, x_scale_ = 1 for the cosine ones: X_STANDARDISATION).
        nll_: mean negative log-likelihood of the selected start, in units of y.
        n_iter_, converged_, n_features_in_.
    """

    def __init__(self, n_experts: int = 2, top_k: int | None = None, gate: str = "softmax", n_init: int = 4,
                 max_iter: int = 200, n_threads: int | None = 1, random_state=None) -> None:
        self.n_experts = n_experts
        self.top_k = top_k
        self.gate = gate
        self.n_init = n_init
        self.max_iter = max_iter
        self.n_threads = n_threads
        self.random_state = random_state

    def _model(self, d: int) -> GaussianMoE:
        _check_int("n_experts", self.n_experts, 1)
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)
        if self.n_threads is not None:
            _check_int("n_threads", self.n_threads, 1)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
            if self.top_k > self.n_experts:
                raise ValueError(f"top-K needs K <= k, got top_k={self.top_k} > n_experts={self.n_experts}")
        return GaussianMoE(int(self.n_experts), d, top_k=None if self.top_k is None else int(self.top_k),
                           gate=self.gate)

    def fit(self, X, y) -> GaussianMoERegressor:
        """Maximum-likelihood fit from ``n_init`` batched random starts; returns self."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        model = self._model(X.shape[1])
        check_input_scale(X, y, x_power=2)  # the standardisation squares X and y
        mean, scale = _standardise(X)
        mode = X_STANDARDISATION[self.gate]
        self.x_mean_ = mean if mode == "affine" else np.zeros_like(mean)
        self.x_scale_ = scale if mode != "none" else np.ones_like(scale)
        (self.y_mean_,), (self.y_scale_,) = _standardise(y.reshape(-1, 1))
        Xs, ys = (X - self.x_mean_) / self.x_scale_, (y - self.y_mean_) / self.y_scale_
        rng = check_random_state(self.random_state)
        S, d = int(self.n_init), X.shape[1]
        gen = torch.Generator().manual_seed(int(rng.randint(0, 2**31 - 1)))
        inits = model.pack({name: START_SCALE[name](d) * torch.randn(S, *shape, generator=gen, dtype=torch.float64)
                            for name, shape in model.blocks})  # drawn in block order
        with torch_threads(self.n_threads):
            best, fit = _fit_starts(model, Xs, ys, inits, int(self.max_iter))
        self.params_ = {key: v[best].numpy() for key, v in fit.params.items()}
        self.nll_ = float(fit.nll[best]) + math.log(self.y_scale_)
        self.n_iter_ = int(fit.n_iter[best])
        self.converged_ = _warn_if_not_converged(fit, best, int(self.max_iter))
        return self

    def _moments(self, X) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self, "params_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        model = self._model(X.shape[1])
        nat = {key: torch.from_numpy(v).unsqueeze(0) for key, v in self.params_.items()}
        Xs = torch.from_numpy((X - self.x_mean_) / self.x_scale_).unsqueeze(0)
        with torch.no_grad():
            w, mean = model.weights(nat, Xs)[0].numpy(), model.means(nat, Xs)[0].numpy()  # (n, k)
        return w, mean

    def predict(self, X) -> np.ndarray:
        """Conditional mean E[y | x] ``(n,)``."""
        w, mean = self._moments(X)
        return self.y_mean_ + self.y_scale_ * (w * mean).sum(-1)

    def predict_density(self, X, y) -> np.ndarray:
        """Conditional density p(y_j | x_j) ``(n,)`` (units of 1/y)."""
        w, mean = self._moments(X)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != w.shape[0]:
            raise ValueError(f"X has {w.shape[0]} rows and y {y.shape[0]} entries")
        z = (y - self.y_mean_) / self.y_scale_
        nu = self.params_["nu"]
        dens = np.exp(-0.5 * (z[:, None] - mean) ** 2 / nu) / np.sqrt(2 * np.pi * nu)
        return (w * dens).sum(-1) / self.y_scale_


class MoEClassifier(ClassifierMixin, BaseEstimator):
    """Softmax-gated multinomial logistic mixture of experts fitted by maximum likelihood.

    Args:
        n_experts: k >= 1.
        input_map: ``"identity"`` (standard softmax gate) or ``"tanh"`` (modified gate of
            arXiv 2310.14188: the gate sees tanh of the standardised input).
        n_init, max_iter, n_threads, random_state: as :class:`GaussianMoERegressor`.

    Attributes:
        classes_, flat_ (free parameters on the standardised scale), x_mean_, x_scale_, nll_,
        n_iter_, converged_, n_features_in_.
    """

    def __init__(self, n_experts: int = 2, input_map: str = "identity", n_init: int = 4, max_iter: int = 200,
                 n_threads: int | None = 1, random_state=None) -> None:
        self.n_experts = n_experts
        self.input_map = input_map
        self.n_init = n_init
        self.max_iter = max_iter
        self.n_threads = n_threads
        self.random_state = random_state

    def fit(self, X, y) -> MoEClassifier:
        """Maximum-likelihood fit from ``n_init`` batched random starts; returns self."""
        _check_int("n_experts", self.n_experts, 1)
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)
        if self.n_threads is not None:
            _check_int("n_threads", self.n_threads, 1)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        check_input_scale(X, None, x_power=2)  # the standardisation squares X
        self.classes_, labels = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"MoEClassifier needs samples of at least 2 classes; got 1 class: {self.classes_[0]!r}")
        model = MultinomialLogisticMoE(int(self.n_experts), X.shape[1], len(self.classes_), self.input_map)
        self.x_mean_, self.x_scale_ = _standardise(X)
        Xs = (X - self.x_mean_) / self.x_scale_
        rng = check_random_state(self.random_state)
        gen = torch.Generator().manual_seed(int(rng.randint(0, 2**31 - 1)))
        inits = 0.5 * torch.randn(int(self.n_init), model.n_params, generator=gen, dtype=torch.float64)
        with torch_threads(self.n_threads):
            best, fit = _fit_starts(model, Xs, labels.astype(np.float64), inits, int(self.max_iter))
        self.flat_ = fit.flat[best].numpy()
        self.nll_ = float(fit.nll[best])
        self.n_iter_ = int(fit.n_iter[best])
        self.converged_ = _warn_if_not_converged(fit, best, int(self.max_iter))
        return self

    def predict_proba(self, X) -> np.ndarray:
        """P(Y = classes_[s] | x) ``(n, S)``."""
        check_is_fitted(self, "flat_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        model = MultinomialLogisticMoE(int(self.n_experts), X.shape[1], len(self.classes_), self.input_map)
        Xs = torch.from_numpy((X - self.x_mean_) / self.x_scale_).unsqueeze(0)
        with torch.no_grad():
            return model.proba(torch.from_numpy(self.flat_).unsqueeze(0), Xs)[0].numpy()

    def predict(self, X) -> np.ndarray:
        """The most probable class ``(n,)``."""
        proba = self.predict_proba(X)  # checks fitted first
        return self.classes_[proba.argmax(-1)]
