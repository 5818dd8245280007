"""A scikit-learn least-squares estimator for softmax-gating MoE regression (arXiv 2410.11222).

Model, with softmax gating over ``k`` experts (expert 0 is the reference: its gating
parameters are fixed at zero, softmax being translation invariant)::

    f_G(x) = sum_{i=1..k} softmax_i(g(x; A_i, b_i, c_i)) h(x; a_i, alpha_i)
    y      = offset + scale * f_G(x) + noise

The output layer ``(offset, scale)`` makes the prediction unbounded when the experts are
bounded (sigmoid, tanh) or one-sided (relu, gelu); for linear experts it is absorbed in
``(a_i, alpha_i)`` and fixed to ``(0, 1)``. Fitting minimises the weighted mean squared error

    L = sum_j w_j (y_j - f(x_j))^2 / sum_j w_j    (plus the ridge penalty of ``penalty_weights``)

on the standardised response ``z = (y - mu_w) / s_w`` (``mu_w``, ``s_w`` the weighted mean and
standard deviation of y; ``s_w = 1`` for a constant y), with batched L-BFGS (the project's
``lbfgs``, weighted Gauss-Newton preconditioner) from ``n_init`` random restarts in one tensor
program, keeping the restart with the lowest loss; the fitted parameters are then mapped back
to the units of y. By default (``selection="holdout"``) the mixture is kept only when it beats
its one-linear-expert special case (OLS) on held-out rows by more than one standard error; fits
run on one torch thread (``n_threads``); inputs whose powers overflow float64 and fits with no
finite restart are one-line ``ValueError``s. Details and choices: ``docs/estimation.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    check_random_state,
    validate_data,
)
from torch import Tensor

from attnmoe.estimation.solvers.optim import lbfgs
from attnmoe.moe import GATES, ParameterLayout, make_expert, make_gate, mixture_forward
from attnmoe.moe.experts import EXPERTS

__all__ = ["MoERegressor", "QuadraticGatingMoERegressor"]

#: Damping of the weighted Gauss-Newton preconditioner, relative to the mean of its diagonal
#: (the same convention as ``attnmoe.estimation.families.least_squares.fit.gauss_newton_matrix``).
GN_DAMPING = 1e-3

#: Default ridge strength ``l2`` (see :func:`penalty_weights`).
L2_DEFAULT = 0.03

#: Default held-out fraction of ``selection="holdout"`` (docs/estimation.md).
VALIDATION_FRACTION_DEFAULT = 0.2

#: Model selections of ``MoERegressor``: "holdout" compares the mixture with its one-linear-expert
#: special case on held-out rows, "none" fits the mixture as configured.
SELECTIONS = ("holdout", "none")

_FLOAT_MAX = float(np.finfo(np.float64).max)


def check_input_scale(X: np.ndarray, y: np.ndarray | None, x_power: int) -> None:
    """Refuse inputs whose powers the fit forms overflow (or underflow) float64, naming which.

    The least-squares fit forms the ``x_power``-th power of X's scale (4: x^T A x and the ridge
    weight s_x^4 of A, :func:`penalty_weights`; 2 for a standardisation) and the squared errors
    of y, so it needs ``max|X| < (float max)^(1/x_power) / 2`` and ``max|y| < sqrt(float max) / 2``
    (the /2 leaves room for centring); the same bound from below on a non-zero spread of X.

    Raises:
        ValueError: one line naming the array, its largest absolute value and the bound.
    """
    limit = _FLOAT_MAX ** (1.0 / x_power) / 2
    big = float(np.max(np.abs(X))) if X.size else 0.0
    if big >= limit:
        raise ValueError(f"X holds values up to {big:.3g} in absolute value; the fit raises them to the power "
                         f"{x_power}, which overflows float64 above {limit:.2g}: rescale X "
                         "(e.g. sklearn.preprocessing.StandardScaler)")
    spread = float(np.max(X) - np.min(X)) if X.size else 0.0
    if 0 < spread < 1 / limit:
        raise ValueError(f"X's values span only {spread:.3g}; the fit raises their scale to the power "
                         f"-{x_power}, which overflows float64 below {1 / limit:.2g}: rescale X "
                         "(e.g. sklearn.preprocessing.StandardScaler)")
    y_limit = math.sqrt(_FLOAT_MAX) / 2
    y_big = float(np.max(np.abs(y))) if y is not None and y.size else 0.0
    if y_big >= y_limit:
        raise ValueError(f"y holds values up to {y_big:.3g} in absolute value; its squared errors overflow "
                         f"float64 above {y_limit:.2g}: rescale y (e.g. divide it by its standard deviation)")


@contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block on ``n_threads`` torch intra-op threads (``None``: leave torch's setting),
    restoring the previous count after: fits inside ``GridSearchCV(n_jobs=...)`` or beside other
    processes then do not oversubscribe the cores."""
    if n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _weighted_mean_std(v: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean and population standard deviation of ``v`` ``(n,)`` with weights ``w`` ``(n,)``."""
    mean = (w * v).sum() / w.sum()
    return mean, ((w * (v - mean).square()).sum() / w.sum()).sqrt()


def weighted_random_init(
    layout: ParameterLayout, X: Tensor, z: Tensor, w: Tensor, n_init: int, generator: torch.Generator
) -> Tensor:
    """Random restarts ``(n_init, P)``: the distribution of ``init.random_init`` with weighted moments.

    With ``s_x`` the weighted standard deviation of X's entries: A ~ N(0, 1)/s_x^2, b ~ N(0, 1)/s_x,
    c ~ N(0, 0.5^2); linear experts: weighted least squares (a_wls, alpha_wls) of z on X plus
    N(0, 1) s_z/(s_x sqrt(d)) resp. N(0, s_z^2); other experts a ~ N(0, 1)/(s_x sqrt(d)),
    alpha ~ N(0, 1). Every moment is a weighted one, so an integer weight and a repeated row give
    the same start (``init.random_init`` uses unweighted moments).
    """
    n, d = X.shape
    k, dt = layout.n_experts, X.dtype
    s_x = _weighted_mean_std(X, w.unsqueeze(-1).expand(n, d))[1].clamp_min(1e-12)
    s_z = _weighted_mean_std(z, w)[1].clamp_min(1e-12)

    def rnd(*shape: int) -> Tensor:  # (S, k, *shape)
        return torch.randn(n_init, k, *shape, generator=generator, dtype=dt)

    params: dict[str, Tensor] = {}
    if "A" in layout.gate.param_names:
        params["A"] = rnd(d, d) / s_x**2
    if "b" in layout.gate.param_names:
        params["b"] = rnd(d) / s_x
    params["c"] = 0.5 * rnd()
    if layout.expert.name == "linear":
        root = w.sqrt().unsqueeze(-1)  # (n, 1)
        design = torch.cat([X, X.new_ones(n, 1)], -1) * root  # (n, d+1)
        coef = torch.linalg.lstsq(design, z.unsqueeze(-1) * root, driver="gelsd").solution.squeeze(-1)  # (d+1,)
        params["a"] = coef[:d] + rnd(d) * s_z / (s_x * math.sqrt(d))
        params["alpha"] = coef[d] + rnd() * s_z
    else:
        params["a"] = rnd(d) / (s_x * math.sqrt(d))
        params["alpha"] = rnd()
    return layout.pack(params)  # (S, P)


class _WeightedModel:
    """``out(theta) = offset + scale * f_G(x; theta)`` and its weighted mean squared error.

    Free parameters per restart: the MoE's ``P`` entries (``layout``), then ``(scale, offset)``
    when ``affine``.
    """

    def __init__(self, layout: ParameterLayout, X: Tensor, z: Tensor, w: Tensor, affine: bool,
                 l2: float, s_x: float) -> None:
        self.layout, self.X, self.z, self.affine, self.l2 = layout, X, z, affine, l2
        self.w = w / w.sum()  # (n,) normalised weights
        self.n_params = layout.n_params + (2 if affine else 0)
        self.penalty = penalty_weights(layout, s_x, self.n_params)  # (P',)

    def predict(self, flat: Tensor) -> Tensor:  # (m, P') -> (m, n)
        P = self.layout.n_params
        X = self.X.unsqueeze(0).expand(flat.shape[0], *self.X.shape)  # (m, n, d), no copy
        out = self.layout.forward(flat[:, :P], X)
        return flat[:, P : P + 1] * out + flat[:, P + 1 : P + 2] if self.affine else out

    def mse(self, flat: Tensor) -> Tensor:  # (m, P') -> (m,) weighted mean squared error of z
        return ((self.z - self.predict(flat)).square() * self.w).sum(-1)

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:  # (m, P') -> (m,) objective
        fit = self.mse(flat)
        return fit + self.l2 * (flat.square() * self.penalty).sum(-1) if self.l2 > 0 else fit

    def preconditioner(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Inverse damped weighted Gauss-Newton matrix ``(m, P', P')``: 2 J^T W J + damping."""
        single = lambda p: self.predict(p.unsqueeze(0))[0]  # (P',) -> (n,)
        J = torch.func.vmap(torch.func.jacfwd(single))(flat.detach())  # (m, n, P')
        G = 2.0 * torch.einsum("mnp,n,mnq->mpq", J, self.w, J)  # (m, P', P')
        G = G + 2.0 * self.l2 * torch.diag(self.penalty)  # exact Hessian of the penalty
        scale = torch.diagonal(G, dim1=1, dim2=2).mean(-1).clamp_min(1e-300)  # (m,)
        eye = torch.eye(G.shape[-1], dtype=G.dtype)
        return torch.linalg.inv(G + GN_DAMPING * scale.view(-1, 1, 1) * eye)


def penalty_weights(layout: ParameterLayout, s_x: float, n_params: int) -> Tensor:
    """Weights ``(P',)`` of the ridge penalty sum_p weight_p theta_p^2 on the free parameters.

    s_x^4 ||A_i||_F^2 + s_x^2 ||b_i||^2 + s_x^2 ||a_i||^2 + scale^2 (off-diagonal triangle
    entries of A count twice, as in the Frobenius norm; ``scale`` is the output layer's, on the
    standardised response, when there is one); biases c, alpha and the output offset are not
    penalised. The powers of s_x (weighted std of X's entries) make the penalty invariant to a
    common rescaling of X. Penalising the output scale too keeps the minimum finite: otherwise
    shrinking a and growing the scale lowers the penalty at a nearly unchanged fit, without end.
    """
    weights = torch.zeros(n_params, dtype=torch.float64)
    if n_params == layout.n_params + 2:  # output layer (scale, offset)
        weights[layout.n_params] = 1.0
    iu = torch.triu_indices(layout.dim, layout.dim)
    per = {"A": torch.where(iu[0] == iu[1], 1.0, 2.0).double() * s_x**4, "b": s_x**2, "a": s_x**2}
    for name, start, experts, width in layout.blocks:
        if name in per:
            weights[start : start + experts * width] = (torch.ones(experts, width, dtype=torch.float64) * per[name]).reshape(-1)
    return weights


def collapse_duplicates(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows ``(x_j, y_j)`` with positive weight, sorted, each with its summed weight.

    The weighted loss is unchanged (a weight m is m copies of a row), and a data set with
    repeated rows and the same rows with integer weights reduce to bitwise the same arrays, so
    their fits are identical, not just equal up to the optimiser's rounding.
    """
    keep = w > 0
    rows = np.column_stack([X[keep], y[keep]])  # (n+, d + 1)
    unique, inverse = np.unique(rows, axis=0, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=w[keep], minlength=len(unique))
    return np.ascontiguousarray(unique[:, :-1]), np.ascontiguousarray(unique[:, -1]), summed


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


class MoERegressor(RegressorMixin, BaseEstimator):
    """Least-squares softmax-gating mixture-of-experts regressor with an output layer.

    ``predict(x) = output_offset_ + output_scale_ * sum_i softmax_i(g(x)) h_i(x)`` (module doc).

    Args:
        n_experts: number of experts k (>= 1).
        gate: gating score ``g``: ``"monomial"`` (x^T A x + c), ``"polynomial"``
            (x^T A x + b^T x + c) or ``"linear"`` (b^T x + c, the classical softmax gate).
        expert: ``"linear"`` (a^T x + alpha) or ``"sigmoid"``, ``"tanh"``, ``"gelu"``,
            ``"relu"`` (sigma(a^T x + alpha)).
        n_init: number of random restarts, fitted as one batched program.
        max_iter: L-BFGS iteration cap per restart.
        tol: convergence tolerance on the max-abs gradient of the penalised weighted mean squared
            error of the standardised response.
        l2: ridge strength (:func:`penalty_weights`; 0 = plain least squares). The default was
            chosen by 5-fold CV on diabetes training data (``docs/estimation.md``).
        selection: ``"holdout"`` (default): fit the mixture and its special case with one linear
            expert (ordinary least squares, ``l2 = 0``) on ``1 - validation_fraction`` of the
            distinct rows, keep the mixture only when its weighted MSE on the rest is lower by more
            than one standard error of the paired differences (else the linear model), and refit
            the choice on all rows, so that on near-linear data the estimator does not lose to a linear model
            (``docs/estimation.md``); ``"none"``: fit the mixture as configured.
        validation_fraction: the held-out fraction of ``selection="holdout"`` (0 < f < 1).
        n_threads: torch intra-op threads used while fitting and predicting (default 1: one
            thread per fit, so ``GridSearchCV(n_jobs=...)`` is the parallelism knob and nothing
            is oversubscribed); ``None`` keeps torch's own setting.
        random_state: seed / ``np.random.RandomState`` for the restarts and the held-out split.

    Attributes:
        A_: ``(k, d, d)`` symmetric quadratic gating matrices (quadratic gates only), A_[0] = 0.
        b_: ``(k, d)`` linear gating vectors (polynomial / linear gates only), b_[0] = 0.
        c_: ``(k,)`` gating biases, c_[0] = 0.
        a_: ``(k, d)`` expert weights. alpha_: ``(k,)`` expert biases.
        output_scale_, output_offset_: the output layer (1 and 0 for linear experts).
        loss_: weighted training mean squared error (units of y squared) of the selected restart.
        n_iter_: L-BFGS iterations of the selected restart. converged_: its convergence flag.
        selected_: ``"mixture"`` or ``"linear"`` (the held-out selection's choice);
            ``gate_``, ``expert_``, ``n_experts_`` describe the fitted model (``"linear"``,
            ``"linear"``, 1 when the linear model was selected: then A_ is None, b_ = 0).
        validation_mse_: ``{"mixture": ..., "linear": ...}`` held-out weighted MSEs, or None.
        n_features_in_: d.
    """

    def __init__(
        self,
        n_experts: int = 2,
        gate: str = "monomial",
        expert: str = "sigmoid",
        n_init: int = 8,
        max_iter: int = 2000,
        tol: float = 1e-6,
        l2: float = L2_DEFAULT,
        selection: str = "holdout",
        validation_fraction: float = VALIDATION_FRACTION_DEFAULT,
        n_threads: int | None = 1,
        random_state=None,
    ) -> None:
        self.n_experts = n_experts
        self.gate = gate
        self.expert = expert
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.l2 = l2
        self.selection = selection
        self.validation_fraction = validation_fraction
        self.n_threads = n_threads
        self.random_state = random_state

    def _check_params(self) -> None:
        _check_int("n_experts", self.n_experts, 1)
        if self.gate not in GATES:
            raise ValueError(f"unknown gate {self.gate!r}; valid gates: {sorted(GATES)}")
        if self.expert not in EXPERTS:
            raise ValueError(f"unknown expert {self.expert!r}; valid experts: {list(EXPERTS)}")
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 1)
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not self.tol >= 0:
            raise ValueError(f"tol must be a float >= 0, got {self.tol!r}")
        if isinstance(self.l2, bool) or not isinstance(self.l2, (int, float)) or not self.l2 >= 0:
            raise ValueError(f"l2 must be a float >= 0, got {self.l2!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; valid: {list(SELECTIONS)}")
        f = self.validation_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ValueError(f"validation_fraction must be a float in (0, 1), got {f!r}")
        if self.n_threads is not None:
            _check_int("n_threads", self.n_threads, 1)

    def fit(self, X, y, sample_weight=None) -> MoERegressor:
        """Fit by weighted least squares from ``n_init`` batched random restarts; returns self.

        ``sample_weight`` (n,) non-negative, not all zero: an integer weight m gives the fit
        that m copies of the sample give. With ``selection="holdout"`` the mixture and its
        one-linear-expert special case are first fitted on a random ``1 - validation_fraction``
        of the distinct rows and compared on the rest (the mixture must win by one standard
        error, :func:`_clearly_better`); the choice is refitted on all rows (``selected_``; ``docs/estimation.md``).

        Raises:
            ValueError: bad parameters or input, input too large (or small) in scale for float64,
                or every restart ending with a non-finite loss.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)  # rejects NaN/inf, shapes
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)  # >= 0, not all 0
        check_input_scale(X, np.asarray(y, dtype=np.float64), x_power=4)
        X, y, sw = collapse_duplicates(X, np.asarray(y, dtype=np.float64), sw)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))  # the restarts' stream (drawn first: selection="none" is unchanged)
        own = (self.gate, self.expert, int(self.n_experts))
        linear = ("linear", "linear", 1)
        nested = own[2] == 1 and own[1] == "linear"  # already the linear model
        with torch_threads(self.n_threads):
            chosen, self.validation_mse_ = own, None
            split = None if self.selection == "none" or nested else _holdout(sw, float(self.validation_fraction), rng)
            if split is not None:
                train, val = split
                sq = {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # only the final fit's warnings concern the user
                    for name, model in (("mixture", own), ("linear", linear)):
                        l2 = float(self.l2) if model == own else 0.0  # the linear candidate is OLS
                        try:
                            fitted = self._fit_one(X[train], y[train], sw[train], *model, seed, l2=l2)
                            sq[name] = (y[val] - _predict(fitted, *model[:2], X[val])) ** 2  # (n_val,)
                        except ValueError:  # no finite restart on this part: the candidate loses
                            sq[name] = np.full(len(val), np.inf)
                self.validation_mse_ = {k: float(np.average(v, weights=sw[val])) for k, v in sq.items()}
                chosen = own if _clearly_better(sq["mixture"], sq["linear"], sw[val]) else linear
            replaced = chosen == linear and not nested  # the selection chose OLS over the mixture
            fitted = self._fit_one(X, y, sw, *chosen, seed, l2=0.0 if replaced else float(self.l2), warn=True)
        self.selected_ = "linear" if replaced else "mixture"
        self.gate_, self.expert_, self.n_experts_ = chosen
        grad_max = fitted.pop("grad_max")
        for key, value in fitted.items():
            setattr(self, key, value)
        if not self.converged_:
            warnings.warn(
                f"L-BFGS did not converge in max_iter={self.max_iter} iterations (max |grad| = "
                f"{grad_max:.3g} > tol={self.tol}); increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _fit_one(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray, gate: str, expert: str, k: int,
                 seed: int, l2: float, warn: bool = False) -> dict:
        """One batched L-BFGS fit of a ``k``-expert ``gate``/``expert`` MoE; its fitted attributes."""
        n, d = X.shape
        layout = ParameterLayout(gate, expert, k, d)
        affine = expert != "linear"
        if warn and n < layout.n_params + 2 * affine:
            warnings.warn(
                f"{n} distinct samples (with positive weight) for {layout.n_params + 2 * affine} free "
                f"parameters of a {k}-expert {gate}/{expert} MoE on {d} "
                f"features: the least-squares fit is not unique",
                UserWarning,
                stacklevel=3,
            )
        Xt, w = torch.from_numpy(X), torch.from_numpy(sw)
        yt = torch.from_numpy(y)
        mu, s = _weighted_mean_std(yt, w)
        s = s if float(s) > 1e-12 * max(1.0, abs(float(mu))) else torch.ones_like(s)
        z = (yt - mu) / s  # (n,)
        gen = torch.Generator().manual_seed(seed)
        theta0 = weighted_random_init(layout, Xt, z, w, int(self.n_init), gen)  # (S, P)
        s_x = float(_weighted_mean_std(Xt, w.unsqueeze(-1).expand(n, d))[1].clamp_min(1e-12))
        model = _WeightedModel(layout, Xt, z, w, affine, l2, s_x)
        if affine:  # output layer started at the weighted least-squares line of z on f_G(x; theta0)
            with torch.no_grad():
                f0 = model.layout.forward(theta0, Xt.unsqueeze(0).expand(theta0.shape[0], n, d))  # (S, n)
            m0 = (f0 * model.w).sum(-1, keepdim=True)
            cov = ((f0 - m0) * z * model.w).sum(-1, keepdim=True)
            scale0 = cov / ((f0 - m0).square() * model.w).sum(-1, keepdim=True).clamp_min(1e-12)
            theta0 = torch.cat([theta0, scale0, -scale0 * m0], -1)  # (S, P + 2)
        res = lbfgs(model, theta0, max_iter=int(self.max_iter), tol=float(self.tol),
                    precondition=model.preconditioner)
        loss = torch.where(torch.isfinite(res.loss), res.loss, torch.inf)
        best = int(loss.argmin())
        if not torch.isfinite(loss[best]):
            raise ValueError(f"the fit failed: all {int(self.n_init)} restarts of the {k}-expert {gate}/{expert} "
                             f"MoE ended with a non-finite loss; rescale X and y or raise l2")
        P = layout.n_params
        params = {key: v[0].numpy() for key, v in layout.unpack(res.x[best : best + 1, :P]).items()}
        scale, offset = (float(res.x[best, P]), float(res.x[best, P + 1])) if affine else (1.0, 0.0)
        s, mu = float(s), float(mu)
        out: dict = {}
        if affine:  # y = mu + s * (offset + scale * f_G)
            out["output_scale_"], out["output_offset_"] = s * scale, mu + s * offset
        else:  # y = mu + s * f_G: absorbed in the linear experts
            params["a"], params["alpha"] = s * params["a"], mu + s * params["alpha"]
            out["output_scale_"], out["output_offset_"] = 1.0, 0.0
        out.update(A_=params.get("A"), b_=params.get("b"), c_=params["c"], a_=params["a"], alpha_=params["alpha"])
        with torch.no_grad():
            out["loss_"] = float(model.mse(res.x[best : best + 1])[0]) * s**2  # without the penalty
        if not math.isfinite(out["loss_"]):
            raise ValueError(f"the fit's mean squared error overflows float64 in the units of y "
                             f"(standard deviation {s:.3g}): rescale y")
        out["n_iter_"] = int(res.n_iter[best])
        out["converged_"] = bool(res.converged[best])
        out["grad_max"] = float(res.grad_max[best])  # for the warning, not an attribute
        return out

    def predict(self, X) -> np.ndarray:
        """Predicted regression function values ``(n,)``."""
        check_is_fitted(self, "c_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        fitted = {"A_": self.A_, "b_": self.b_, "c_": self.c_, "a_": self.a_, "alpha_": self.alpha_,
                  "output_offset_": self.output_offset_, "output_scale_": self.output_scale_}
        with torch_threads(self.n_threads):
            return _predict(fitted, self.gate_, self.expert_, X)


def _predict(fitted: dict, gate: str, expert: str, X: np.ndarray) -> np.ndarray:
    """``offset + scale * f_G(X)`` ``(n,)`` from fitted attributes (``A_``, ..., ``output_scale_``)."""
    params = {
        key: torch.from_numpy(np.asarray(fitted[key + "_"])).unsqueeze(0)
        for key in ("A", "b", "c", "a", "alpha")
        if fitted[key + "_"] is not None
    }
    with torch.no_grad():
        out = mixture_forward(make_gate(gate, X.shape[1]), make_expert(expert), params, torch.from_numpy(X).unsqueeze(0))
    return fitted["output_offset_"] + fitted["output_scale_"] * out[0].numpy()


def _clearly_better(sq_a: np.ndarray, sq_b: np.ndarray, w: np.ndarray) -> bool:
    """One-standard-error rule on paired held-out squared errors: True when model a's weighted mean
    squared error is below model b's by more than the standard error of the weighted mean of the
    paired differences ``d_j = sq_b_j - sq_a_j`` (Hastie, Tibshirani & Friedman, ESL 7.10)."""
    if not (np.isfinite(sq_a).all() and np.isfinite(sq_b).all()):  # a failed candidate (infinite errors)
        return bool(np.isfinite(sq_a).all())  # loses: a is better only when b failed and a did not
    d = sq_b - sq_a
    p = w / w.sum()
    mean = float(np.sum(p * d))
    se = math.sqrt(float(np.sum(p**2 * (d - mean) ** 2)))  # Var of a weighted mean of independent rows
    return mean > se


def _holdout(sw: np.ndarray, fraction: float, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray] | None:
    """A random (train, validation) split of the rows, ``fraction`` of them (at least one) held out;
    ``None`` when either part would have fewer than 2 rows."""
    n = len(sw)
    n_val = max(1, round(fraction * n))
    if n_val < 2 or n - n_val < 2:
        return None
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class QuadraticGatingMoERegressor(MoERegressor):
    """Deprecated name of :class:`MoERegressor` (the gate may be linear, so "quadratic" misled)."""

    def fit(self, X, y, sample_weight=None) -> MoERegressor:
        warnings.warn("QuadraticGatingMoERegressor is deprecated; use attnmoe.estimation.MoERegressor",
                      FutureWarning, stacklevel=2)
        return super().fit(X, y, sample_weight)
