"""Batched solvers: R independent problems as ONE tensor program (no family, no file, no CLI).

* :mod:`.base` -- the solvers' shared types (``Objective``, ``OptimResult``, stop reasons);
* :mod:`.newton` -- trust-region Newton with the exact Hessian;
* :mod:`.optim` -- L-BFGS and Adam (and ``trust_region`` re-exported);
* :mod:`.derivatives` -- batched autograd Hessians of a batched scalar function.
"""

from attnmoe.estimation.solvers.base import REASONS, Objective, OptimResult, value_and_grad
from attnmoe.estimation.solvers.derivatives import batched_hessian
from attnmoe.estimation.solvers.optim import adam, lbfgs, trust_region

__all__ = ["REASONS", "Objective", "OptimResult", "adam", "batched_hessian", "lbfgs", "trust_region",
           "value_and_grad"]
