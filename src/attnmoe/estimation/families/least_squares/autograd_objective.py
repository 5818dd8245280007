"""The least-squares objective by automatic differentiation, for gates without a closed form.

Same criterion as :mod:`attnmoe.estimation.families.least_squares.objective` (arXiv 2410.11222),

    L_r(theta) = (1/n) sum_j (f(x_rj; theta) - y_rj)^2,

for a gate whose logits are not linear in its parameters over fixed features (the cosine
routers of arXiv 2405.14131, ``Gate.closed_form = False``). The loss of ONE replicate is a
function of its ``(P,)`` parameters, its padded inputs and responses; ``torch.func.grad`` and
``jacfwd`` of it are vmapped over replicates, so a batch of R fits is still one tensor program
(no Python loop over replicates); the Hessian is reverse-over-reverse autograd through that
batched loss (:func:`~attnmoe.estimation.solvers.derivatives.batched_hessian`; 1.0-1.8x faster per
call than the former vmapped ``torch.func.hessian`` on the cosine routers, 1.5x per fit, equal
to 2e-15; study version 2). The sample axis is padded to a multiple of
:data:`~attnmoe.estimation.families.common.PAD` with zero-weight points exactly as the closed form
does, so a replicate's rows have the same layout wherever it sits in the batch (tested: its
loss, gradient and Hessian alone and in a batch agree).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnmoe.estimation.solvers.derivatives import batched_hessian
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.moe import ParameterLayout

__all__ = ["AutogradLeastSquaresObjective"]


class AutogradLeastSquaresObjective(LeastSquaresObjective):
    """:class:`LeastSquaresObjective` with value, gradient, Jacobian and Hessian from torch.func.

    Args:
        layout: parametrisation of the fitted model (any gate).
        X: inputs ``(R, n, d)``.
        y: responses ``(R, n)``.
    """

    def __init__(self, layout: ParameterLayout, X: Tensor, y: Tensor) -> None:
        self._set_data(layout, X, y)  # checks, and pads the sample axis as the closed form does
        R, n, d = X.shape
        self.X = torch.cat([X, X.new_zeros(R, self.y.shape[1] - n, d)], 1)  # (R, n_pad, d)
        vmap = torch.func.vmap
        self._value = vmap(self._loss_one)
        self._grad = vmap(torch.func.grad_and_value(self._loss_one))
        self._jac = vmap(torch.func.jacfwd(self._f_one))

    def _f_one(self, theta: Tensor, x: Tensor) -> Tensor:
        """f at one replicate's padded inputs ``(n_pad,)`` for its parameters ``(P,)``."""
        return self.layout.forward(theta.unsqueeze(0), x.unsqueeze(0))[0]

    def _loss_one(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return ((self._f_one(theta, x) - y) * self.mask).square().sum() / self.n

    def _data(self, flat: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        if flat.ndim != 2 or flat.shape[1] != self.layout.n_params:
            raise ValueError(f"flat must be (m, {self.layout.n_params}), got {tuple(flat.shape)}")
        return (self.X, self.y) if idx is None else (self.X[idx], self.y[idx])

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Losses ``(m,)``."""
        return self._value(flat, *self._data(flat, idx))

    def value_and_grad(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Losses ``(m,)`` and gradients ``(m, P)``."""
        grad, value = self._grad(flat, *self._data(flat, idx))
        return value, grad

    def jacobian(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """df(x_j)/dtheta ``(m, n, P)``."""
        X, _ = self._data(flat, idx)
        return self._jac(flat, X)[:, : self.n]

    def hessian(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Losses ``(m,)``, gradients ``(m, P)`` and Hessians ``(m, P, P)``."""
        X, y = self._data(flat, idx)
        return batched_hessian(lambda z: self._value(z, X, y), flat)
