"""The fit options of a study cell: ONE table of defaults.

:class:`FitOptions` is what :func:`attnmoe.estimation.experiment.fit_and_score` takes and what
``study.json`` records; presets of ``attnmoe rates`` are instances of it. Nothing else in the
package defines a default for these fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FitOptions", "METHODS"]

#: optimisers understood by :func:`attnmoe.estimation.fit.fit_least_squares`
METHODS: tuple[str, ...] = ("lbfgs", "adam")


@dataclass(frozen=True)
class FitOptions:
    """Options of one batched fit-and-score call (see ``docs/rates.md``, "Choices").

    Args:
        method: optimiser (:data:`METHODS`).
        max_iter: iteration cap per fit.
        tol: max-abs gradient tolerance of the optimiser.
        n_test: size of the held-out sample on which the L2 error of f is estimated.
        init: ``"near-truth"`` (true atoms + ``init_scale`` N(0, 1), split when k > k*) or
            ``"random"`` (``n_init`` data-driven restarts, best training loss kept).
        init_scale: scale of the near-truth perturbation.
        n_init: restarts of the random initialisation.
        bound: if set, every free parameter is fitted inside [-bound, bound] (the compact
            parameter space of the theory); None: unbounded.
    """

    method: str = "lbfgs"
    max_iter: int = 1000
    tol: float = 1e-9
    n_test: int = 20_000
    init: str = "near-truth"
    init_scale: float = 0.1
    n_init: int = 4
    bound: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {list(METHODS)}")
        for name in ("max_iter", "n_test", "n_init"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("tol", "init_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.bound is not None and not (
            isinstance(self.bound, (int, float)) and math.isfinite(self.bound) and self.bound > 0
        ):
            raise ValueError(f"bound must be a finite number > 0 or None, got {self.bound!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what ``study.json`` records)."""
        return asdict(self)
