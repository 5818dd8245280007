"""The fit options of a least-squares study cell.

:class:`FitOptions` is what :func:`attnmoe.estimation.families.least_squares.experiment.fit_and_score` takes and what
``study.json`` records; presets of ``attnmoe rates`` are instances of it. Its defaults are the
``"least_squares"`` entry of the one table of every family's fit defaults,
:data:`attnmoe.estimation.families.options.FIT_DEFAULTS` (which says why they differ from the
other families'); this class adds the checks and the JSON form.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from attnmoe.estimation.families.common import check_perturb
from attnmoe.estimation.families.options import FIT_DEFAULTS

__all__ = ["ASSEMBLIES", "DEVICES", "METHODS", "FitOptions"]

#: optimisers understood by :func:`attnmoe.estimation.families.least_squares.fit.fit_least_squares`
METHODS: tuple[str, ...] = ("trust-region", "lbfgs", "adam")

#: where a batched least-squares fit can run
DEVICES: tuple[str, ...] = ("cpu", "cuda")

#: how the trust region assembles loss, gradient and Hessian (LeastSquaresObjective's ``assembly``)
ASSEMBLIES: tuple[str, ...] = ("torch", "numba")

_DEFAULT = FIT_DEFAULTS["least_squares"]

#: fields added after studies were committed: written to study.json only when not at their
#: default, so every study written before them keeps its options and hash
_RECORDED_WHEN_SET: tuple[str, ...] = ("device", "perturb", "assembly")


@dataclass(frozen=True)
class FitOptions:
    """Options of one batched fit-and-score call (see ``docs/rates.md``, "Choices"); defaults:
    ``FIT_DEFAULTS["least_squares"]``.

    Args:
        method: solver (:data:`METHODS`); ``"trust-region"`` is Newton with the exact Hessian.
        max_iter: iteration cap per fit.
        tol: converged when max |gradient| <= tol (0: off).
        dtol: trust-region: converged when the Newton decrement is <= dtol * L / n (L, the
            training loss, estimates sigma^2 at a good fit, so the tolerance scales with the
            noise: the fit is within dtol noise variances per sample of its local minimum).
        n_test: size of the held-out sample on which the L2 error of f is estimated.
        init: the start (:func:`~attnmoe.estimation.families.least_squares.init.parse_init`): ``near-truth:SCALE``
            (truth + SCALE N(0, 1), n-independent), ``displaced:DELTA`` (split copies moved
            +-DELTA along their flat direction), ``displaced-gate:DELTA``, ``group`` (the
            research group's n-shrinking start, for comparison) or ``random``; several kinds
            joined by ``+`` give each replicate ``starts`` starts of every kind.
        starts: starts per replicate and kind; the record reports the best-loss fit and the near-best
            width over the converged fits within ``near_best * sigma^2 / n`` of it.
        near_best: the c of that window.
        bound: if set, every free parameter is fitted inside [-bound, bound] (the compact
            parameter space of the theory); None: unbounded.
        device: where the batched fit runs: ``"cpu"`` or ``"cuda"`` (float64 on a GPU; data,
            starts and scores stay on the CPU, so a record is the CPU's up to the rounding of
            the fit; ``benchmarks/gpu_rates.sh`` measures how far). Recorded in ``study.json``
            only when not ``"cpu"`` (studies written before it existed ran on the CPU).
        perturb: every start moved by this relative amount at rounding level
            (:func:`~attnmoe.estimation.families.common.perturb_starts`); recorded only when not 0.
        assembly: how the trust region assembles loss, gradient and Hessian (:data:`ASSEMBLIES`):
            ``"torch"`` or ``"numba"``, the opt-in generated kernel
            (:mod:`~attnmoe.estimation.families.least_squares.numba_assembly`: trust-region, CPU,
            softmax gates with a closed form, linear/sigmoid experts; same fits to rounding), with
            the iteration compiled per replicate around it (``numba_loop``).
            Recorded only when not ``"torch"`` (studies written before it existed used torch).
    """

    method: str = _DEFAULT["method"]
    max_iter: int = _DEFAULT["max_iter"]
    tol: float = _DEFAULT["tol"]
    dtol: float = _DEFAULT["dtol"]
    n_test: int = _DEFAULT["n_test"]
    init: str = _DEFAULT["init"]
    starts: int = _DEFAULT["starts"]
    near_best: float = _DEFAULT["near_best"]
    bound: float | None = _DEFAULT["bound"]
    device: str = _DEFAULT["device"]
    perturb: float = _DEFAULT["perturb"]
    assembly: str = _DEFAULT["assembly"]

    def __post_init__(self) -> None:
        from attnmoe.estimation.families.least_squares.init import parse_inits

        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {list(METHODS)}")
        for name in ("max_iter", "n_test", "starts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("tol", "dtol", "near_best"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.bound is not None and not (
            isinstance(self.bound, (int, float)) and math.isfinite(self.bound) and self.bound > 0
        ):
            raise ValueError(f"bound must be a finite number > 0 or None, got {self.bound!r}")
        check_perturb(self.perturb, "perturb")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; valid: {list(DEVICES)}")
        if self.assembly not in ASSEMBLIES:
            raise ValueError(f"unknown assembly {self.assembly!r}; valid: {list(ASSEMBLIES)}")
        if self.assembly == "numba" and (self.method != "trust-region" or self.device != "cpu"):
            raise ValueError(f"assembly 'numba' needs method 'trust-region' on the cpu, got method "
                             f"{self.method!r} on {self.device!r}")
        canonical = "+".join(str(sp) for sp in parse_inits(self.init))
        object.__setattr__(self, "init", canonical)  # canonical spelling

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what ``study.json`` records; ``device`` only when not the CPU,
        ``perturb`` only when not 0, ``assembly`` only when not torch: studies written before they
        existed have none of them; with ``assembly="numba"`` also ``assembly_version``, the numba
        path's :data:`~attnmoe.estimation.families.least_squares.numba_assembly.ASSEMBLY_VERSION`)."""
        out = asdict(self)
        for name in _RECORDED_WHEN_SET:
            if out[name] == _DEFAULT[name]:
                del out[name]
        if self.assembly == "numba":  # its arithmetic's version: a resume never mixes two
            from attnmoe.estimation.families.least_squares.numba_assembly import ASSEMBLY_VERSION

            out["assembly_version"] = ASSEMBLY_VERSION
        return out
