"""A scikit-learn style least-squares estimator for (quadratic-)gating MoE regression.

    y = sum_{i=1..k} softmax_i(g(x; A_i, b_i, c_i)) h(x; a_i, alpha_i) + noise      (arXiv 2410.11222)

fitted by least squares with batched L-BFGS from ``n_init`` data-driven random restarts (one
tensor program), keeping the restart with the lowest training loss. Expert 0 is the reference
expert: its gating parameters are fixed at zero (softmax gating is translation invariant).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from attnmoe.estimation.fit import fit_restarts
from attnmoe.estimation.init import random_init
from attnmoe.moe import GATES, ParameterLayout, make_expert, make_gate, mixture_forward
from attnmoe.moe.experts import EXPERTS

__all__ = ["QuadraticGatingMoERegressor"]


class QuadraticGatingMoERegressor(RegressorMixin, BaseEstimator):
    """Least-squares mixture-of-experts regressor with softmax gating.

    Args:
        n_experts: number of experts k (>= 1).
        gate: ``"monomial"`` (x^T A x + c), ``"polynomial"`` (x^T A x + b^T x + c) or
            ``"linear"`` (b^T x + c).
        expert: ``"linear"`` (a^T x + alpha) or ``"sigmoid"``, ``"tanh"``, ``"gelu"``,
            ``"relu"`` (sigma(a^T x + alpha)).
        n_init: number of random restarts, fitted as one batched program.
        max_iter: L-BFGS iteration cap per restart.
        tol: convergence tolerance on the max-abs gradient of the mean squared error.
        random_state: seed / ``np.random.RandomState`` for the restarts.

    Attributes:
        A_: ``(k, d, d)`` symmetric quadratic gating matrices (quadratic gates only), A_[0] = 0.
        b_: ``(k, d)`` linear gating vectors (polynomial / linear gates only), b_[0] = 0.
        c_: ``(k,)`` gating biases, c_[0] = 0.
        a_: ``(k, d)`` expert weights. alpha_: ``(k,)`` expert biases.
        loss_: training mean squared error of the selected restart.
        n_iter_: L-BFGS iterations of the selected restart. converged_: its convergence flag.
        n_features_in_: d.
    """

    def __init__(
        self,
        n_experts: int = 2,
        gate: str = "monomial",
        expert: str = "sigmoid",
        n_init: int = 8,
        max_iter: int = 500,
        tol: float = 1e-9,
        random_state=None,
    ) -> None:
        self.n_experts = n_experts
        self.gate = gate
        self.expert = expert
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _check_params(self) -> None:
        if isinstance(self.n_experts, bool) or not isinstance(self.n_experts, (int, np.integer)) or self.n_experts < 1:
            raise ValueError(f"n_experts must be an int >= 1, got {self.n_experts!r}")
        if self.gate not in GATES:
            raise ValueError(f"unknown gate {self.gate!r}; valid gates: {sorted(GATES)}")
        if self.expert not in EXPERTS:
            raise ValueError(f"unknown expert {self.expert!r}; valid experts: {list(EXPERTS)}")
        if isinstance(self.n_init, bool) or not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ValueError(f"n_init must be an int >= 1, got {self.n_init!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {self.max_iter!r}")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol must be a float >= 0, got {self.tol!r}")

    def fit(self, X, y) -> QuadraticGatingMoERegressor:
        """Fit by least squares from ``n_init`` batched random restarts; returns self."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)  # rejects NaN/inf, shapes
        n, d = X.shape
        layout = ParameterLayout(self.gate, self.expert, int(self.n_experts), d)
        layout.check_sample_size(
            n, f"a {self.n_experts}-expert {self.gate}/{self.expert} MoE on {d} features (n_samples)"
        )
        Xt = torch.from_numpy(X).unsqueeze(0)  # (1, n, d)
        yt = torch.from_numpy(np.asarray(y, dtype=np.float64)).unsqueeze(0)  # (1, n)
        rng = check_random_state(self.random_state)
        gen = torch.Generator().manual_seed(int(rng.randint(0, 2**31 - 1)))
        inits = random_init(layout, Xt, yt, int(self.n_init), gen)  # (S, 1, P)
        res = fit_restarts(layout, Xt, yt, inits, max_iter=int(self.max_iter), tol=float(self.tol))
        params = {k: v[0].numpy() for k, v in res.params.items()}
        self.A_ = params.get("A")
        self.b_ = params.get("b")
        self.c_ = params["c"]
        self.a_ = params["a"]
        self.alpha_ = params["alpha"]
        self.loss_ = float(res.loss[0])
        self.n_iter_ = int(res.n_iter[0])
        self.converged_ = bool(res.converged[0])
        if not self.converged_:
            warnings.warn(
                f"L-BFGS did not converge in max_iter={self.max_iter} iterations (max |grad| = "
                f"{float(res.grad_max[0]):.3g} > tol={self.tol}); increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted regression function values ``(n,)``."""
        check_is_fitted(self, "c_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        params = {
            key: torch.from_numpy(np.asarray(value)).unsqueeze(0)
            for key, value in (("A", self.A_), ("b", self.b_), ("c", self.c_), ("a", self.a_), ("alpha", self.alpha_))
            if value is not None
        }
        gate = make_gate(self.gate, X.shape[1])
        with torch.no_grad():
            out = mixture_forward(gate, make_expert(self.expert), params, torch.from_numpy(X).unsqueeze(0))
        return out[0].numpy()
