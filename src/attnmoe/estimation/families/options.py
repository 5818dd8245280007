"""ONE table of the fit defaults of every family: :data:`FIT_DEFAULTS` (family -> field -> value).

Every options object of a study takes its defaults from here and from nowhere else:
:class:`~attnmoe.estimation.families.least_squares.options.FitOptions` (least squares; a preset of
``attnmoe rates`` overrides some fields),
:data:`~attnmoe.estimation.families.likelihood.experiment.FIT_OPTIONS` (likelihood: this entry
plus the family's start kinds) and
:class:`~attnmoe.estimation.families.hmoe.truth.HMoEConfig` (hmoe); so do the keyword defaults of
the families' fit functions (``fit_least_squares``, ``fit_likelihood``); the scikit-learn
estimators (:mod:`attnmoe.estimation.sklearn`) keep their own literal defaults in their
signatures, as scikit-learn's convention asks, and no study reads them. A study records these
values as ``"fit"`` in ``study.json`` and hashes them into every record's ``options_hash``, so
each value is part of the identity of the committed studies (``docs/rates/*/study.json``):
change one and resuming them is refused (``tests/test_fit_options.py`` recomputes every
committed study's options and hash from the presets).

All three families fit by trust-region Newton with the exact Hessian; why their defaults differ:

* ``dtol`` is in each family's own units. Least squares and hmoe stop when the Newton decrement
  is <= dtol * L / n, and L estimates sigma^2, so 1e-8 means within 1e-8 noise variances per
  sample of the local minimum; a looser 1e-4 would have stopped traced over-specified fits on
  plateaus 5.3 and 4.7 sigma^2 / n above their final losses, wider than the near-best window
  (``docs/estimation.md``, "The criterion is not the problem"). An NLL has no noise variance to
  scale with and crosses zero, so the likelihood's test is absolute: decrement <= dtol / n in
  mean-NLL units, and 1e-3 is a thousandth of the 1/n scale of the NLL's sampling noise
  (``docs/likelihood.md``, "Solver").
* ``near_best`` is c = 1 everywhere, in the same units: converged starts within sigma^2 / n of the
  best training loss (``docs/rates.md``, "near-best set"; ``docs/hmoe.md``) or within 1/n of the
  best mean NLL, a log-likelihood within 1 (the MLE's excess NLL is chi^2_P / (2n):
  ``docs/likelihood.md``, "Results at quick size").
* ``max_iter``: 500 (least squares, hmoe) against 200 (likelihood). No document gives a reason
  for either number. The least-squares presets set their own caps (150 to 5000), since
  over-specified fits take hundreds to thousands of iterations (``docs/estimation.md``);
  ``docs/likelihood.md`` counts the fits stopped at the 200 cap and shows that it does not move
  the multinomial-logistic slopes.
* ``n_test``, the test sample of the L2 error: 20 000 (least squares; presets 4000 or 20 000)
  against 4000 (hmoe); no document gives a reason for either. The likelihood has none: its
  density errors are computed on fixed grids (:mod:`~attnmoe.estimation.families.likelihood.voronoi`).
* Fields only one family has: least squares chooses its solver, start (``init``, ``starts``),
  box (``bound``; unbounded by default, the ``paper`` preset uses 10: ``docs/rates.md``,
  "parameter box") and device; hmoe records its noise (``sigma``), its two start recipes'
  scales (``near_truth``, ``displaced``: ``docs/hmoe.md``, "Fits") and ``block``, the seeds
  per batched call (no document gives a reason for 8); the likelihood's starts are its start
  kinds (``likelihood.settings.START_KINDS``), not a number. ``perturb`` (0: off) moves every
  start at rounding level (:func:`~attnmoe.estimation.families.common.perturb_starts`) and is
  recorded only when not 0. Least squares' ``assembly`` ("torch"; "numba" is the opt-in generated
  kernel of :mod:`~attnmoe.estimation.families.least_squares.numba_assembly`) is recorded only
  when not "torch", so the committed studies keep their options and hashes.

Fields are in the order the options objects declare them (the order of ``asdict``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["FIT_DEFAULTS", "defaults"]

#: family (the package under :mod:`attnmoe.estimation.families`) -> fit field -> default (read-only)
FIT_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "least_squares": MappingProxyType({
        "method": "trust-region", "max_iter": 500, "tol": 0.0, "dtol": 1e-8, "n_test": 20_000,
        "init": "near-truth:0.1", "starts": 1, "near_best": 1.0, "bound": None, "device": "cpu",
        "perturb": 0.0, "assembly": "torch",
    }),
    "likelihood": MappingProxyType({
        "method": "trust-region", "max_iter": 200, "dtol": 1e-3, "near_best": 1.0,
    }),
    "hmoe": MappingProxyType({
        "sigma": 0.1, "near_truth": 0.1, "displaced": 0.3, "max_iter": 500, "dtol": 1e-8,
        "near_best": 1.0, "n_test": 4000, "block": 8, "perturb": 0.0,
    }),
})


def defaults(family: str) -> dict[str, Any]:
    """A copy of ``family``'s defaults (a one-line error naming the families otherwise)."""
    if family not in FIT_DEFAULTS:
        raise ValueError(f"unknown family {family!r}; choose among {', '.join(FIT_DEFAULTS)}")
    return dict(FIT_DEFAULTS[family])
