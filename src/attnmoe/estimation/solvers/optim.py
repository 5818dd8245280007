"""Generic batched optimisers: R independent problems as ONE tensor program.

Every solver minimises ``objective(x (m, P), idx) -> (m,)`` for R replicates at once; row r
of the iterate depends only on replicate r's objective, and each replicate keeps its own state
(step sizes, histories, trust radius, stopping), so a batched run performs, per replicate,
exactly the iterations a run of that replicate alone performs.

* :func:`trust_region` -- trust-region Newton with the exact Hessian (Nocedal & Wright Alg. 4.1,
  subproblem solved exactly in the Hessian's eigenbasis, valley extrapolation); defined and
  documented in :mod:`attnmoe.estimation.solvers.newton`, re-exported here.
* :func:`lbfgs` -- batched L-BFGS (N&W Alg. 7.4 two-loop recursion, Alg. 3.5/3.6 strong-Wolfe
  line search with cubic interpolation), optionally preconditioned.
* :func:`adam` -- batched Adam (Kingma & Ba, arXiv 1412.6980).

The shared interface (:data:`Objective`, :func:`value_and_grad`, :data:`REASONS`,
:class:`OptimResult`) lives in :mod:`attnmoe.estimation.solvers.base` and is re-exported here,
so ``from attnmoe.estimation.solvers.optim import ...`` reaches every solver and type.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnmoe.estimation.solvers.newton import HessianFn as HessianFn
from attnmoe.estimation.solvers.newton import trust_region
from attnmoe.estimation.solvers.base import REASONS, Objective, OptimResult, value_and_grad

__all__ = [
    "REASONS",
    "Objective",
    "OptimResult",
    "adam",
    "lbfgs",
    "trust_region",
    "value_and_grad",
]


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
    reason = torch.where(converged, REASONS.index("gradient"), REASONS.index("max_iter"))
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
        by_grad = moved & (g.abs().amax(-1) <= tol)
        by_ftol = moved & ~by_grad & (decrease <= ftol * scale)
        reason = torch.where(by_grad, REASONS.index("gradient"),
                             torch.where(by_ftol, REASONS.index("ftol"), reason))
        reason = torch.where(active & ~moved, REASONS.index("stalled"), reason)
        converged = converged | by_grad | by_ftol
        active = active & ~(by_grad | by_ftol) & moved
    reason = torch.where(~torch.isfinite(f), REASONS.index("nonfinite"), reason)
    return OptimResult(x, f, g.abs().amax(-1), converged, n_iter, n_evals, reason=reason)


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
