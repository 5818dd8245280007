"""The hmoe family's objective: per-replicate mean squared error with autograd derivatives."""

from __future__ import annotations

from torch import Tensor

import torch

from attnmoe.estimation.families.common import padded
from attnmoe.estimation.solvers.derivatives import batched_hessian
from attnmoe.moe.hierarchical import HierarchicalLayout, hierarchical_forward, tokens_last

__all__ = ["HMoEObjective"]


class HMoEObjective:
    """Per-replicate mean squared error of the hierarchical family, with autograd derivatives.

    Callable as an :data:`~attnmoe.estimation.solvers.optim.Objective`; :meth:`hessian` gives
    ``(loss, grad, Hessian)`` by reverse-over-reverse autograd through the batched loss
    (:func:`~attnmoe.estimation.solvers.derivatives.batched_hessian`). The sample axis is padded to a multiple of PAD with
    zero-weight points (see :mod:`attnmoe.estimation.families.least_squares.objective`).

    Args:
        layout: the fitted family's layout.
        X: ``(R, n, T, d)``; y: ``(R, n)``.
    """

    def __init__(self, layout: HierarchicalLayout, X: Tensor, y: Tensor) -> None:
        R, n = y.shape
        # MKL's batched eigh (inside trust_region) rounds an odd-sized matrix differently by its
        # position in the batch; an even number of optimised coordinates avoids that: one dummy
        # coordinate z with loss term z^2 (exactly 0 at z = 0, where it starts and stays)
        self.n_free = layout.n_params
        self.n_params = self.n_free + self.n_free % 2
        if X.shape[:2] != (R, n):
            raise ValueError(f"X must be (R, n, T, d) with (R, n) = {tuple(y.shape)}, got {tuple(X.shape)}")
        self.layout, self.n = layout, n
        pad = padded(n) - n
        self.X = tokens_last(torch.cat([X, X.new_zeros(R, pad, *X.shape[2:])], 1))  # (R, T, d, n_pad)
        self.y = torch.cat([y, y.new_zeros(R, pad)], 1)  # (R, n_pad)
        self.mask = torch.cat([y.new_ones(n), y.new_zeros(pad)])  # (n_pad,)

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Losses ``(m,)`` for ``flat`` ``(m, n_params)`` (the model's free parameters, then the
        dummy coordinate when there is one)."""
        X, y = (self.X, self.y) if idx is None else (self.X[idx], self.y[idx])
        f = hierarchical_forward(self.layout.spec, self.layout.unpack(flat[:, : self.n_free]), X)
        dummy = flat[:, self.n_free :].square().sum(-1)
        return ((f - y) * self.mask).square().sum(-1) / self.n + dummy

    def extend(self, free: Tensor) -> Tensor:
        """``(m, P)`` model parameters -> ``(m, n_params)`` optimised coordinates (dummy = 0)."""
        return torch.cat([free, free.new_zeros(free.shape[0], self.n_params - self.n_free)], 1)

    def hessian(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        return batched_hessian(lambda z: self(z, idx), flat)
