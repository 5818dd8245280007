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


#: speculate (``trust_region(speculate=True)``) in an iteration where at least this share of the
#: replicates' trial steps are likely accepted (see ``trust_region``)
SPECULATE_SHARE = 0.5

_GRADIENT, _DECREMENT, _STALLED, _NONFINITE = (REASONS.index(v) for v in ("gradient", "decrement", "stalled",
                                                                          "nonfinite"))


def _subproblem(lam: Tensor, gh: Tensor, radius: Tensor, iters: int = 40) -> tuple[Tensor, Tensor]:
    """Exact trust-region step in the eigenbasis of H, per replicate.

    Minimises  m(p) = gh^T p + 1/2 sum_i lam_i p_i^2  subject to ||p|| <= radius  (p, gh in the
    eigenbasis; lam ascending). Solution (N&W Thm 4.1): p(mu) = -gh / (lam + mu) with
    mu >= max(0, -lam_1) and mu (radius - ||p||) = 0. mu is found by Newton's method on the
    secular equation 1/||p(mu)|| = 1/radius, which converges monotonically from the left (N&W
    Alg. 4.3); in the hard case (gh orthogonal to the lowest eigenvector(s)) the step is
    completed along the lowest eigenvector to the boundary. When every row's Newton step lies
    inside its region, that step is the answer and the boundary search is skipped (its result
    would be discarded for each of those rows).

    Returns the step ``(m, P)`` (eigenbasis) and the model decrease -m(p) ``(m,)``.
    """
    scale = lam.abs().amax(-1).clamp_min(1e-300)  # (m,)
    lam0 = lam[:, 0]
    lo = (-lam0).clamp_min(0.0)  # (m,) smallest admissible shift
    newton_ok = lam0 > 1e-14 * scale
    neg = -gh
    p_newton = neg / torch.where(newton_ok.unsqueeze(-1), lam, 1.0)
    interior = newton_ok & (p_newton.norm(dim=-1) <= radius)
    if bool(interior.all()):
        p = p_newton
        return p, -((gh * p).sum(-1) + 0.5 * (lam * p.square()).sum(-1))
    # boundary solution: start just right of the pole, Newton on 1/||p|| - 1/radius; mu, the
    # norms and the radius as (m, 1) columns
    rad = radius.unsqueeze(-1)
    mu = (lo + 1e-12 * scale).unsqueeze(-1)
    tight, gh2 = rad * (1.0 + 1e-10), gh.square()
    for _ in range(iters):
        den = lam + mu
        p = neg / den
        pn2 = p.square().sum(-1, keepdim=True)
        pn = pn2.sqrt()
        # left of the root: move right (monotone). A row within 1e-10 of its radius is done and
        # no longer changes, so stopping once every row is done gives each row the same mu
        # alone as in any batch (and saves most of the 40 iterations' tensor-call overhead)
        move = pn > tight
        if not bool(move.any()):
            break
        q = (gh2 / den.pow(3)).sum(-1, keepdim=True).clamp_min(1e-300)
        step = (pn / rad - 1.0) * pn2 / q
        mu = torch.where(move, mu + step, mu)
    else:  # mu moved after the last p
        p = neg / (lam + mu)
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
        pn = p.norm(dim=-1)
    # feasibility: never leave the region because of rounding in mu
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
    # a finite sum proves every entry finite (an inf or NaN entry makes it inf or NaN); the
    # entry-wise test (~10x the cost of the sum at R = 64) only when it does not
    if bool(torch.isfinite(M.sum())) or bool(torch.isfinite(M).all()):
        ok = None  # every row: the eigenvalues as they come
    else:
        ok = torch.isfinite(M).flatten(1).all(-1)  # (m,)
        M = torch.where(ok[:, None, None], M, torch.eye(M.shape[-1], dtype=M.dtype, device=M.device))
    try:
        lam, Q = torch.linalg.eigh(M)
    except torch.linalg.LinAlgError:
        if ok is None:
            ok = torch.ones(M.shape[0], dtype=torch.bool, device=M.device)
        lam, Q = M.new_empty(M.shape[:-1]), torch.empty_like(M)
        for i in range(M.shape[0]):
            try:
                lam[i : i + 1], Q[i : i + 1] = torch.linalg.eigh(M[i : i + 1])
            except torch.linalg.LinAlgError:
                ok[i] = False
                lam[i], Q[i] = 0.0, torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return (lam if ok is None else torch.where(ok[:, None], lam, torch.nan)), Q


def _rotate(Q: Tensor, g: Tensor, D: Tensor) -> Tensor:
    """Q^T D^-1 g ``(m, P)``: the gradient in the eigenbasis of the scaled Hessian."""
    return (Q * (g / D).unsqueeze(-1)).sum(-2)


def _pad_to_even(hessian: HessianFn, objective: Objective, P: int) -> tuple[HessianFn, Objective]:
    """The problem in P + 1 variables: the objective ignores the last one, whose gradient is 0
    and whose Hessian row is (0, ..., 0, max_i H_ii) (decoupled; the value keeps the scaling's
    floor unchanged)."""
    pad = torch.nn.functional.pad

    def padded_hessian(x: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        f, g, H = hessian(x[:, :P].contiguous(), idx)
        H_p = pad(H, (0, 1, 0, 1))  # zeros in the new row and column
        H_p[:, P, P] = torch.diagonal(H, dim1=-2, dim2=-1).amax(-1)
        return f, pad(g, (0, 1)), H_p

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
    speculate: bool = False,
    speculate_share: float = SPECULATE_SHARE,
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
        speculate: in an iteration where most trial steps are likely accepted, evaluate
            ``hessian`` at the trial points instead of ``objective``, take its losses as
            f(x + p) and, for the accepted steps, its gradients and Hessians as the new
            iterates' (no second evaluation); rejected rows' are discarded. Valid only when
            ``hessian(x, idx)[0]`` is bitwise ``objective(x, idx)`` and a replicate's numbers
            do not depend on the other rows of a call (true of
            :class:`~attnmoe.estimation.families.least_squares.objective.LeastSquaresObjective`,
            both assemblies, and of the box wrapper of ``fit_least_squares``): then every
            result, ``n_evals`` included (it counts trial points as without), is bitwise that
            of ``speculate=False``; only the cost changes. An iteration speculates when at
            least :data:`SPECULATE_SHARE` of its rows have a step strictly inside the region
            (a Newton step) or had their last trial accepted with rho < 1/4 (the region was
            cut to a quarter of a step that worked). Measured on traces of the four core
            settings, exact- and over-specified (n = 1000 and 10 000, R = 16): such steps were
            accepted 85-100 % of the time, boundary steps of a region kept or enlarged 35-70 %
            (the first step, from radius 1, almost never); a Hessian call costs 4-9 loss calls
            (R = 8 to 64, both assemblies). The choice is per iteration, all rows or none, never
            two evaluation calls where there was one: at n = 1000 a call's fixed cost is worth
            about 7 (numba) rows of loss, and per-row speculation (up to three calls an
            iteration) made over-specified fits 5-10 % slower. A cost model on those traces put
            the share 0.5 at 0 to +9 % of evaluation cost in every setting and assembly, where
            0.2 lost up to 2 % on over-specified torch fits at n = 10 000 (a Hessian ~9 losses);
            with a Hessian at ~2 losses (a faster kernel) 0.2 would save 2-4 points more. Timing:
            benchmarks/bench_speculate.py.
        speculate_share: that share (default :data:`SPECULATE_SHARE`); 0 speculates in every
            iteration, the right choice when ``objective`` costs nearly as much as ``hessian``:
            the numba assembly's kernel version 2 takes its loss from the whole kernel without the
            products (~60 % of a Hessian call), and 0 was 3-15 % faster than 0.5 there on exact-
            and over-specified fits (benchmarks/speculate_share.py). ``fit_least_squares`` runs the
            numba assembly in its own compiled loop (``numba_loop``, which speculates always);
            the batched solver on that assembly is what ``benchmarks/bench_loop.py`` compares it to.
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
    # Tensor layouts matter below: a reduction over P (the sums over Q's rows or columns) rounds
    # differently on a row-major and a column-major Q, so Q keeps eigh's layout (indexing Q[idx]
    # keeps it too) and gh, the scaled gradient Q^T D^-1 g at every current iterate, is computed
    # once per accepted move and read back from here (a row's values do not depend on the rows
    # it was computed with).
    gh = _rotate(Q, g, D)
    dev = x.device  # every tensor of the iteration lives on the device of x0 (CPU or GPU)
    # iterations per replicate (trial steps and extrapolation tries); n_evals = 1 + n_iter + tries
    # (the first point, one loss per trial, two evaluations per try: y and z)
    n_iter = torch.zeros(R, dtype=torch.long, device=dev)
    ones = torch.ones(R, dtype=torch.long, device=dev)
    delta = torch.full((R,), float(radius), dtype=x.dtype, device=dev)
    reason = torch.full((R,), REASONS.index("max_iter"), dtype=torch.long, device=dev)
    active = torch.ones(R, dtype=torch.bool, device=dev)

    def check(rw: Tensor, f_r: Tensor, g_r: Tensor, lam_r: Tensor, gh_r: Tensor) -> None:
        """Stopping tests at the current iterates of replicates ``rw`` (their f, g, lam, gh)."""
        dec, floor = _decrement(lam_r, gh_r, curvature_tol)
        lam0 = lam_r[:, 0]
        convex = lam0 >= -floor
        by_dec = convex & (dec <= dtol * f_r.abs())
        by_grad = g_r.abs().amax(-1) <= gtol
        bad = ~(torch.isfinite(f_r) & torch.isfinite(lam0))
        # priority: nonfinite, gradient, decrement, the reason so far
        reason[rw] = reason[rw].masked_fill_(by_dec, _DECREMENT).masked_fill_(by_grad, _GRADIENT).masked_fill_(
            bad, _NONFINITE)
        active[rw] = ~(by_grad | by_dec | bad)

    check(torch.arange(R, device=dev), f, g, lam, gh)
    W = int(extrapolate)
    if W < 0:
        raise ValueError(f"extrapolate must be >= 0, got {extrapolate!r}")
    if W:
        ring = x.new_zeros(R, W, P)  # (R, W, P) the iterates before the last W accepted steps
        lengths = x.new_zeros(R, W)  # (R, W) their step lengths
        count = torch.zeros(R, dtype=torch.long, device=dev)  # accepted steps since the last reset
        rows = torch.arange(R, device=dev)
    factor = torch.ones(R, dtype=x.dtype, device=dev)  # length of the next jump / of the window's path
    tries = torch.zeros(R, dtype=torch.long, device=dev)  # extrapolations tried / accepted, per replicate
    jumps = torch.zeros(R, dtype=torch.long, device=dev)
    # speculate only: the replicate's last trial was accepted with rho < 1/4
    eager = torch.zeros(R, dtype=torch.bool, device=dev)

    def accept(rw: Tensor, new: Tensor, derivatives: tuple[Tensor, Tensor, Tensor] | None = None) -> None:
        """Move replicates ``rw`` to ``new`` (recorded in the window), refresh their derivatives
        (``hessian(new, rw)`` unless given), scaling and eigenpairs, and check them."""
        if W:
            c_rw, before = count[rw], x[rw]
            slot = c_rw % W
            ring[rw, slot] = before
            lengths[rw, slot] = (new - before).norm(dim=-1)
            count[rw] = c_rw + 1
        x[rw] = new
        f_a, g_a, H_a = hessian(new, rw) if derivatives is None else derivatives
        f[rw], g[rw] = f_a, g_a
        D_a = _scaling(H_a, D[rw], scaled)
        D[rw] = D_a
        lam_a, Q_a = _scaled_eigh(H_a, D_a, pad)
        lam[rw], Q[rw] = lam_a, Q_a
        # Q[rw] has Q's layout; Q_a has it too unless eigh fell back to row-by-row
        gh_a = _rotate(Q_a if Q_a.stride()[1:] == Q.stride()[1:] else Q[rw], g_a, D_a)
        gh[rw] = gh_a
        check(rw, f_a, g_a, lam_a, gh_a)

    for it in range(max_iter):
        idx = active.nonzero().squeeze(-1)
        if not idx.numel():
            break
        if W and it >= W:  # before W iterations no replicate has W accepted steps
            oldest = ring[rows, count % W]  # (R, P) the iterate W accepted steps ago
            chord = (x - oldest).norm(dim=-1)
            jump = active & (count >= W) & (chord >= straightness * lengths.sum(-1)) & (chord > 0)
            if bool(jump.any()):
                J = jump.nonzero().squeeze(-1)
                y = x[J] + factor[J].unsqueeze(-1) * (x[J] - oldest[J])  # the path continued
                _, g_y, H_y = hessian(y, J)
                D_y = _scaling(H_y, D[J], scaled)
                lam_y, Q_y = _scaled_eigh(H_y, D_y, pad)
                gh_y = _rotate(Q_y, g_y, D_y)
                # back to the valley floor: a Newton step in the stiff directions only
                stiff = lam_y > stiff_tol * lam_y.abs().amax(-1, keepdim=True)
                p_y = torch.where(stiff, -gh_y / torch.where(stiff, lam_y, 1.0), 0.0)
                z = y + (Q_y * p_y.unsqueeze(-2)).sum(-1) / D_y
                f_z = objective(z, J)
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
        m = idx.numel()
        d, x_i = delta[idx], x[idx]
        p_hat, pred = _subproblem(lam[idx], gh[idx], d)
        trial = x_i + (Q[idx] * p_hat.unsqueeze(-2)).sum(-1) / D[idx]  # x + D^-1 Q p_hat  (m, P)
        pn = p_hat.norm(dim=-1)
        boundary = pn >= 0.99 * d
        guess = None  # the derivatives at the trial points, when speculated
        if speculate and int((~boundary | eager[idx]).sum()) >= speculate_share * m:
            guess = hessian(trial, idx)
            f_trial = guess[0]
        else:
            f_trial = objective(trial, idx)
        n_iter.index_add_(0, idx, ones[:m])
        rho = (f[idx] - f_trial) / pred.clamp_min(1e-300)
        ok = torch.isfinite(f_trial) & (rho > eta) & (pred > 0)
        d_new = torch.where(~ok | (rho < 0.25), 0.25 * pn, d)
        d_new = torch.where(ok & (rho > 0.75) & boundary, (2.0 * d_new).clamp(max=max_radius), d_new)
        delta[idx] = d_new
        stalled = d_new < 1e-14 * (1.0 + x_i.norm(dim=-1))
        reason[idx] = reason[idx].masked_fill_(stalled, _STALLED)
        active[idx] = ~stalled  # every row of idx was active
        if speculate:
            eager[idx] = ok & (rho < 0.25)
        acc = idx[ok]
        n_acc = acc.numel()
        if n_acc == m:  # every step accepted: no row to pick
            accept(idx, trial, guess)
        elif n_acc:
            accept(acc, trial[ok], None if guess is None else tuple(t[ok] for t in guess))
    dec, _ = _decrement(lam, gh, curvature_tol)
    converged = (reason == _GRADIENT) | (reason == _DECREMENT)
    return OptimResult(
        x[:, : P - 1].clone() if pad else x, f, g.abs().amax(-1), converged, n_iter, n_iter + tries + 1,
        reason=reason, min_eig=lam[:, 0].clone(), decrement=dec,
        extra={"extrapolations": tries, "jumps": jumps},
    )
