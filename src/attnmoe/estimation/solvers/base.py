"""The interface the batched solvers share: the objective type, its gradient, the result.

:mod:`attnmoe.estimation.solvers.optim` (L-BFGS, Adam) and :mod:`attnmoe.estimation.solvers.newton`
(trust-region Newton) both take an :data:`Objective` over R replicates and return an
:class:`OptimResult`; :mod:`attnmoe.estimation.solvers.optim` re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["REASONS", "Objective", "OptimResult", "value_and_grad"]

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

