"""Derivatives of a batch of independent losses by plain reverse-mode autograd.

A study fits m replicates at once: ``loss(x)`` maps ``x`` ``(m, P)`` to ``(m,)`` with row r
depending on ``x[r]`` only. Then, with ``S(x) = sum_r L_r(x_r)``,

    dS/dx_r = grad L_r(x_r)                           (one backward pass for all rows)
    d(sum_r [grad L_r]_j)/dx_r = [Hess L_r(x_r)]_{j,:}  (one more backward pass per j)

so the m Hessians cost P double-backward passes through the batched graph, whatever m is.
Against the ``torch.func`` Hessians vmapped over replicates that it replaced (equal to 1e-13),
per call: 3.4-7.5x less time on the ``hmoe`` objective, 1.0-1.8x on the cosine-router least
squares and the likelihoods; per whole fit 2.9x, 1.5x and 1.6-2.1x
(``benchmarks/bench_hessian.py``, ``benchmarks/e2e_fit_blocks.py``; docs/estimation.md). A row's numbers do not depend on the other
rows of the batch (each backward pass reduces over that row's own samples only; tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["batched_hessian"]


def batched_hessian(loss: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Loss ``(m,)``, gradient ``(m, P)`` and symmetrised Hessian ``(m, P, P)`` of m independent
    losses (row r of ``loss(x)`` must depend on ``x[r]`` only; module docstring)."""
    if x.ndim != 2:
        raise ValueError(f"x must be (m, P), got shape {tuple(x.shape)}")
    P = x.shape[1]
    z = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = loss(z)
        if f.shape != x.shape[:1]:
            raise ValueError(f"loss must return shape ({x.shape[0]},), got {tuple(f.shape)}")
        (g,) = torch.autograd.grad(f.sum(), z, create_graph=True)
        rows = []
        for j in range(P):
            (h,) = torch.autograd.grad(g[:, j].sum(), z, retain_graph=j < P - 1, allow_unused=True)
            rows.append(torch.zeros_like(z) if h is None else h)
    H = torch.stack(rows, 1)  # (m, P, P): row j of each replicate's Hessian
    return f.detach(), g.detach(), 0.5 * (H + H.transpose(1, 2))
