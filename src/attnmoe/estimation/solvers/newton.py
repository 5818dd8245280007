"""Batched trust-region Newton with the exact Hessian: R independent problems as ONE tensor program.

Re-exported by :mod:`attnmoe.estimation.solvers.optim` (with the other batched solvers, whose
conventions it shares: row r of the iterate depends only on replicate r's objective, and a
batched run performs, per replicate, exactly the iterations a run of that replicate alone
performs).

* :func:`trust_region` -- trust-region Newton with the exact Hessian (Nocedal & Wright,
  Numerical Optimization, 2nd ed., Alg. 4.1; the subproblem solved exactly in the Hessian's
  eigenbasis, Sec. 4.3 / Moré & Sorensen 1983, hard case included). For the degenerate minima
  of over-specified mixtures: Gauss-Newton drops the residual curvature r_j d2f_j that the
  noise creates there, the exact Hessian keeps it. Along long nearly flat valleys, where the
  quadratic model holds only over short steps, a valley extrapolation (the recent straight
  path continued, then Newton steps back to the floor in the stiff directions) saves steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnmoe.estimation.solvers.base import REASONS, Objective, OptimResult

__all__ = ["HessianFn", "trust_region"]

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
    # a non-finite matrix, or one LAPACK cannot decompose (seen: an over-specified top-K fit
    # from a displaced start), gets NaN eigenvalues, which stop that replicate as "nonfinite";
    # the other rows are decomposed as usual (a row alone is bitwise the row in a batch)
    ok = torch.isfinite(M).flatten(1).all(-1)  # (m,)
    if not bool(ok.all()):
        M = torch.where(ok[:, None, None], M, torch.eye(M.shape[-1], dtype=M.dtype, device=M.device))
    try:
        lam, Q = torch.linalg.eigh(M)
    except torch.linalg.LinAlgError:
        lam, Q = M.new_empty(M.shape[:-1]), torch.empty_like(M)
        for i in range(M.shape[0]):
            try:
                lam[i : i + 1], Q[i : i + 1] = torch.linalg.eigh(M[i : i + 1])
            except torch.linalg.LinAlgError:
                ok[i] = False
                lam[i], Q[i] = 0.0, torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return torch.where(ok[:, None], lam, torch.nan), Q


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


def _evaluate(hessian: HessianFn, objective: Objective, trial: Tensor, idx: Tensor,
              spec: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """Losses at the trial points ``trial`` ``(m, P)`` of replicates ``idx``; the rows where
    ``spec`` ``(m,)`` (bool) is set are evaluated by ``hessian`` instead, whose (f, g, H) of
    those rows (in order) is returned too (None when no row is)."""
    k = 0 if spec is None else int(spec.sum())
    if k == 0:
        return objective(trial, idx), None
    if k == spec.shape[0]:
        guess = hessian(trial, idx)
        return guess[0], guess
    guess = hessian(trial[spec], idx[spec])
    f_trial = trial.new_empty(trial.shape[0])
    f_trial[spec] = guess[0]
    f_trial[~spec] = objective(trial[~spec], idx[~spec])
    return f_trial, guess


def _derivatives(hessian: HessianFn, trial: Tensor, idx: Tensor, ok: Tensor, spec: Tensor,
                 guess: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(f, g, H) at the accepted trial points ``trial[ok]`` of replicates ``idx[ok]``: the rows
    speculated at (``spec``) from ``guess`` (:func:`_evaluate`), the others evaluated now. A
    replicate's numbers are its own in any call, so either way they are those of
    ``hessian(trial[ok], idx[ok])`` bit for bit."""
    have = spec[ok]
    kept = tuple(t[ok[spec]] for t in guess)
    k = int(have.sum())
    if k == have.shape[0]:
        return kept
    miss = ok & ~spec
    fresh = hessian(trial[miss], idx[miss])
    if k == 0:
        return fresh
    out = tuple(t.new_empty((have.shape[0], *t.shape[1:])) for t in fresh)
    for o, a, b in zip(out, kept, fresh):
        o[have], o[~have] = a, b
    return out  # type: ignore[return-value]


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
    speculate: bool = False,
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
      ``"nonfinite"`` (loss, or the eigen-decomposition of the scaled Hessian, not finite at x).

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
        speculate: for a replicate whose previous trial step was accepted, evaluate
            ``hessian`` at the trial point instead of ``objective`` and take its loss as
            f(x + p); if the step is accepted, its gradient and Hessian are the new iterate's
            (no second evaluation there), if rejected they are discarded. Accepted steps then
            cost one evaluation instead of two, rejected ones a Hessian instead of a loss.
            Valid only when ``hessian(x, idx)[0]`` is bitwise ``objective(x, idx)`` and a
            replicate's numbers do not depend on the other rows of the call (true of
            :class:`~attnmoe.estimation.families.least_squares.objective.LeastSquaresObjective`,
            both assemblies, and of its box wrapper): then every result, ``n_evals`` included
            (it counts trial points as without), is bitwise that of ``speculate=False``.
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
    dev = x.device  # every tensor of the iteration lives on the device of x0 (CPU or GPU)
    n_evals = torch.ones(R, dtype=torch.long, device=dev)
    n_iter = torch.zeros(R, dtype=torch.long, device=dev)
    delta = torch.full((R,), float(radius), dtype=x.dtype, device=dev)
    reason = torch.full((R,), REASONS.index("max_iter"), dtype=torch.long, device=dev)
    active = torch.ones(R, dtype=torch.bool, device=dev)

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
        bad = ~torch.isfinite(f[idx]) | ~torch.isfinite(lam[idx, 0])
        code = torch.where(by_grad, REASONS.index("gradient"),
                           torch.where(by_dec, REASONS.index("decrement"), reason[idx]))
        code = torch.where(bad, REASONS.index("nonfinite"), code)
        reason[idx] = code
        active[idx] = ~(by_grad | by_dec | bad)

    check(torch.arange(R, device=dev))
    W = int(extrapolate)
    if W < 0:
        raise ValueError(f"extrapolate must be >= 0, got {extrapolate!r}")
    if W:
        ring = x.new_zeros(R, W, P)  # (R, W, P) the iterates before the last W accepted steps
        lengths = x.new_zeros(R, W)  # (R, W) their step lengths
        count = torch.zeros(R, dtype=torch.long, device=dev)  # accepted steps since the last reset
        rows = torch.arange(R, device=dev)
    cut = torch.zeros(R, dtype=torch.bool, device=dev)  # the last trial cut the radius (speculate only)
    factor = torch.ones(R, dtype=x.dtype, device=dev)  # length of the next jump / of the window's path
    tries = torch.zeros(R, dtype=torch.long, device=dev)  # extrapolations tried / accepted, per replicate
    jumps = torch.zeros(R, dtype=torch.long, device=dev)

    def remember(rw: Tensor, before: Tensor, after: Tensor) -> None:
        """Record the accepted move before -> after of replicates ``rw`` in the window."""
        slot = count[rw] % W
        ring[rw, slot] = before
        lengths[rw, slot] = (after - before).norm(dim=-1)
        count[rw] += 1

    def accept(rw: Tensor, new: Tensor, derivatives: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
        """Move replicates ``rw`` to ``new`` and refresh their derivatives (``hessian(new, rw)``
        unless given) and scaling."""
        if W:
            remember(rw, x[rw], new)
        x[rw] = new
        f_a, g_a, H_a = hessian(new, rw) if derivatives is None else derivatives
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
        pn = p_hat.norm(dim=-1)
        d = delta[idx]
        # speculate where acceptance is likely (docstring): a step inside the region, or one in a
        # region the replicate's last trial cut
        spec = (pn < 0.99 * d) | cut[idx] if speculate else None
        f_trial, guess = _evaluate(hessian, objective, trial, idx, spec)
        n_evals[idx] += 1
        n_iter[idx] += 1
        rho = (f[idx] - f_trial) / pred.clamp_min(1e-300)
        ok = torch.isfinite(f_trial) & (rho > eta) & (pred > 0)
        shrink = ~ok | (rho < 0.25)
        d_old = d
        d = torch.where(shrink, 0.25 * pn, d)
        d = torch.where(ok & (rho > 0.75) & (pn >= 0.99 * d_old), (2.0 * d).clamp(max=max_radius), d)
        delta[idx] = d
        stalled = d < 1e-14 * (1.0 + x[idx].norm(dim=-1))
        reason[idx] = torch.where(stalled, REASONS.index("stalled"), reason[idx])
        active[idx] = active[idx] & ~stalled
        if speculate:
            cut[idx] = shrink
        acc = idx[ok]
        if acc.numel():
            accept(acc, trial[ok], None if guess is None else _derivatives(hessian, trial, idx, ok, spec, guess))
    dec, _ = _decrement(lam, scaled_grad(torch.arange(R, device=dev)), curvature_tol)
    converged = (reason == REASONS.index("gradient")) | (reason == REASONS.index("decrement"))
    return OptimResult(
        x[:, : P - 1].clone() if pad else x, f, g.abs().amax(-1), converged, n_iter, n_evals,
        reason=reason, min_eig=lam[:, 0].clone(), decrement=dec,
        extra={"extrapolations": tries, "jumps": jumps},
    )
