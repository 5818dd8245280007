"""The trust-region iteration of :func:`~attnmoe.estimation.solvers.newton.trust_region`, one
replicate at a time, compiled by numba around the generated kernel (``assembly="numba"``).

Why: at n = 10^3 the batched iteration's ~300 tensor calls cost a fixed ~2 ms per loop iteration
whatever the number of rows, a third to a half of an exact-specified fit, and most of an
over-specified batch, which runs as long as its slowest replicate (``benchmarks/fit_profile.py``,
docs/rates.md). Here an iteration costs its kernel call, one eigendecomposition and a few
microseconds; a replicate's fit depends on nothing but its own data, start and options.

The iteration is :func:`trust_region`'s, line for line, for one row (its docstring has the
mathematics: N&W Alg. 4.1 in the eigenbasis of the scaled Hessian D^-1 H D^-1, Moré-Sorensen
subproblem with the hard case, the valley extrapolation, the decrement / gradient / stalled /
nonfinite stops, and the iteration count and evaluation count it reports). Every trial point is
evaluated with derivatives and they are reused on acceptance (the batched solver's speculation;
the kernel's loss is bitwise the same with or without derivatives). No dummy coordinate for odd
P: it only aligned rows in a batch and changes no eigenvalue test. With a box the map
theta = B tanh(phi / B) and its chain rule (``fit._Box``) are applied here too.

Not bitwise the batched solver: LAPACK's eigendecomposition through numba (SciPy's LAPACK, not
torch's MKL) and scalar reductions round differently, so with this loop ``study.json`` records
``"assembly_version": 3`` (:data:`~attnmoe.estimation.families.least_squares.numba_assembly.ASSEMBLY_VERSION`). The two agree to rounding on exact-specified
fits and statistically on over-specified ones (tests, docs/rates.md).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor

from attnmoe.estimation.solvers.base import REASONS, OptimResult

__all__ = ["fit_rows"]

_GRADIENT, _DECREMENT, _MAX_ITER, _STALLED, _NONFINITE = (
    REASONS.index(v) for v in ("gradient", "decrement", "max_iter", "stalled", "nonfinite"))

_jit = numba.njit(nogil=True, cache=False, error_model="numpy")


@_jit
def _absmax(v):
    """max_i |v_i| (0 for an empty v; a NaN entry is skipped, as Python's max does)."""
    big = 0.0
    for x in v:
        big = max(big, abs(x))
    return big


@_jit
def _scaling(H, previous, scaled, first):
    """sqrt(diag H) floored at 1e-8 of its largest |entry|, never below ``previous``."""
    P = H.shape[0]
    d = np.ones(P)
    if not scaled:
        return d
    big = 0.0
    for p in range(P):
        big = max(big, abs(H[p, p]))
    floor = 1e-8 * max(big, 1e-300)
    for p in range(P):
        d[p] = math.sqrt(max(H[p, p], floor))
        if not first:
            d[p] = max(d[p], previous[p])
    return d


@_jit
def _matvec(Q, p):
    """Q p (Q in either memory order: eigh's is column-major)."""
    out = np.zeros(Q.shape[0])
    for i in range(Q.shape[0]):
        acc = 0.0
        for j in range(Q.shape[1]):
            acc += Q[i, j] * p[j]
        out[i] = acc
    return out


@_jit
def _eig(H, D, g):
    """Eigenpairs (ascending) of M = D^-1 H D^-1 and gh = Q^T D^-1 g; NaN eigenvalues (and Q = I)
    where M is not finite or LAPACK fails."""
    P = H.shape[0]
    M = np.empty((P, P))
    finite = True
    for p in range(P):
        for q in range(P):
            M[p, q] = H[p, q] / (D[p] * D[q])
            if not math.isfinite(M[p, q]):
                finite = False
    lam, Q = np.full(P, np.nan), np.eye(P)
    if finite:
        try:
            lam, Q = np.linalg.eigh(M)
        except Exception:  # noqa: BLE001 -- LAPACK did not converge: stop as "nonfinite"
            lam, Q = np.full(P, np.nan), np.eye(P)
    return lam, Q, _matvec(Q.T, g / D)


@_jit
def _decrement(lam, gh, curvature_tol):
    """1/2 sum gh_i^2 / max(lam_i, c lam_max) and the floor c lam_max."""
    floor = curvature_tol * max(_absmax(lam), 1e-300)
    dec = 0.0
    for i in range(lam.shape[0]):
        dec += gh[i] * gh[i] / max(lam[i], floor)
    return 0.5 * dec, floor


@_jit
def _subproblem(lam, gh, radius):
    """The exact trust-region step in the eigenbasis and the model decrease (newton._subproblem)."""
    P = lam.shape[0]
    scale = max(_absmax(lam), 1e-300)
    lo = max(-lam[0], 0.0)
    p = np.empty(P)
    interior = lam[0] > 1e-14 * scale
    if interior:
        for i in range(P):
            p[i] = -gh[i] / lam[i]
        interior = math.sqrt(np.sum(p * p)) <= radius
    if not interior:
        mu = lo + 1e-12 * scale
        tight = radius * (1.0 + 1e-10)
        for i in range(P):
            p[i] = -gh[i] / (lam[i] + mu)
        for _ in range(40):
            pn2 = np.sum(p * p)
            pn = math.sqrt(pn2)
            if not pn > tight:
                break
            q = 0.0
            for i in range(P):
                den = lam[i] + mu
                q += gh[i] * gh[i] / (den * den * den)
            mu = mu + (pn / radius - 1.0) * pn2 / max(q, 1e-300)
            for i in range(P):
                p[i] = -gh[i] / (lam[i] + mu)
        pn = math.sqrt(np.sum(p * p))
        if pn < radius * (1 - 1e-6):  # hard case: to the boundary along the lowest eigenvector
            for i in range(P):
                den = lam[i] + lo
                p[i] = -gh[i] / den if den > 1e-12 * scale else 0.0
            p[0] += math.sqrt(max(radius * radius - np.sum(p * p), 0.0))
            pn = math.sqrt(np.sum(p * p))
        if pn > radius:
            p *= radius / max(pn, 1e-300)
    dec = 0.0
    for i in range(P):
        dec += gh[i] * p[i] + 0.5 * lam[i] * p[i] * p[i]
    return p, -dec


#: the compiled fit of each kernel (one per layout and process)
_LOOPS: dict[int, Any] = {}


def _loop(kern: Any) -> Any:
    """The compiled one-replicate fit around the kernel ``kern`` (built once per kernel: the kernel
    is a constant of the compiled code, called directly)."""
    if id(kern) in _LOOPS:
        return _LOOPS[id(kern)]

    @_jit
    def evaluate(rows, phi, bound, xi, y, mask, c, invn, gx, ex, k, F, grad_index, hess_flat, kv, n_entries):
        """Loss, gradient and Hessian of replicate ``rows[0]`` at ``phi`` (free parameters; theta =
        bound tanh(phi / bound) when bound > 0): the kernel, its gathers and the box's chain rule."""
        P = phi.shape[0]
        ext = np.zeros(P + 1)  # theta and a zero for the unused entries of G, E
        for p in range(P):
            ext[p] = bound * math.tanh(phi[p] / bound) if bound > 0.0 else phi[p]
        G, E = np.empty((1, k, F)), np.empty((1, k, F))
        for i in range(k):
            for j in range(F):
                G[0, i, j] = ext[gx[i * F + j]]
                E[0, i, j] = ext[ex[i * F + j]]
        loss, grad, M = np.empty(1), np.empty((1, kv * F)), np.empty((1, n_entries))
        kern(rows, xi, y, mask, G, E, c, invn, True, loss, grad, M)
        g, H = np.empty(P), np.empty((P, P))
        for p in range(P):
            g[p] = grad[0, grad_index[p]]
            for q in range(P):
                H[p, q] = M[0, hess_flat[p * P + q]]
        if bound > 0.0:  # chain rule: s = d theta / d phi, ds = d s / d phi
            s, ds = np.empty(P), np.empty(P)
            for p in range(P):
                t = ext[p] / bound
                s[p] = 1.0 - t * t
                ds[p] = -2.0 * ext[p] / (bound * bound) * s[p]
            for p in range(P):
                for q in range(P):
                    H[p, q] = s[p] * H[p, q] * s[q]
                H[p, p] += g[p] * ds[p]
                g[p] = g[p] * s[p]
        return loss[0], g, H

    @_jit
    def fit_one(r, x0, bound, xi, y, mask, c, invn, gx, ex, k, F, grad_index, hess_flat, kv, n_entries,
                 max_iter, gtol, dtol, curvature_tol, radius, max_radius, eta, scaled, W, straightness, stiff_tol):
        """One replicate's trust-region fit from ``x0``; returns (x, f, g, reason, n_iter, tries,
        jumps, min_eig, decrement)."""
        P = x0.shape[0]
        rows = np.array([r])
        args = (bound, xi, y, mask, c, invn, gx, ex, k, F, grad_index, hess_flat, kv, n_entries)
        x = x0.copy()
        f, g, H = evaluate(rows, x, *args)
        D = _scaling(H, np.ones(P), scaled, True)
        lam, Q, gh = _eig(H, D, g)
        reason, active = _MAX_ITER, True
        delta, n_iter, tries, jumps, count, factor = radius, 0, 0, 0, 0, 1.0
        ring, lengths = np.zeros((max(W, 1), P)), np.zeros(max(W, 1))

        def check(f, g, lam, gh, reason):  # the stopping tests at the current iterate
            dec, floor = _decrement(lam, gh, curvature_tol)
            by_dec = lam[0] >= -floor and dec <= dtol * abs(f)
            by_grad = np.max(np.abs(g)) <= gtol
            bad = not (math.isfinite(f) and math.isfinite(lam[0]))
            if by_dec:
                reason = _DECREMENT
            if by_grad:
                reason = _GRADIENT
            if bad:
                reason = _NONFINITE
            return reason, not (by_grad or by_dec or bad)

        reason, active = check(f, g, lam, gh, reason)
        for it in range(max_iter):
            if not active:
                break
            new = False
            if W > 0 and it >= W and count >= W:
                oldest = ring[count % W]
                chord = math.sqrt(np.sum((x - oldest) ** 2))
                if chord >= straightness * np.sum(lengths) and chord > 0:
                    yv = x + factor * (x - oldest)  # the path continued
                    _, g_y, H_y = evaluate(rows, yv, *args)
                    D_y = _scaling(H_y, D, scaled, False)
                    lam_y, Q_y, gh_y = _eig(H_y, D_y, g_y)
                    stiff = stiff_tol * _absmax(lam_y)
                    p_y = np.zeros(P)
                    for i in range(P):
                        if lam_y[i] > stiff:
                            p_y[i] = -gh_y[i] / lam_y[i]
                    z = yv + _matvec(Q_y, p_y) / D_y
                    f_z, g_z, H_z = evaluate(rows, z, *args)
                    n_iter += 1
                    tries += 1
                    if math.isfinite(f_z) and f_z < f:
                        jumps += 1
                        new, trial, f_t, g_t, H_t = True, z, f_z, g_z, H_z
                    else:
                        factor *= 0.5
                        if factor < 0.125:
                            count, factor = 0, 1.0
                    if not new:
                        continue
            if not new:
                p_hat, pred = _subproblem(lam, gh, delta)
                trial = x + _matvec(Q, p_hat) / D
                pn = math.sqrt(np.sum(p_hat * p_hat))
                boundary = pn >= 0.99 * delta
                f_t, g_t, H_t = evaluate(rows, trial, *args)
                n_iter += 1
                rho = (f - f_t) / max(pred, 1e-300)
                ok = math.isfinite(f_t) and rho > eta and pred > 0
                d_new = 0.25 * pn if (not ok or rho < 0.25) else delta
                if ok and rho > 0.75 and boundary:
                    d_new = min(2.0 * d_new, max_radius)
                delta = d_new
                if d_new < 1e-14 * (1.0 + math.sqrt(np.sum(x * x))):
                    reason, active = _STALLED, False
                new = ok
            if new:  # accept: record the step in the window, move, refresh, test
                if W > 0:
                    slot = count % W
                    lengths[slot] = math.sqrt(np.sum((trial - x) ** 2))
                    ring[slot] = x
                    count += 1
                x, f, g, H = trial, f_t, g_t, H_t
                D = _scaling(H, D, scaled, False)
                lam, Q, gh = _eig(H, D, g)
                reason, active = check(f, g, lam, gh, reason)
        dec, _ = _decrement(lam, gh, curvature_tol)
        return x, f, g, reason, n_iter, tries, jumps, lam[0], dec

    _LOOPS[id(kern)] = fit_one
    return fit_one


def fit_rows(objective: Any, x0: Tensor, bound: float | None, *, max_iter: int, gtol: float, dtol: float,
             curvature_tol: float = 1e-6, radius: float = 1.0, max_radius: float = 1e3, eta: float = 1e-4,
             scaled: bool = True, extrapolate: int = 10, straightness: float = 0.9, stiff_tol: float = 1e-3,
             speculate: bool = True, speculate_share: float = 0.0) -> OptimResult:
    """Every replicate's trust-region fit, one after another, by the compiled loop of the
    objective's kernel (:func:`_loop`; defaults: ``trust_region``'s).

    Args:
        objective: a :class:`LeastSquaresObjective` with ``assembly="numba"`` (its kernel, data
            and gathers).
        x0: ``(R, P)`` starting free parameters (phi when ``bound`` is given).
        bound: the box B of ``fit_least_squares`` or None.
        max_iter, gtol, dtol, ...: as :func:`~attnmoe.estimation.solvers.newton.trust_region`
            (``speculate`` / ``speculate_share`` are accepted and change nothing here).
    """
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (R, P), got {tuple(x0.shape)}")
    nb = objective.numba
    W = int(extrapolate)
    if W < 0:
        raise ValueError(f"extrapolate must be >= 0, got {extrapolate!r}")
    R, P = x0.shape
    x0n = x0.detach().to(torch.float64).contiguous().numpy()
    gx = objective._gx_flat.numpy().astype(np.int64)
    ex = objective._ex_flat.numpy().astype(np.int64)
    k, F = objective.gx_index.shape
    fixed = (0.0 if bound is None else float(bound), nb.xi, nb.y, nb.mask, 2.0 / objective.n, 1.0 / objective.n,
             gx, ex, int(k), int(F), nb._g_flat, nb._h_flat, int(nb.kv), int(nb.n_entries), int(max_iter),
             float(gtol), float(dtol), float(curvature_tol), float(radius), float(max_radius), float(eta),
             bool(scaled), W, float(straightness), float(stiff_tol))
    fit_one = _loop(nb.kernel)
    x, f, gmax = np.empty((R, P)), np.empty(R), np.empty(R)
    reason, n_iter, tries, jumps = (np.empty(R, dtype=np.int64) for _ in range(4))
    min_eig, dec = np.empty(R), np.empty(R)
    for r in range(R):
        out = fit_one(r, x0n[r], *fixed)
        x[r], f[r], gmax[r] = out[0], out[1], np.max(np.abs(out[2]))
        reason[r], n_iter[r], tries[r], jumps[r], min_eig[r], dec[r] = out[3:]
    t = {name: torch.from_numpy(a) for name, a in
         (("x", x), ("f", f), ("gmax", gmax), ("reason", reason), ("n_iter", n_iter), ("tries", tries),
          ("jumps", jumps), ("min_eig", min_eig), ("dec", dec))}
    converged = (t["reason"] == _GRADIENT) | (t["reason"] == _DECREMENT)
    return OptimResult(t["x"], t["f"], t["gmax"], converged, t["n_iter"], t["n_iter"] + t["tries"] + 1,
                       reason=t["reason"], min_eig=t["min_eig"], decrement=t["dec"],
                       extra={"extrapolations": t["tries"], "jumps": t["jumps"]})
