"""Generic batched optimisers: R independent problems as ONE tensor program.

Every solver minimises ``objective(x (m, P), idx) -> (m,)`` for R replicates at once; row r
of the iterate depends only on replicate r's objective, and each replicate keeps its own state
(step sizes, histories, trust radius, stopping), so a batched run performs, per replicate,
exactly the iterations a run of that replicate alone performs.

* :func:`trust_region` -- trust-region Newton with the exact Hessian (Nocedal & Wright,
  Numerical Optimization, 2nd ed., Alg. 4.1; the subproblem solved exactly in the Hessian's
  eigenbasis, Sec. 4.3 / Moré & Sorensen 1983, hard case included). For the degenerate minima
  of over-specified mixtures: Gauss-Newton drops the residual curvature r_j d2f_j that the
  noise creates there, the exact Hessian keeps it. Along long nearly flat valleys, where the
  quadratic model holds only over short steps, a valley extrapolation (the recent straight
  path continued, then Newton steps back to the floor in the stiff directions) saves steps.
* :func:`lbfgs` -- batched L-BFGS (N&W Alg. 7.4 two-loop recursion, Alg. 3.5/3.6 strong-Wolfe
  line search with cubic interpolation), optionally preconditioned.
* :func:`adam` -- batched Adam (Kingma & Ba, arXiv 1412.6980).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "REASONS",
    "Objective",
    "OptimResult",
    "adam",
    "lbfgs",
    "trust_region",
    "value_and_grad",
]

#: ``objective(flat (m, P), idx (m,) or None) -> loss (m,)``; ``idx`` selects the replicates
#: the rows of ``flat`` belong to (None: all, in order).
Objective = Callable[[Tensor, "Tensor | None"], Tensor]


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


#: why a replicate stopped (``OptimResult.reason`` holds the index into this tuple)
REASONS: tuple[str, ...] = ("gradient", "decrement", "ftol", "max_iter", "stalled", "nonfinite")


@dataclass
class OptimResult:
    """Outcome of a batched minimisation; every field has leading dim R."""

    x: Tensor  # (R, P) final iterates
    loss: Tensor  # (R,)
    grad_max: Tensor  # (R,) max-abs gradient at x
    converged: Tensor  # (R,) bool
    n_iter: Tensor  # (R,) int64 iterations performed
    n_evals: Tensor  # (R,) int64 objective evaluations
    reason: Tensor | None = None  # (R,) int64 index into REASONS (None: not recorded)
    min_eig: Tensor | None = None  # (R,) smallest Hessian eigenvalue at x (second-order solvers)
    decrement: Tensor | None = None  # (R,) predicted decrease left by a Newton step at x
    extra: dict[str, Tensor] = field(default_factory=dict)

    def reasons(self) -> list[str]:
        """Per replicate, the stopping reason as a word (derived from ``converged`` when the
        solver did not record one)."""
        if self.reason is None:
            return ["gradient" if bool(c) else "max_iter" for c in self.converged]
        return [REASONS[int(i)] for i in self.reason]


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




#: ``hessian(x (m, P), idx) -> (loss (m,), grad (m, P), Hessian (m, P, P))``
HessianFn = Callable[[Tensor, "Tensor | None"], tuple[Tensor, Tensor, Tensor]]


def _subproblem(lam: Tensor, gh: Tensor, radius: Tensor, iters: int = 40) -> tuple[Tensor, Tensor]:
    """Exact trust-region step in the eigenbasis of H, per replicate.

    Minimises  m(p) = gh^T p + 1/2 sum_i lam_i p_i^2  subject to ||p|| <= radius  (p, gh in the
    eigenbasis; lam ascending). Solution (N&W Thm 4.1): p(mu) = -gh / (lam + mu) with
    mu >= max(0, -lam_1) and mu (radius - ||p||) = 0. mu is found by Newton's method on the
    secular equation 1/||p(mu)|| = 1/radius, which converges monotonically from the left (N&W
    Alg. 4.3); in the hard case (gh orthogonal to the lowest eigenvector(s)) the step is
    completed along the lowest eigenvector to the boundary.

    Returns the step ``(m, P)`` (eigenbasis) and the model decrease -m(p) ``(m,)``.
    """
    scale = lam.abs().amax(-1).clamp_min(1e-300)  # (m,)
    lo = (-lam[:, 0]).clamp_min(0.0)  # (m,) smallest admissible shift
    newton_ok = lam[:, 0] > 1e-14 * scale
    p_newton = -gh / torch.where(newton_ok.unsqueeze(-1), lam, 1.0)
    interior = newton_ok & (p_newton.norm(dim=-1) <= radius)
    # boundary solution: start just right of the pole, Newton on 1/||p|| - 1/radius
    mu = lo + 1e-12 * scale
    for _ in range(iters):
        den = lam + mu.unsqueeze(-1)
        p = -gh / den
        pn2 = p.square().sum(-1)
        pn = pn2.sqrt()
        # left of the root: move right (monotone). A row within 1e-10 of its radius is done and
        # no longer changes, so stopping once every row is done gives each row the same mu
        # alone as in any batch (and saves most of the 40 iterations' tensor-call overhead)
        move = pn > radius * (1.0 + 1e-10)
        if not bool(move.any()):
            break
        q = (gh.square() / den.pow(3)).sum(-1).clamp_min(1e-300)
        step = (pn / radius - 1.0) * pn2 / q
        mu = torch.where(move, mu + step, mu)
    den = lam + mu.unsqueeze(-1)
    p = -gh / den
    pn = p.norm(dim=-1)
    # hard case: even at the pole ||p|| < radius -> add tau * (lowest eigenvector) to reach it
    hard = ~interior & (pn < radius * (1 - 1e-6))
    if bool(hard.any()):
        den_h = lam + lo.unsqueeze(-1)
        ok = den_h > 1e-12 * scale.unsqueeze(-1)
        p_h = torch.where(ok, -gh / torch.where(ok, den_h, 1.0), 0.0)
        tau = (radius.square() - p_h.square().sum(-1)).clamp_min(0.0).sqrt()
        p_h[:, 0] = p_h[:, 0] + tau
        p = torch.where(hard.unsqueeze(-1), p_h, p)
    # feasibility: never leave the region because of rounding in mu
    pn = p.norm(dim=-1)
    p = p * torch.where(pn > radius, radius / pn.clamp_min(1e-300), 1.0).unsqueeze(-1)
    p = torch.where(interior.unsqueeze(-1), p_newton, p)
    decrease = -((gh * p).sum(-1) + 0.5 * (lam * p.square()).sum(-1))
    return p, decrease


def _scaling(H: Tensor, previous: Tensor | None, scaled: bool) -> Tensor:
    """Variable scaling D ``(m, P)``: sqrt(diag H) floored at 1e-8 of its largest entry, never
    below its previous value (More 1978); ones when ``scaled`` is False."""
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    if not scaled:
        return torch.ones_like(diag)
    d = diag.clamp_min(1e-8 * diag.abs().amax(-1, keepdim=True).clamp_min(1e-300)).sqrt()
    return d if previous is None else torch.maximum(d, previous)


def _scaled_eigh(H: Tensor, D: Tensor, dummy: bool = False) -> tuple[Tensor, Tensor]:
    """Eigenpairs of M = D^-1 H D^-1 (ascending) for scalings D ``(m, P)``.

    ``dummy``: the last coordinate is the padding of :func:`trust_region` (decoupled, zero
    gradient); its entry of M is set to the largest diagonal entry of the rest, which lies in
    [lam_min, lam_max] of the rest, so the extreme eigenvalues (the curvature tests, the
    reported ``min_eig``) are those of the real block."""
    M = H / (D.unsqueeze(-1) * D.unsqueeze(-2))
    if dummy:
        M[:, -1, -1] = torch.diagonal(M[:, :-1, :-1], dim1=-2, dim2=-1).amax(-1)
    return torch.linalg.eigh(M)


def _pad_to_even(hessian: HessianFn, objective: Objective, P: int) -> tuple[HessianFn, Objective]:
    """The problem in P + 1 variables: the objective ignores the last one, whose gradient is 0
    and whose Hessian row is (0, ..., 0, max_i H_ii) (decoupled; the value keeps the scaling's
    floor unchanged)."""

    def padded_hessian(x: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        f, g, H = hessian(x[:, :P].contiguous(), idx)
        m = g.shape[0]
        g_p = torch.cat([g, g.new_zeros(m, 1)], -1)
        H_p = H.new_zeros(m, P + 1, P + 1)
        H_p[:, :P, :P] = H
        H_p[:, P, P] = torch.diagonal(H, dim1=-2, dim2=-1).amax(-1)
        return f, g_p, H_p

    def padded_objective(x: Tensor, idx: Tensor | None) -> Tensor:
        return objective(x[:, :P].contiguous(), idx)

    return padded_hessian, padded_objective


def _decrement(lam: Tensor, gh: Tensor, curvature_tol: float) -> tuple[Tensor, Tensor]:
    """Newton decrement 1/2 sum_i gh_i^2 / max(lam_i, c lam_max) ``(m,)`` and the curvature
    floor c lam_max ``(m,)`` (c = ``curvature_tol``)."""
    floor = curvature_tol * lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    return 0.5 * (gh.square() / torch.maximum(lam, floor)).sum(-1), floor.squeeze(-1)


def trust_region(
    hessian: HessianFn,
    objective: Objective,
    x0: Tensor,
    *,
    max_iter: int = 500,
    gtol: float = 0.0,
    dtol: float = 1e-8,
    curvature_tol: float = 1e-6,
    radius: float = 1.0,
    max_radius: float = 1e3,
    eta: float = 1e-4,
    scaled: bool = True,
    extrapolate: int = 10,
    straightness: float = 0.9,
    stiff_tol: float = 1e-3,
) -> OptimResult:
    """Minimise R independent objectives by trust-region Newton with the exact Hessian.

    Iteration (N&W Alg. 4.1), per replicate: H = Q diag(lam) Q^T; step p solving the
    trust-region subproblem exactly (:func:`_subproblem`); ratio rho = (f(x) - f(x + p)) /
    (model decrease); accept if rho > eta; radius /4 if rho < 1/4, x2 (capped) if rho > 3/4
    and the step reached the boundary.

    Convergence (per replicate, checked at every accepted iterate):

    * ``"decrement"``: the Newton decrement  dec = 1/2 sum_i gh_i^2 / max(lam_i, c lam_max)
      (the decrease a Newton step would still make, c = ``curvature_tol``) is at most
      ``dtol * |f|``, and there is no significant negative curvature
      (lam_min >= -c lam_max). At a degenerate minimum (loss ~ t^4 along a flat direction t)
      dec tracks the excess loss, so this is a bound on how far from its local minimum the fit
      still is, in units of the loss;
    * ``"gradient"``: max |g| <= ``gtol``;
    * otherwise ``"max_iter"``, ``"stalled"`` (radius below 1e-14 (1 + ||x||)) or
      ``"nonfinite"`` (loss not finite at x).

    Args:
        hessian: ``(x, idx) -> (f, g, H)``.
        objective: ``(x, idx) -> f`` (evaluates trial points).
        x0: ``(R, P)`` starting points.
        max_iter: iterations (subproblem solves) per replicate.
        gtol, dtol, curvature_tol: the tolerances above.
        radius, max_radius: initial and largest trust radius (Euclidean, in x's units).
        eta: acceptance threshold on rho.
        extrapolate: window W of the valley extrapolation (0: off, the plain iteration).
            When a replicate's last W accepted steps form a nearly straight path (chord >=
            ``straightness`` x path length), the iteration instead tries y = x + t (x - x_{-W})
            (the path continued; t = 1, halved after each failure down to 1/8, then W more
            accepted steps before the next try), brings y back to the valley floor with one
            Newton step of y's own Hessian restricted to its stiff eigen-directions, z, and
            moves to z only if L(z) < L(x). Successive successes double the jump (the window
            then holds it). ``OptimResult.extra`` counts tries ("extrapolations") and
            successes ("jumps") per replicate. See ``docs/estimation.md`` ("Why over-specified
            fits took hundreds to thousands of Newton iterations").
        straightness: the chord / path-length threshold above.
        stiff_tol: stiff directions: scaled-Hessian eigenvalues > stiff_tol * lam_max.
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (R, P), got {tuple(x0.shape)}")
    R, P = x0.shape
    pad = P % 2 == 1
    if pad:
        # LAPACK's eigh and the SIMD reductions over P take another code path for a row that is
        # not 16-byte aligned: with P odd, every other replicate of a batch. Solving in P + 1
        # variables (a decoupled dummy that stays at 0) makes a replicate's fit bitwise the same
        # at every place in the batch (tests/test_optim.py); results are returned in P.
        hessian, objective = _pad_to_even(hessian, objective, P)
        x0 = torch.cat([x0, x0.new_zeros(R, 1)], -1)
        P += 1
    x = x0.detach().clone()
    f, g, H = hessian(x, None)
    # elliptical region ||D p|| <= radius, D = sqrt(diag H) (cumulative max, More 1978), i.e. a
    # spherical region in the variables D x; Q, lam are the eigenpairs of D^-1 H D^-1
    D = _scaling(H, None, scaled)
    lam, Q = _scaled_eigh(H, D, pad)
    n_evals = torch.ones(R, dtype=torch.long)
    n_iter = torch.zeros(R, dtype=torch.long)
    delta = torch.full((R,), float(radius), dtype=x.dtype)
    reason = torch.full((R,), REASONS.index("max_iter"), dtype=torch.long)
    active = torch.ones(R, dtype=torch.bool)

    def scaled_grad(idx: Tensor) -> Tensor:
        """Q^T D^-1 g ``(m, P)``: the gradient in the eigenbasis of the scaled Hessian."""
        return (Q[idx] * (g[idx] / D[idx]).unsqueeze(-1)).sum(-2)

    def check(idx: Tensor) -> None:
        """Stopping tests at the current iterates of replicates ``idx``."""
        nonlocal active, reason
        dec, floor = _decrement(lam[idx], scaled_grad(idx), curvature_tol)
        convex = lam[idx, 0] >= -floor
        by_dec = convex & (dec <= dtol * f[idx].abs())
        by_grad = g[idx].abs().amax(-1) <= gtol
        bad = ~torch.isfinite(f[idx])
        code = torch.where(by_grad, REASONS.index("gradient"),
                           torch.where(by_dec, REASONS.index("decrement"), reason[idx]))
        code = torch.where(bad, REASONS.index("nonfinite"), code)
        reason[idx] = code
        active[idx] = ~(by_grad | by_dec | bad)

    check(torch.arange(R))
    W = int(extrapolate)
    if W < 0:
        raise ValueError(f"extrapolate must be >= 0, got {extrapolate!r}")
    if W:
        ring = x.new_zeros(R, W, P)  # (R, W, P) the iterates before the last W accepted steps
        lengths = x.new_zeros(R, W)  # (R, W) their step lengths
        count = torch.zeros(R, dtype=torch.long)  # accepted steps since the last reset
        rows = torch.arange(R)
    factor = torch.ones(R, dtype=x.dtype)  # length of the next jump / length of the window's path
    tries = torch.zeros(R, dtype=torch.long)  # extrapolations tried / accepted, per replicate
    jumps = torch.zeros(R, dtype=torch.long)

    def remember(rw: Tensor, before: Tensor, after: Tensor) -> None:
        """Record the accepted move before -> after of replicates ``rw`` in the window."""
        slot = count[rw] % W
        ring[rw, slot] = before
        lengths[rw, slot] = (after - before).norm(dim=-1)
        count[rw] += 1

    def accept(rw: Tensor, new: Tensor) -> None:
        """Move replicates ``rw`` to ``new`` and refresh their derivatives and scaling."""
        if W:
            remember(rw, x[rw], new)
        x[rw] = new
        f_a, g_a, H_a = hessian(new, rw)
        f[rw], g[rw], H[rw] = f_a, g_a, H_a
        D[rw] = _scaling(H_a, D[rw], scaled)
        lam[rw], Q[rw] = _scaled_eigh(H_a, D[rw], pad)
        check(rw)

    for _ in range(max_iter):
        if not bool(active.any()):
            break
        if W:
            oldest = ring[rows, count % W]  # (R, P) the iterate W accepted steps ago
            chord = (x - oldest).norm(dim=-1)
            jump = active & (count >= W) & (chord >= straightness * lengths.sum(-1)) & (chord > 0)
            if bool(jump.any()):
                J = jump.nonzero().squeeze(-1)
                y = x[J] + factor[J].unsqueeze(-1) * (x[J] - oldest[J])  # the path continued
                _, g_y, H_y = hessian(y, J)
                D_y = _scaling(H_y, D[J], scaled)
                lam_y, Q_y = _scaled_eigh(H_y, D_y, pad)
                gh_y = (Q_y * (g_y / D_y).unsqueeze(-1)).sum(-2)
                # back to the valley floor: a Newton step in the stiff directions only
                stiff = lam_y > stiff_tol * lam_y.abs().amax(-1, keepdim=True)
                p_y = torch.where(stiff, -gh_y / torch.where(stiff, lam_y, 1.0), 0.0)
                z = y + (Q_y * p_y.unsqueeze(-2)).sum(-1) / D_y
                f_z = objective(z, J)
                n_evals[J] += 2
                n_iter[J] += 1
                good = torch.isfinite(f_z) & (f_z < f[J])
                tries[J] += 1
                jumps[J[good]] += 1
                # a failed try is retried shorter; below 1/8 of the window it waits W accepted steps
                fail = J[~good]
                factor[fail] = factor[fail] * 0.5
                give_up = fail[factor[fail] < 0.125]
                count[give_up] = 0
                factor[give_up] = 1.0
                if bool(good.any()):
                    accept(J[good], z[good])
            idx = (active & ~jump).nonzero().squeeze(-1)
            if not idx.numel():
                continue
        else:
            idx = active.nonzero().squeeze(-1)
        gh = scaled_grad(idx)
        p_hat, pred = _subproblem(lam[idx], gh, delta[idx])
        step = (Q[idx] * p_hat.unsqueeze(-2)).sum(-1) / D[idx]  # D^-1 Q p_hat  (m, P)
        trial = x[idx] + step
        f_trial = objective(trial, idx)
        n_evals[idx] += 1
        n_iter[idx] += 1
        rho = (f[idx] - f_trial) / pred.clamp_min(1e-300)
        ok = torch.isfinite(f_trial) & (rho > eta) & (pred > 0)
        pn = p_hat.norm(dim=-1)
        d = delta[idx]
        d = torch.where(~ok | (rho < 0.25), 0.25 * pn, d)
        d = torch.where(ok & (rho > 0.75) & (pn >= 0.99 * delta[idx]), (2.0 * d).clamp(max=max_radius), d)
        delta[idx] = d
        stalled = d < 1e-14 * (1.0 + x[idx].norm(dim=-1))
        reason[idx] = torch.where(stalled, REASONS.index("stalled"), reason[idx])
        active[idx] = active[idx] & ~stalled
        acc = idx[ok]
        if acc.numel():
            accept(acc, trial[ok])
    dec, _ = _decrement(lam, scaled_grad(torch.arange(R)), curvature_tol)
    converged = (reason == REASONS.index("gradient")) | (reason == REASONS.index("decrement"))
    return OptimResult(
        x[:, : P - 1].clone() if pad else x, f, g.abs().amax(-1), converged, n_iter, n_evals,
        reason=reason, min_eig=lam[:, 0].clone(), decrement=dec,
        extra={"extrapolations": tries, "jumps": jumps},
    )
