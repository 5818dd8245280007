"""Least-squares fitting of MoE regressions, batched over independent replicates.

Estimator (arXiv 2410.11222): the least-squares estimator over mixing measures with at most k
atoms,  G_n in argmin_G  L_r(G) = (1/n) sum_j (y_rj - f_G(x_rj))^2,  for each replicate r.

The optimiser works on a flat free-parameter tensor ``(R, P)`` (see
:class:`attnmoe.moe.ParameterLayout`); the solvers are the generic batched ones of
:mod:`attnmoe.estimation.solvers.optim`, the starts come from :mod:`attnmoe.estimation.families.least_squares.init`.

* :func:`fit_least_squares` -- R fits from given starts: ``"trust-region"`` (Newton with the
  exact Hessian, the default: it converges at the degenerate minima of over-specified fits),
  ``"lbfgs"`` (Gauss-Newton preconditioned) or ``"adam"``; optionally over the parameter box
  |theta| <= B.
* :func:`fit_restarts` -- S starts per replicate as one program; the lowest loss is kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective, rowwise
from attnmoe.estimation.solvers.optim import (
    Objective,
    OptimResult,
    adam,
    lbfgs,
    trust_region,
    value_and_grad,
)
from attnmoe.estimation.families.least_squares.options import METHODS
from attnmoe.estimation.families.options import FIT_DEFAULTS
from attnmoe.moe import GATES, ParameterLayout

__all__ = [
    "FitResult",
    "fit_least_squares",
    "fit_restarts",
    "fit_starts",
    "gauss_newton_matrix",
    "jacobian",
    "least_squares_objective",
]

#: the solver's keyword defaults are the study's (the one table of fit defaults)
_DEFAULT = FIT_DEFAULTS["least_squares"]


def least_squares_objective(
    layout: ParameterLayout, X: Tensor, y: Tensor, closed_form: bool = True, assembly: str = _DEFAULT["assembly"]
) -> Objective:
    """Mean squared error L_r = (1/n) sum_j (y_rj - f(x_rj; theta_r))^2, per replicate.

    With ``closed_form`` (default) and one of the built-in gates, the returned objective is a
    :class:`~attnmoe.estimation.families.least_squares.objective.LeastSquaresObjective`, whose gradient and Jacobian are
    computed in closed form (by vmapped torch.func for a built-in gate without a closed form,
    :class:`~attnmoe.estimation.families.least_squares.autograd_objective.AutogradLeastSquaresObjective`); otherwise (or for a user-defined :class:`~attnmoe.moe.Gate`) a
    plain function whose gradient comes from autograd through ``layout.forward``. ``assembly``
    (``"torch"`` or ``"numba"``) is passed to the closed-form objective; ``"numba"`` needs it.
    """
    if assembly != "torch" and not (closed_form and type(layout.gate) is GATES.get(layout.gate.name)
                                    and layout.gate.closed_form):
        raise ValueError(f"assembly {assembly!r} needs the closed-form objective (a built-in gate with a closed "
                         f"form), got gate {layout.gate.name!r} with closed_form={closed_form}")
    if closed_form and type(layout.gate) is GATES.get(layout.gate.name):
        if not layout.gate.closed_form:  # built-in, logits not linear in the parameters
            from attnmoe.estimation.families.least_squares.autograd_objective import AutogradLeastSquaresObjective

            return AutogradLeastSquaresObjective(layout, X, y)
        return LeastSquaresObjective(layout, X, y, assembly=assembly)

    def objective(flat: Tensor, idx: Tensor | None = None) -> Tensor:
        Xi, yi = (X, y) if idx is None else (X[idx], y[idx])
        return (yi - layout.forward(flat, Xi)).square().mean(-1)  # (m,)

    return objective


def jacobian(layout: ParameterLayout, X: Tensor, flat: Tensor) -> Tensor:
    """J = d f(x_j; theta) / d theta ``(R, n, P)`` at ``flat`` by forward-mode autograd (one pass
    per free parameter): the reference for :meth:`LeastSquaresObjective.jacobian`."""
    R, P = flat.shape
    eye = torch.eye(P, dtype=flat.dtype, device=flat.device)
    cols = [
        torch.func.jvp(lambda z: layout.forward(z, X), (flat,), (eye[p].expand(R, P),))[1]
        for p in range(P)
    ]
    return torch.stack(cols, dim=-1)  # (R, n, P)


def gauss_newton_matrix(J: Tensor, damping: float = 1e-3) -> Tensor:
    """Damped Gauss-Newton matrix (2/n) J^T J + damping * mean(diag) * I, ``(R, P, P)``.

    J = d f(x_j; theta) / d theta ``(R, n, P)``. Near a good fit (small residuals) it
    approximates the Hessian of the mean squared error; the damping keeps it invertible when
    the model is not identified.
    """
    R, n, P = J.shape
    G = 2.0 * torch.bmm(J.transpose(1, 2), J) / n  # (R, P, P)
    scale = torch.diagonal(G, dim1=1, dim2=2).mean(-1).clamp_min(1e-300)  # (R,)
    return G + damping * scale.view(R, 1, 1) * torch.eye(P, dtype=J.dtype, device=J.device)


#: a parameter counts as on the box's wall when |theta| >= (1 - AT_BOUND) * bound
AT_BOUND = 1e-3


class _Box:
    """theta = bound * tanh(phi / bound): unconstrained phi, theta inside (-bound, bound).

    Chain rule: grad_phi = s * grad_theta with s = dtheta/dphi = 1 - (theta/B)^2, and
    H_phi = diag(s) H_theta diag(s) + diag(grad_theta * ds/dphi),  ds/dphi = -2 (theta/B^2) s.
    tanh/atanh are applied row-wise padded (:func:`~attnmoe.estimation.families.least_squares.objective.rowwise`), so
    a replicate's numbers do not depend on its place in the batch.
    """

    def __init__(self, bound: float) -> None:
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"bound must be a finite number > 0, got {bound!r}")
        self.bound = bound

    def to_theta(self, phi: Tensor) -> Tensor:
        return self.bound * rowwise(torch.tanh, phi / self.bound)

    def to_free(self, theta: Tensor) -> Tensor:
        return self.bound * rowwise(torch.atanh, theta / self.bound)

    def slope(self, theta: Tensor) -> Tensor:
        """d theta / d phi at theta."""
        return 1.0 - (theta / self.bound).square()

    def wrap(self, objective: Objective) -> _BoxObjective:
        return _BoxObjective(objective, self)


class _BoxObjective:
    """An objective of theta seen as a function of phi (see :class:`_Box`)."""

    def __init__(self, base: Objective, box: _Box) -> None:
        self.base, self.box = base, box

    def __call__(self, phi: Tensor, idx: Tensor | None = None) -> Tensor:
        return self.base(self.box.to_theta(phi), idx)

    def value_and_grad(self, phi: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        theta = self.box.to_theta(phi)
        f, g = value_and_grad(self.base, theta, idx)
        return f, g * self.box.slope(theta)

    def hessian(self, phi: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        theta = self.box.to_theta(phi)
        f, g, H = self.base.hessian(theta, idx)
        s = self.box.slope(theta)
        ds = -2.0 * theta / self.box.bound**2 * s
        H = s.unsqueeze(-1) * H * s.unsqueeze(-2) + torch.diag_embed(g * ds)
        return f, g * s, H


@dataclass
class FitResult:
    """A batched least-squares fit; tensors have leading dim R."""

    params: dict[str, Tensor]  # natural params (R, k, ...)
    flat: Tensor  # (R, P)
    loss: Tensor  # (R,) training mean squared error
    grad_max: Tensor  # (R,)
    converged: Tensor  # (R,) bool
    n_iter: Tensor  # (R,) int64
    n_evals: Tensor  # (R,) int64
    seconds: float  # wall time of the whole batched fit
    reason: list[str] | None = None  # per replicate, why the solver stopped (optim.REASONS)
    min_eig: Tensor | None = None  # (R,) smallest Hessian eigenvalue at the fit (trust-region)
    decrement: Tensor | None = None  # (R,) Newton decrement left at the fit (trust-region)
    # (R,) int64: free parameters within AT_BOUND * bound of the box's wall (None: no box). A
    # converged fit with at_bound > 0 is a minimum of the box-constrained problem ON the wall:
    # the unconstrained loss still decreases outwards (its infimum is at infinity, typically a
    # ghost expert or a linear-expert copy running off), the tanh map's slope hides that gradient.
    at_bound: Tensor | None = None

    def to(self, device: torch.device | str) -> FitResult:
        """The same fits with every tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in vars(self).items()}
        moved["params"] = {k: v.to(device) for k, v in self.params.items()}
        return FitResult(**moved)

    def select(self, pick: Tensor) -> FitResult:
        """The fits ``pick`` ``(m,)`` (indices into the R replicates)."""
        opt = {k: None if v is None else v[pick] for k, v in
               (("min_eig", self.min_eig), ("decrement", self.decrement), ("at_bound", self.at_bound))}
        return FitResult(
            params={k: v[pick] for k, v in self.params.items()}, flat=self.flat[pick],
            loss=self.loss[pick], grad_max=self.grad_max[pick], converged=self.converged[pick],
            n_iter=self.n_iter[pick], n_evals=self.n_evals[pick], seconds=self.seconds,
            reason=None if self.reason is None else [self.reason[int(i)] for i in pick], **opt,
        )


def _check_data(X: Tensor, y: Tensor, layout: ParameterLayout) -> None:
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError("X and y must be torch tensors")
    if X.ndim != 3 or y.ndim != 2 or X.shape[:2] != y.shape:
        raise ValueError(f"X must be (R, n, d) and y (R, n); got {tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[2] != layout.dim:
        raise ValueError(f"X has d = {X.shape[2]} features, the model expects {layout.dim}")
    if not bool(torch.isfinite(X).all()) or not bool(torch.isfinite(y).all()):
        raise ValueError("X and y must not contain NaN or inf")
    layout.check_sample_size(X.shape[1])


def fit_least_squares(
    layout: ParameterLayout,
    X: Tensor,
    y: Tensor,
    init: Tensor,
    *,
    method: str = _DEFAULT["method"],
    max_iter: int = _DEFAULT["max_iter"],
    tol: float = _DEFAULT["tol"],
    dtol: float = _DEFAULT["dtol"],
    precondition: bool = True,
    closed_form: bool = True,
    bound: float | None = None,
    assembly: str = _DEFAULT["assembly"],
    **options: float,
) -> FitResult:
    """Least-squares fits of R replicates from initial free parameters ``init`` ``(R, P)``.

    Args:
        layout: model parametrisation.
        X: inputs ``(R, n, d)``; y: responses ``(R, n)``.
        init: initial free parameters ``(R, P)``.
        method: ``"trust-region"`` (default; Newton with the exact Hessian, see
            :func:`~attnmoe.estimation.solvers.optim.trust_region`), ``"lbfgs"`` or ``"adam"``.
        max_iter: iteration cap per replicate.
        tol: converged when max |gradient| <= tol (0: this test is off).
        dtol: trust-region only: converged when the Newton decrement (the decrease a Newton
            step would still make) is at most dtol * L / n, i.e. the fit is within dtol noise
            variances per sample of its local minimum (L estimates sigma^2 at a good fit).
        precondition: L-BFGS only: use the inverse of the (damped) Gauss-Newton matrix as the
            initial inverse Hessian, recomputed every ``refresh`` (option, default 100)
            iterations (see :func:`gauss_newton_matrix`).
        closed_form: compute gradients, Jacobians and Hessians in closed form
            (:class:`~attnmoe.estimation.families.least_squares.objective.LeastSquaresObjective`) rather than by
            autograd; the two agree to rounding (tests), the closed form is faster. The
            trust-region method needs it (a built-in gate).
        bound: if given, least squares over the box |theta_p| <= bound of every free
            parameter (the compact parameter space the theory assumes): the optimiser works on
            phi with theta = bound * tanh(phi / bound), so interior points are unconstrained and
            no parameter can run off. ``init`` must lie strictly inside the box. ``grad_max``
            and ``tol`` then refer to the gradient with respect to phi.
        assembly: ``"torch"`` (default) or ``"numba"``: how the closed-form objective assembles
            the trust region's loss, gradient and Hessian
            (:mod:`~attnmoe.estimation.families.least_squares.numba_assembly`; trust-region only).
        options: passed to the solver: :func:`~attnmoe.estimation.solvers.optim.trust_region`
            (radius, ...), :func:`~attnmoe.estimation.solvers.optim.lbfgs` (ftol, history, ...) or
            :func:`~attnmoe.estimation.solvers.optim.adam` (lr, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {list(METHODS)}")
    _check_data(X, y, layout)
    if init.shape != (X.shape[0], layout.n_params):
        raise ValueError(f"init must be (R, P) = ({X.shape[0]}, {layout.n_params}), got {tuple(init.shape)}")
    if assembly != "torch" and method != "trust-region":
        raise ValueError(f"assembly {assembly!r} is for method 'trust-region', got {method!r}")
    base = least_squares_objective(layout, X, y.to(X.dtype), closed_form, assembly)  # a function of theta
    if method == "trust-region" and not isinstance(base, LeastSquaresObjective):
        raise ValueError("method 'trust-region' needs the closed-form objective (a built-in gate)")
    start = time.perf_counter()
    init = init.to(X.dtype)
    box = None if bound is None else _Box(float(bound))
    objective = base if box is None else box.wrap(base)  # what the optimiser minimises
    if box is not None:
        if not bool((init.abs() < box.bound).all()):
            raise ValueError(f"init has entries outside the parameter box |theta| < bound = {bound}")
        init = box.to_free(init)
    res: OptimResult
    if method == "trust-region":
        if assembly == "numba":  # the iteration compiled, one replicate at a time (numba_loop)
            from attnmoe.estimation.families.least_squares.numba_loop import fit_rows

            res = fit_rows(base, init, None if box is None else box.bound, max_iter=max_iter, gtol=tol,
                           dtol=dtol / X.shape[1], **options)
        else:
            # speculation (Hessian at trial points) is exact here: LeastSquaresObjective.hessian's
            # loss is bitwise its __call__'s (objective.py, "Assembly"), and _BoxObjective maps phi
            # to theta by the same rowwise tanh in both; every replicate's numbers are its own
            res = trust_region(objective.hessian, objective, init, max_iter=max_iter, gtol=tol,
                               dtol=dtol / X.shape[1], **{"speculate": True, **options})
    elif method == "lbfgs":
        if precondition:
            def inverse_gauss_newton(z: Tensor, idx: Tensor | None) -> Tensor:
                theta = z if box is None else box.to_theta(z)
                if isinstance(base, LeastSquaresObjective):
                    J = base.jacobian(theta, idx)
                else:
                    J = jacobian(layout, X if idx is None else X[idx], theta)
                if box is not None:
                    J = J * box.slope(theta).unsqueeze(1)  # chain rule d theta / d phi
                return torch.linalg.inv(gauss_newton_matrix(J))

            options["precondition"] = inverse_gauss_newton
        res = lbfgs(objective, init, max_iter=max_iter, tol=tol, **options)
    else:
        res = adam(objective, init, max_iter=max_iter, tol=tol, **options)
    seconds = time.perf_counter() - start
    theta = res.x if box is None else box.to_theta(res.x)
    return FitResult(
        params={k: v.detach() for k, v in layout.unpack(theta).items()},
        flat=theta,
        loss=res.loss,
        grad_max=res.grad_max,
        converged=res.converged,
        n_iter=res.n_iter,
        n_evals=res.n_evals,
        seconds=seconds,
        reason=res.reasons(),
        min_eig=res.min_eig,
        decrement=res.decrement,
        at_bound=None if box is None else (theta.abs() >= (1 - AT_BOUND) * box.bound).sum(-1),
    )


def fit_starts(
    layout: ParameterLayout,
    X: Tensor,
    y: Tensor,
    inits: Tensor,
    **kwargs,
) -> FitResult:
    """Fit from S starts per replicate, ``inits`` ``(S, R, P)``, as ONE batched program; every
    fit is returned, fit s * R + r being start s of replicate r."""
    if inits.ndim != 3:
        raise ValueError(f"inits must be (S, R, P), got {tuple(inits.shape)}")
    S, R, P = inits.shape
    Xs = X.unsqueeze(0).expand(S, *X.shape).reshape(S * R, *X.shape[1:])  # (S*R, n, d)
    ys = y.unsqueeze(0).expand(S, *y.shape).reshape(S * R, -1)  # (S*R, n)
    return fit_least_squares(layout, Xs, ys, inits.reshape(S * R, P), **kwargs)


def fit_restarts(
    layout: ParameterLayout,
    X: Tensor,
    y: Tensor,
    inits: Tensor,
    **kwargs,
) -> FitResult:
    """:func:`fit_starts`, keeping per replicate the start with the lowest training loss."""
    res = fit_starts(layout, X, y, inits, **kwargs)
    S, R = inits.shape[:2]
    loss = torch.where(torch.isfinite(res.loss), res.loss, torch.inf).reshape(S, R)
    return res.select(loss.argmin(0) * R + torch.arange(R, device=loss.device))
