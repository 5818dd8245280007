"""Least-squares fitting of MoE regressions, batched over independent replicates.

Estimator (arXiv 2410.11222): the least-squares estimator over mixing measures with at most k
atoms,  G_n in argmin_G  L_r(G) = (1/n) sum_j (y_rj - f_G(x_rj))^2,  for each replicate r.

The optimiser works on a flat free-parameter tensor ``(R, P)`` (see
:class:`attnmoe.moe.ParameterLayout`). Because replicate r's loss depends only on row r,
the gradient of sum_r L_r w.r.t. row r is grad L_r: one autograd call gives all R gradients.

* :func:`lbfgs` -- batched L-BFGS (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 7.4
  two-loop recursion, Alg. 3.5/3.6 strong-Wolfe line search with cubic interpolation). EVERY
  replicate keeps its own state: curvature history ``(R, m, P)``, step sizes, line-search
  phase and bracket, convergence; all updates are masked, so a batched run performs, per
  replicate, exactly the iterations a run of that replicate alone performs.
* :func:`adam` -- batched Adam (Kingma & Ba, arXiv 1412.6980); elementwise, so per replicate.
* :func:`fit_least_squares` / :func:`fit_restarts` -- least-squares fits from given
  initialisations; :func:`near_truth_init` (perturbed true atoms, split for k > k*) and
  :func:`random_init` (data-driven random restarts).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attnmoe.estimation.objective import LeastSquaresObjective
from attnmoe.moe import GATES, ParameterLayout

__all__ = [
    "FitResult",
    "Objective",
    "OptimResult",
    "adam",
    "fit_least_squares",
    "fit_restarts",
    "gauss_newton_matrix",
    "jacobian",
    "lbfgs",
    "least_squares_objective",
    "near_truth_init",
    "random_init",
    "split_atoms",
    "value_and_grad",
]

#: ``objective(flat (m, P), idx (m,) or None) -> loss (m,)``; ``idx`` selects the replicates
#: the rows of ``flat`` belong to (None: all, in order).
Objective = Callable[[Tensor, "Tensor | None"], Tensor]


def least_squares_objective(
    layout: ParameterLayout, X: Tensor, y: Tensor, closed_form: bool = True
) -> Objective:
    """Mean squared error L_r = (1/n) sum_j (y_rj - f(x_rj; theta_r))^2, per replicate.

    With ``closed_form`` (default) and one of the built-in gates, the returned objective is a
    :class:`~attnmoe.estimation.objective.LeastSquaresObjective`, whose gradient and Jacobian are
    computed in closed form; otherwise (or for a user-defined :class:`~attnmoe.moe.Gate`) a
    plain function whose gradient comes from autograd through ``layout.forward``.
    """
    if closed_form and type(layout.gate) is GATES.get(layout.gate.name):
        return LeastSquaresObjective(layout, X, y)

    def objective(flat: Tensor, idx: Tensor | None = None) -> Tensor:
        Xi, yi = (X, y) if idx is None else (X[idx], y[idx])
        return (yi - layout.forward(flat, Xi)).square().mean(-1)  # (m,)

    return objective


def value_and_grad(objective: Objective, x: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Losses ``(m,)`` and per-replicate gradients ``(m, P)``.

    Uses ``objective.value_and_grad`` where the objective has one (closed form), else one
    autograd backward pass (replicate r's loss depends on row r only, so the gradient of the
    summed loss holds every replicate's own gradient).
    """
    closed = getattr(objective, "value_and_grad", None)
    if closed is not None:
        return closed(x.detach(), idx)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = objective(x, idx)
        (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


@dataclass
class OptimResult:
    """Outcome of a batched minimisation; every field has leading dim R."""

    x: Tensor  # (R, P) final iterates
    loss: Tensor  # (R,)
    grad_max: Tensor  # (R,) max-abs gradient at x
    converged: Tensor  # (R,) bool
    n_iter: Tensor  # (R,) int64 iterations performed
    n_evals: Tensor  # (R,) int64 objective evaluations


def _cubic_min(x1: Tensor, f1: Tensor, g1: Tensor, x2: Tensor, f2: Tensor, g2: Tensor,
               lo: Tensor, hi: Tensor) -> Tensor:
    """Minimiser of the cubic interpolating (x1, f1, g1), (x2, f2, g2), clamped to [lo, hi];
    bisection of [lo, hi] where the cubic has no minimiser (Nocedal & Wright eq. 3.59)."""
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2)
    d2sq = d1 * d1 - g1 * g2
    d2 = d2sq.clamp(min=0.0).sqrt()
    m_a = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
    m_b = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
    m = torch.where(x1 <= x2, m_a, m_b)
    ok = (d2sq >= 0) & torch.isfinite(m)
    return torch.where(ok, torch.minimum(torch.maximum(m, lo), hi), 0.5 * (lo + hi))


def _sel(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Row-wise where: rows of ``a`` where mask (R,) else rows of ``b``."""
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


def _strong_wolfe(
    fg: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    x: Tensor, d: Tensor, t0: Tensor, f: Tensor, g: Tensor, gtd: Tensor, active: Tensor,
    c1: float, c2: float, max_ls: int, tolerance_change: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched strong-Wolfe line search along d from x (Nocedal & Wright Alg. 3.5 + 3.6).

    Each replicate runs its own bracketing / zoom state machine; only replicates still
    searching are evaluated. Returns step t (R,) (0 where no decrease was found), f and g at
    x + t d, and evaluations used (R,).
    """
    todo = active.clone()

    def evaluate(trial: Tensor) -> tuple[Tensor, Tensor]:
        if bool(todo.all()):
            return fg(x + trial.unsqueeze(-1) * d, None)
        idx = todo.nonzero().squeeze(-1)  # evaluate only the replicates still searching
        f_sub, g_sub = fg(x[idx] + trial[idx, None] * d[idx], idx)
        f_new, g_new = f.clone(), g.clone()
        f_new[idx], g_new[idx] = f_sub, g_sub
        return f_new, g_new

    # fast path: L-BFGS steps are mostly accepted at the first trial t0, which the state machine
    # below would accept too (bracketing phase, Armijo holds and |g'd| <= -c2 g^T d)
    pending: tuple[Tensor, Tensor] | None = evaluate(t0)
    f_new, g_new = pending
    gtd_new = (g_new * d).sum(-1)
    first_ok = (f_new <= f + c1 * t0 * gtd) & torch.isfinite(f_new) & (gtd_new.abs() <= -c2 * gtd)
    if bool((first_ok | ~todo).all()):
        return (torch.where(todo, t0, 0.0), torch.where(todo, f_new, f), _sel(todo, g_new, g),
                todo.long())

    R = x.shape[0]
    zoom = torch.zeros_like(todo)
    insuf = torch.zeros_like(todo)
    t = t0.clone()
    # bracketing state: previous trial (starts at t = 0)
    t_prev, f_prev, gtd_prev, g_prev = torch.zeros_like(t), f.clone(), gtd.clone(), g.clone()
    # zoom state: lo (best Armijo point so far) and hi ends of the bracket
    t_lo, f_lo, gtd_lo, g_lo = t_prev.clone(), f.clone(), gtd.clone(), g.clone()
    t_hi, f_hi, gtd_hi = t.clone(), f.clone(), gtd.clone()
    # accepted point
    t_acc, f_acc, g_acc = torch.zeros_like(t), f.clone(), g.clone()
    evals = torch.zeros(R, dtype=torch.long, device=x.device)
    d_max = d.abs().amax(-1)
    first = torch.ones_like(todo)
    for _ in range(max_ls):
        # zoom replicates whose bracket collapsed stop with their lo point
        small = todo & zoom & ((t_hi - t_lo).abs() * d_max < tolerance_change)
        t_acc, f_acc, g_acc = _sel(small, t_lo, t_acc), _sel(small, f_lo, f_acc), _sel(small, g_lo, g_acc)
        todo = todo & ~small
        if not bool(todo.any()):
            break
        # trial step: zoom -> safeguarded cubic in the bracket; bracketing -> t
        b_min, b_max = torch.minimum(t_lo, t_hi), torch.maximum(t_lo, t_hi)
        tz = _cubic_min(t_lo, f_lo, gtd_lo, t_hi, f_hi, gtd_hi, b_min, b_max)
        eps = 0.1 * (b_max - b_min)
        near = torch.minimum(b_max - tz, tz - b_min) < eps
        fix = near & (insuf | (tz >= b_max) | (tz <= b_min))
        tz = torch.where(fix, torch.where((tz - b_max).abs() < (tz - b_min).abs(), b_max - eps, b_min + eps), tz)
        insuf = torch.where(zoom, near & ~fix, insuf)
        trial = torch.where(zoom, tz, t)

        f_new, g_new = evaluate(trial) if pending is None else pending  # the first trial is done
        pending = None
        evals = evals + todo.long()
        gtd_new = (g_new * d).sum(-1)
        armijo_fail = (f_new > f + c1 * trial * gtd) | ~torch.isfinite(f_new)
        curv_ok = gtd_new.abs() <= -c2 * gtd

        # ---- bracketing phase (Alg. 3.5) ----
        B = todo & ~zoom
        to_zoom_a = B & (armijo_fail | (~first & (f_new >= f_prev)))  # bracket [prev, trial]
        acc_b = B & ~to_zoom_a & curv_ok
        to_zoom_b = B & ~to_zoom_a & ~acc_b & (gtd_new >= 0)  # bracket [trial, prev]
        extra = B & ~to_zoom_a & ~acc_b & ~to_zoom_b
        # ---- zoom phase (Alg. 3.6) ----
        Z = todo & zoom
        z_hi = Z & (armijo_fail | (f_new >= f_lo))
        z_ok = Z & ~z_hi
        acc_z = z_ok & curv_ok
        z_flip = z_ok & ~acc_z & (gtd_new * (t_hi - t_lo) >= 0)  # hi <- lo
        z_lo = z_ok & ~acc_z  # lo <- trial

        acc = acc_b | acc_z
        t_acc, f_acc, g_acc = _sel(acc, trial, t_acc), _sel(acc, f_new, f_acc), _sel(acc, g_new, g_acc)
        # new hi
        set_hi_trial = to_zoom_a | z_hi
        set_hi_prev = to_zoom_b
        t_hi = torch.where(set_hi_trial, trial, torch.where(set_hi_prev, t_prev, torch.where(z_flip, t_lo, t_hi)))
        f_hi = torch.where(set_hi_trial, f_new, torch.where(set_hi_prev, f_prev, torch.where(z_flip, f_lo, f_hi)))
        gtd_hi = torch.where(set_hi_trial, gtd_new, torch.where(set_hi_prev, gtd_prev, torch.where(z_flip, gtd_lo, gtd_hi)))
        # new lo
        set_lo_prev = to_zoom_a
        set_lo_trial = to_zoom_b | z_lo
        t_lo = torch.where(set_lo_prev, t_prev, torch.where(set_lo_trial, trial, t_lo))
        f_lo = torch.where(set_lo_prev, f_prev, torch.where(set_lo_trial, f_new, f_lo))
        gtd_lo = torch.where(set_lo_prev, gtd_prev, torch.where(set_lo_trial, gtd_new, gtd_lo))
        g_lo = _sel(set_lo_prev, g_prev, _sel(set_lo_trial, g_new, g_lo))
        zoom = zoom | to_zoom_a | to_zoom_b
        insuf = torch.where(to_zoom_a | to_zoom_b, torch.zeros_like(insuf), insuf)
        # extrapolation step of the bracketing phase
        t_next = _cubic_min(t_prev, f_prev, gtd_prev, trial, f_new, gtd_new,
                            trial + 0.01 * (trial - t_prev), 10.0 * trial)
        t_prev = torch.where(extra, trial, t_prev)
        f_prev = torch.where(extra, f_new, f_prev)
        gtd_prev = torch.where(extra, gtd_new, gtd_prev)
        g_prev = _sel(extra, g_new, g_prev)
        t = torch.where(extra, t_next, t)
        first = first & ~B
        todo = todo & ~acc
    # out of evaluations: fall back to the best Armijo point known (lo in zoom, prev in bracketing)
    t_acc = torch.where(todo, torch.where(zoom, t_lo, t_prev), t_acc)
    f_acc = torch.where(todo, torch.where(zoom, f_lo, f_prev), f_acc)
    g_acc = _sel(todo, _sel(zoom, g_lo, g_prev), g_acc)
    return t_acc, f_acc, g_acc, evals


def _apply(M: Tensor | None, v: Tensor) -> Tensor:
    """M v per replicate for a dense ``(R, P, P)`` matrix M (identity if None)."""
    # a row-wise reduction, not bmm: bmm's kernel (and rounding) can depend on the batch size,
    # which would break "batched == one at a time" bit for bit
    return v if M is None else (M * v.unsqueeze(1)).sum(-1)


def _two_loop(g: Tensor, S: Tensor, Y: Tensor, rho: Tensor, n_hist: Tensor, M: Tensor | None = None) -> Tensor:
    """-H g by the L-BFGS two-loop recursion, per replicate (Nocedal & Wright Alg. 7.4).

    History slots are ordered oldest -> newest; replicate r uses its last ``n_hist[r]`` slots.
    Initial matrix H0 = gamma M, M a fixed positive-definite ``(R, P, P)`` preconditioner
    (identity if None), gamma = s^T y / (y^T M y) of the newest pair (N&W eq. 7.20 scaled by M).
    """
    m = S.shape[1]
    valid = torch.arange(m, device=g.device).unsqueeze(0) >= (m - n_hist).unsqueeze(1)  # (R, m)
    rho = torch.where(valid, rho, 0.0)  # a slot no replicate uses contributes exactly nothing
    lo = m - int(n_hist.max())  # slots before lo are invalid for every replicate: skipped
    q = g.clone()
    alphas = [torch.zeros_like(rho[:, 0])] * m
    for j in reversed(range(lo, m)):
        a = rho[:, j] * (S[:, j] * q).sum(-1)
        q = q - a.unsqueeze(-1) * Y[:, j]
        alphas[j] = a
    s_new, y_new = S[:, -1], Y[:, -1]
    My = _apply(M, y_new)
    gamma = torch.where(n_hist > 0, (s_new * y_new).sum(-1) / (y_new * My).sum(-1).clamp_min(1e-300), 1.0)
    r = gamma.unsqueeze(-1) * _apply(M, q)
    for j in range(lo, m):
        beta = rho[:, j] * (Y[:, j] * r).sum(-1)
        r = r + S[:, j] * (alphas[j] - beta).unsqueeze(-1)
    return -r


def lbfgs(
    objective: Objective,
    x0: Tensor,
    *,
    max_iter: int = 500,
    tol: float = 1e-9,
    ftol: float = 1e-13,
    history: int = 10,
    max_ls: int = 25,
    c1: float = 1e-4,
    c2: float = 0.9,
    precondition: Tensor | Callable[[Tensor, Tensor | None], Tensor] | None = None,
    refresh: int = 100,
) -> OptimResult:
    """Minimise R independent objectives with batched L-BFGS + strong-Wolfe line search.

    Args:
        objective: ``(m, P), idx -> (m,)`` losses (see :data:`Objective`).
        x0: ``(R, P)`` initial points.
        max_iter: maximum iterations (line searches) per replicate.
        tol: stop when max_j |dL_r/dtheta_j| <= tol (converged).
        ftol: also stop (converged) when a step decreases L_r by at most
            ftol * max(|L_r,old|, |L_r,new|).
        history: number m of curvature pairs kept per replicate.
        max_ls: maximum objective evaluations per line search.
        c1, c2: sufficient-decrease and curvature constants of the strong Wolfe conditions.
        precondition: optional positive-definite ``(R, P, P)`` approximation M of the inverse
            Hessian, used as initial matrix H0 = gamma M of the two-loop recursion (first step:
            -M g with unit step length); or a callable ``(x (m, P), idx) -> M (m, P, P)``
            evaluated at the start and every ``refresh`` iterations at the current iterates,
            each refresh also clearing the curvature history.
        refresh: iterations between preconditioner refreshes (callable ``precondition`` only).

    Replicates stop independently (frozen once converged, at max_iter, or when the line
    search finds no decrease -- then ``converged`` is False).
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (R, P), got {tuple(x0.shape)}")
    R, P = x0.shape
    x = x0.detach().clone()
    f, g = value_and_grad(objective, x)
    n_evals = torch.ones(R, dtype=torch.long)
    S = x.new_zeros(R, history, P)  # (R, m, P)
    Y = x.new_zeros(R, history, P)  # (R, m, P)
    rho = x.new_zeros(R, history)  # (R, m)
    n_hist = torch.zeros(R, dtype=torch.long)
    n_iter = torch.zeros(R, dtype=torch.long)
    converged = g.abs().amax(-1) <= tol
    active = ~converged & torch.isfinite(f)
    M = precondition if precondition is None or isinstance(precondition, Tensor) else None
    for it in range(max_iter):
        if not bool(active.any()):
            break
        if callable(precondition) and not isinstance(precondition, Tensor) and it % refresh == 0:
            # active replicates have all done exactly `it` iterations: a per-replicate schedule
            idx = active.nonzero().squeeze(-1)
            M_sub = precondition(x[idx], idx)
            M = M_sub.new_zeros(R, P, P) + torch.eye(P, dtype=x.dtype) if M is None else M.clone()
            M[idx] = M_sub
            n_hist = torch.where(active, 0, n_hist)
        d = _two_loop(g, S, Y, rho, n_hist, M)
        gtd = (g * d).sum(-1)
        reset = ~(gtd < 0)  # not a descent direction: restart from steepest descent
        n_hist = torch.where(reset, 0, n_hist)
        d = _sel(reset, -_apply(M, g), d)
        gtd = (g * d).sum(-1)
        if M is None:
            t0 = torch.where(n_hist == 0, (1.0 / g.abs().sum(-1)).clamp(max=1.0), torch.ones_like(f))
        else:
            t0 = torch.ones_like(f)
        t, f_new, g_new, ev = _strong_wolfe(
            lambda z, idx: value_and_grad(objective, z, idx), x, d, t0, f, g, gtd, active,
            c1, c2, max_ls, 1e-9 * 1e-3,
        )
        n_evals = n_evals + ev
        moved = active & (t > 0) & (f_new <= f)
        s = t.unsqueeze(-1) * d
        yv = g_new - g
        ys = (s * yv).sum(-1)
        push = moved & (ys > 1e-10)
        S = _sel(push, torch.cat([S[:, 1:], s.unsqueeze(1)], 1), S)
        Y = _sel(push, torch.cat([Y[:, 1:], yv.unsqueeze(1)], 1), Y)
        rho = _sel(push, torch.cat([rho[:, 1:], (1.0 / ys.where(push, 1.0)).unsqueeze(1)], 1), rho)
        n_hist = torch.where(push, (n_hist + 1).clamp(max=history), n_hist)
        decrease = f - f_new
        scale = torch.maximum(f.abs(), f_new.abs())
        x = _sel(moved, x + s, x)
        f = torch.where(moved, f_new, f)
        g = _sel(moved, g_new, g)
        n_iter = n_iter + active.long()
        done = moved & ((g.abs().amax(-1) <= tol) | (decrease <= ftol * scale))
        converged = converged | done
        active = active & ~done & moved
    return OptimResult(x, f, g.abs().amax(-1), converged, n_iter, n_evals)


def adam(
    objective: Objective,
    x0: Tensor,
    *,
    max_iter: int = 5000,
    tol: float = 1e-9,
    lr: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> OptimResult:
    """Minimise R independent objectives with full-batch Adam (arXiv 1412.6980).

    Converged when max-abs gradient <= tol; converged replicates are frozen.
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (R, P), got {tuple(x0.shape)}")
    R = x0.shape[0]
    x = x0.detach().clone()
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    n_iter = torch.zeros(R, dtype=torch.long)
    active = torch.ones(R, dtype=torch.bool)
    converged = torch.zeros(R, dtype=torch.bool)
    f, g = value_and_grad(objective, x)
    n_evals = torch.ones(R, dtype=torch.long)
    for _ in range(max_iter):
        done = active & (g.abs().amax(-1) <= tol)
        converged |= done
        active &= ~done & torch.isfinite(f)
        if not bool(active.any()):
            break
        step = (n_iter + 1).to(x.dtype).unsqueeze(-1)
        m = _sel(active, betas[0] * m + (1 - betas[0]) * g, m)
        v = _sel(active, betas[1] * v + (1 - betas[1]) * g * g, v)
        m_hat = m / (1 - betas[0] ** step)
        v_hat = v / (1 - betas[1] ** step)
        x = _sel(active, x - lr * m_hat / (v_hat.sqrt() + eps), x)
        n_iter = n_iter + active.long()
        idx = active.nonzero().squeeze(-1)
        f_sub, g_sub = value_and_grad(objective, x[idx], idx)
        f, g = f.clone(), g.clone()
        f[idx], g[idx] = f_sub, g_sub
        n_evals = n_evals + active.long()
    converged |= active & (g.abs().amax(-1) <= tol)
    return OptimResult(x, f, g.abs().amax(-1), converged, n_iter, n_evals)


def jacobian(layout: ParameterLayout, X: Tensor, flat: Tensor) -> Tensor:
    """J = d f(x_j; theta) / d theta ``(R, n, P)`` at ``flat`` by forward-mode autograd (one pass
    per free parameter): the reference for :meth:`LeastSquaresObjective.jacobian`."""
    R, P = flat.shape
    eye = torch.eye(P, dtype=flat.dtype)
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
    return G + damping * scale.view(R, 1, 1) * torch.eye(P, dtype=J.dtype)


class _Box:
    """theta = bound * tanh(phi / bound): unconstrained phi, theta inside (-bound, bound)."""

    def __init__(self, bound: float) -> None:
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"bound must be a finite number > 0, got {bound!r}")
        self.bound = bound

    def to_theta(self, phi: Tensor) -> Tensor:
        return self.bound * torch.tanh(phi / self.bound)

    def to_free(self, theta: Tensor) -> Tensor:
        return self.bound * torch.atanh(theta / self.bound)

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


METHODS = ("lbfgs", "adam")


def _check_data(X: Tensor, y: Tensor, layout: ParameterLayout) -> None:
    if not isinstance(X, Tensor) or not isinstance(y, Tensor):
        raise TypeError("X and y must be torch tensors")
    if X.ndim != 3 or y.ndim != 2 or X.shape[:2] != y.shape:
        raise ValueError(f"X must be (R, n, d) and y (R, n); got {tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[2] != layout.dim:
        raise ValueError(f"X has d = {X.shape[2]} features, the model expects {layout.dim}")
    if not bool(torch.isfinite(X).all()) or not bool(torch.isfinite(y).all()):
        raise ValueError("X and y must not contain NaN or inf")
    if X.shape[1] < layout.n_params:
        raise ValueError(
            f"n = {X.shape[1]} samples is smaller than the number of free parameters "
            f"({layout.n_params}) of {layout}"
        )


def fit_least_squares(
    layout: ParameterLayout,
    X: Tensor,
    y: Tensor,
    init: Tensor,
    *,
    method: str = "lbfgs",
    max_iter: int = 500,
    tol: float = 1e-9,
    precondition: bool = True,
    closed_form: bool = True,
    bound: float | None = None,
    **options: float,
) -> FitResult:
    """Least-squares fits of R replicates from initial free parameters ``init`` ``(R, P)``.

    Args:
        layout: model parametrisation.
        X: inputs ``(R, n, d)``; y: responses ``(R, n)``.
        init: initial free parameters ``(R, P)``.
        method: ``"lbfgs"`` (default) or ``"adam"``.
        max_iter: iteration cap per replicate.
        tol: max-abs gradient tolerance.
        precondition: L-BFGS only: use the inverse of the (damped) Gauss-Newton matrix as the
            initial inverse Hessian, recomputed at the current iterate every ``refresh``
            (option, default 100) iterations (see :func:`gauss_newton_matrix`).
        closed_form: compute gradients and Jacobians in closed form
            (:class:`~attnmoe.estimation.objective.LeastSquaresObjective`) rather than by
            autograd; the two agree to rounding (tests), the closed form is faster.
        bound: if given, least squares over the box |theta_p| <= bound of every free
            parameter (the compact parameter space the theory assumes): the optimiser works on
            phi with theta = bound * tanh(phi / bound), so interior points are unconstrained and
            no parameter can run off. ``init`` must lie strictly inside the box. ``grad_max``
            and ``tol`` then refer to the gradient with respect to phi.
        options: passed to :func:`lbfgs` (ftol, history, max_ls, c1, c2) or :func:`adam` (lr, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {list(METHODS)}")
    _check_data(X, y, layout)
    if init.shape != (X.shape[0], layout.n_params):
        raise ValueError(f"init must be (R, P) = ({X.shape[0]}, {layout.n_params}), got {tuple(init.shape)}")
    base = least_squares_objective(layout, X, y.to(X.dtype), closed_form)  # a function of theta
    start = time.perf_counter()
    init = init.to(X.dtype)
    box = None if bound is None else _Box(float(bound))
    objective = base if box is None else box.wrap(base)  # what the optimiser minimises
    if box is not None:
        if not bool((init.abs() < box.bound).all()):
            raise ValueError(f"init has entries outside the parameter box |theta| < bound = {bound}")
        init = box.to_free(init)
    if method == "lbfgs":
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
    )


def fit_restarts(
    layout: ParameterLayout,
    X: Tensor,
    y: Tensor,
    inits: Tensor,
    **kwargs,
) -> FitResult:
    """Fit from S initialisations per replicate, ``inits`` ``(S, R, P)``, as ONE batched program
    of S*R fits; keep, per replicate, the restart with the lowest training loss."""
    if inits.ndim != 3:
        raise ValueError(f"inits must be (S, R, P), got {tuple(inits.shape)}")
    S, R, P = inits.shape
    Xs = X.unsqueeze(0).expand(S, *X.shape).reshape(S * R, *X.shape[1:])  # (S*R, n, d)
    ys = y.unsqueeze(0).expand(S, *y.shape).reshape(S * R, -1)  # (S*R, n)
    res = fit_least_squares(layout, Xs, ys, inits.reshape(S * R, P), **kwargs)
    loss = torch.where(torch.isfinite(res.loss), res.loss, torch.inf).reshape(S, R)
    best = loss.argmin(0)  # (R,)
    pick = best * R + torch.arange(R)

    return FitResult(
        params={k: v[pick] for k, v in res.params.items()},
        flat=res.flat[pick],
        loss=res.loss[pick],
        grad_max=res.grad_max[pick],
        converged=res.converged[pick],
        n_iter=res.n_iter[pick],
        n_evals=res.n_evals[pick],
        seconds=res.seconds,
    )


def split_atoms(true_params: dict[str, Tensor], k_fit: int, gate_keys: Sequence[str]) -> dict[str, Tensor]:
    """Natural params with k* atoms -> k_fit >= k* atoms representing the same f (softmax).

    Extra atoms copy true atoms 1, 2, ..., k*-1, 1, ... in turn (atom 0 when k* = 1); an atom
    split into m copies gives each copy c_j - log m, so the copies' total mass exp(c_j) is kept.
    """
    k_true = next(iter(true_params.values())).shape[1]
    if k_fit < k_true:
        raise ValueError(f"k_fit ({k_fit}) must be >= k* ({k_true})")
    source = list(range(k_true))
    pool = list(range(1, k_true)) or [0]
    source += [pool[i % len(pool)] for i in range(k_fit - k_true)]
    counts = np.bincount(source, minlength=k_true)
    src = torch.tensor(source)
    out = {key: v[:, src].clone() for key, v in true_params.items()}
    if "c" in out and "c" in gate_keys:
        out["c"] = out["c"] - torch.log(torch.tensor(counts, dtype=out["c"].dtype))[src]
    return out


def near_truth_init(
    layout: ParameterLayout,
    true_params: dict[str, Tensor],
    seeds: Sequence[int],
    scale: float = 0.1,
) -> Tensor:
    """Near-truth initialisation ``(R, P)`` as simulation studies use it.

    True atoms (split as in :func:`split_atoms` when k > k*) are packed and every free
    parameter is perturbed by ``scale * N(0, 1)``; replicate r's noise comes from seed
    ``derive_seed(seeds[r], 1)`` only.
    """
    from attnmoe.estimation.truth import derive_seed

    R = len(seeds)
    params = {k: v[:1].expand(R, *v.shape[1:]) for k, v in true_params.items()}
    params = split_atoms(params, layout.n_experts, layout.gate.param_names)
    flat = layout.pack(params)  # (R, P)
    noise = torch.stack(
        [
            torch.randn(layout.n_params, generator=torch.Generator().manual_seed(derive_seed(s, 1)),
                        dtype=flat.dtype)
            for s in seeds
        ]
    )
    return flat + scale * noise


def random_init(
    layout: ParameterLayout,
    X: Tensor,
    y: Tensor,
    n_init: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Data-driven random restarts ``(n_init, R, P)``.

    With s_x the standard deviation of X's entries (per replicate): A entries ~ N(0, 1)/s_x^2
    (then symmetrised by packing), b ~ N(0, 1)/s_x, c ~ N(0, 0.5^2). Linear experts: ordinary
    least squares (a_ols, alpha_ols) of y on X plus N(0, 1) * s_y / (s_x sqrt(d)) resp. N(0, s_y^2);
    activated experts: a ~ N(0, 1)/(s_x sqrt(d)), alpha ~ N(0, 1).
    """
    if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be an int >= 1, got {n_init!r}")
    R, n, d = X.shape
    k, dt = layout.n_experts, X.dtype
    s_x = X.reshape(R, -1).std(-1).clamp_min(1e-12).view(1, R, 1)  # (1, R, 1)
    s_y = y.std(-1).clamp_min(1e-12).view(1, R, 1)  # (1, R, 1)

    def rnd(*shape: int) -> Tensor:  # (S, R, k, *shape)
        return torch.randn(n_init, R, k, *shape, generator=generator, dtype=dt)

    def per_r(v: Tensor, extra: int) -> Tensor:  # (1, R, 1) -> (1, R, 1, *[1]*extra)
        return v.view(1, R, 1, *([1] * extra))

    params: dict[str, Tensor] = {}
    if "A" in layout.gate.param_names:
        params["A"] = rnd(d, d) / per_r(s_x, 2).square()
    if "b" in layout.gate.param_names:
        params["b"] = rnd(d) / per_r(s_x, 1)
    params["c"] = 0.5 * rnd()
    if layout.expert.name == "linear":
        design = torch.cat([X, X.new_ones(R, n, 1)], -1)  # (R, n, d+1)
        coef = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)  # (R, d+1)
        params["a"] = coef[None, :, None, :d] + rnd(d) * per_r(s_y / (s_x * math.sqrt(d)), 1)
        params["alpha"] = coef[None, :, None, d] + rnd() * s_y
    else:
        params["a"] = rnd(d) / per_r(s_x * math.sqrt(d), 1)
        params["alpha"] = rnd()
    flat = layout.pack({key: v.reshape(n_init * R, *v.shape[2:]) for key, v in params.items()})
    return flat.reshape(n_init, R, layout.n_params)
