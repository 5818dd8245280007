"""Losses of likelihood-MoE fits: the top-K Voronoi loss, a Hellinger density error, and
plain parameter errors of the contaminated model.

Top-K Voronoi loss (arXiv 2309.13850; the exponent table of the group's public code). Masses
and gating atoms are normalised as in :mod:`attnmoe.estimation.families.least_squares.voronoi` (softmax is translation
invariant): pi_i = softmax(beta0)_i, beta1_i <- beta1_i - sum_l pi_l beta1_l. Atom
theta_i = (beta1_i, a_i, b_i, nu_i); cell V_j = fitted atoms nearest (Euclidean) to true atom j.

    D(G, G*) = sum_j | sum_{i in V_j} pi_i - pi*_j |
             + sum_{j: |V_j| = 1} sum_{i in V_j} pi_i (||dbeta1|| + ||da|| + |db| + |dnu|)
             + sum_{j: |V_j| > 1} sum_{i in V_j} pi_i (||dbeta1||^r + ||da||^{r/2} + |db|^r + |dnu|^{r/2}),
    r = r_bar(|V_j|),  r_bar = (0, 1, 4, 6)[|V_j|]   (cells of more than 3 atoms: the last entry).

With k = k* every cell is a singleton and D is the exact-specified loss D1.

Density error: the Hellinger distance between p_G(. | x) and p_G*(. | x), root-mean-square over
a fixed grid of x, each in closed form on a fixed grid of y (trapezoid rule): deterministic, so
its slope carries no Monte-Carlo noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from attnmoe.estimation.families.likelihood.model import GaussianMoE, log_gaussian, log_laplace

__all__ = ["R_BAR", "contaminated_errors", "hellinger", "topk_voronoi_loss"]

#: exponent r_bar indexed by the size of a Voronoi cell (2309.13850's over-specified loss)
R_BAR: tuple[float, ...] = (0.0, 1.0, 4.0, 6.0)


def _lead(v: Tensor, ndim: int, R: int) -> Tensor:
    v = torch.as_tensor(v, dtype=torch.float64)
    if v.ndim == ndim:
        v = v.unsqueeze(0)
    return v.expand(R, *v.shape[1:])


def topk_voronoi_loss(
    fitted: Mapping[str, Tensor], truth: Mapping[str, Tensor], r_bar: Sequence[float] = R_BAR
) -> dict[str, Tensor]:
    """Voronoi loss D ``(R,)`` (module docstring), plus ``mass`` and ``cells`` (largest cell size).

    Args:
        fitted: natural parameters with leading ``(R, k)`` (beta1 ``(R, k, d)``, beta0, a, b, nu).
        truth: natural parameters ``(k*, ...)`` or ``(R, k*, ...)``.
        r_bar: exponent table by cell size.
    """
    R = fitted["beta0"].shape[0]
    f = {k: _lead(fitted[k], n, R) for k, n in (("beta1", 2), ("beta0", 1), ("a", 2), ("b", 1), ("nu", 1))}
    t = {k: _lead(truth[k], n, R) for k, n in (("beta1", 2), ("beta0", 1), ("a", 2), ("b", 1), ("nu", 1))}

    def atoms(p: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        pi = torch.softmax(p["beta0"], -1)  # (R, k)
        beta1 = p["beta1"] - (pi.unsqueeze(-1) * p["beta1"]).sum(1, keepdim=True)
        parts = {"beta1": beta1, "a": p["a"], "b": p["b"].unsqueeze(-1), "nu": p["nu"].unsqueeze(-1)}
        return pi, parts

    pi, fa = atoms(f)
    pi_t, ta = atoms(t)
    k_true = pi_t.shape[1]
    dist = torch.cdist(torch.cat(list(fa.values()), -1), torch.cat(list(ta.values()), -1))  # (R, k, k*)
    cell = dist.argmin(-1)  # (R, k)
    onehot = torch.nn.functional.one_hot(cell, k_true).to(pi.dtype)  # (R, k, k*)
    mass = (torch.einsum("rk,rkj->rj", pi, onehot) - pi_t).abs().sum(-1)
    size = onehot.sum(1).gather(-1, cell)  # (R, k) size of each fitted atom's cell
    table = torch.tensor(list(r_bar), dtype=torch.float64)
    r = table[size.long().clamp(max=len(r_bar) - 1)]  # (R, k)
    single = size == 1
    total = mass.clone()
    for key, half in (("beta1", False), ("a", True), ("b", False), ("nu", True)):
        own = ta[key].gather(1, cell.unsqueeze(-1).expand(-1, -1, ta[key].shape[-1]))
        e = (fa[key] - own).norm(dim=-1)  # (R, k)
        expo = torch.where(single, 1.0, r / 2 if half else r)
        total = total + (pi * e.pow(expo)).sum(-1)
    return {"voronoi": total, "mass": mass, "cells": size.amax(-1)}


def hellinger(
    model: GaussianMoE, fitted: Mapping[str, Tensor], truth_model: GaussianMoE, truth: Mapping[str, Tensor],
    x_grid: Tensor, y_grid: Tensor, chunk: int = 32,
) -> Tensor:
    """RMS over ``x_grid`` ``(m, d)`` of the Hellinger distance in y (trapezoid on ``y_grid``) ``(R,)``.

    H^2(p, q) = 1 - int sqrt(p q) dy (clamped at 0); the grid must cover the mass of both.
    ``fitted`` has leading dim R, ``truth`` leading dim R or 1 (any gate of ``GaussianMoE``).
    """
    R = fitted["nu"].shape[0]
    dens = {"gaussian": log_gaussian, "laplace": log_laplace}
    tr = {k: torch.as_tensor(v, dtype=torch.float64).expand(R, *v.shape[1:]) for k, v in truth.items()}
    out = torch.zeros(R, dtype=torch.float64)
    yy = y_grid.view(1, 1, -1, 1)  # (1, 1, G, 1)
    for s in range(0, x_grid.shape[0], chunk):  # chunks of x bound memory (not a replicate loop)
        X = x_grid[s : s + chunk].unsqueeze(0).expand(R, -1, -1)  # (R, c, d)
        logs = []
        for mdl, p in ((model, fitted), (truth_model, tr)):
            w = mdl.weights(p, X).clamp_min(1e-300).log().unsqueeze(2)  # (R, c, 1, k)
            mean = mdl.means(p, X).unsqueeze(2)
            lognu = p["nu"].log().view(R, 1, 1, -1)
            logs.append(torch.logsumexp(w + dens[mdl.expert](yy, mean, lognu), -1))  # (R, c, G)
        bc = torch.trapezoid(torch.exp(0.5 * (logs[0] + logs[1])), y_grid, dim=-1)  # (R, c)
        out = out + (1.0 - bc).clamp_min(0.0).sum(-1)
    return (out / x_grid.shape[0]).sqrt()


def contaminated_errors(fitted: Mapping[str, Tensor], truth: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """||beta - beta*||, |e^tau - e^tau*|, ||eta - eta*||, |nu - nu*| ``(R,)`` each."""
    R = fitted["tau"].shape[0]
    t = {k: _lead(truth[k], 1 if k in ("beta", "eta") else 0, R) for k in ("beta", "tau", "eta", "nu")}
    return {
        "beta": (fitted["beta"] - t["beta"]).norm(dim=-1),
        "exp_tau": (fitted["tau"].exp() - t["tau"].exp()).abs(),
        "eta": (fitted["eta"] - t["eta"]).norm(dim=-1),
        "nu": (fitted["nu"] - t["nu"]).abs(),
    }
