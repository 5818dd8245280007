"""The trust-region fit as it was before the speculation / setup / overhead work, next to today's.

Loads ``solvers/newton.py`` and ``least_squares/objective.py`` of a git commit (default
:data:`BASE`, the last commit before that work) as private modules and runs
:func:`~attnmoe.estimation.families.least_squares.fit.fit_least_squares` with them patched in
(:func:`fit_path`), so the same call can run the original code and today's, interleaved, in one
process. Used by ``spec_equivalence.py`` (bitwise comparison) and ``bench_speculate.py`` (timing).

Paths (``kind``):

* ``"original"``: newton.py and objective.py of ``ref``;
* ``"plain"``: today's code with ``speculate=False`` (the solver's original evaluation order);
* ``"speculate"``: today's code as ``fit_least_squares`` runs it (``speculate=True``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from attnmoe.estimation.families.least_squares import fit as fit_module
from attnmoe.estimation.solvers import newton

#: the branch point of the speculation work (main before it)
BASE = "8144ea8"

KINDS = ("original", "plain", "speculate")

_FILES = {"newton": "src/attnmoe/estimation/solvers/newton.py",
          "objective": "src/attnmoe/estimation/families/least_squares/objective.py"}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_original(ref: str = BASE) -> dict[str, types.ModuleType]:
    """newton.py and objective.py of commit ``ref`` as modules ``{"newton": ..., "objective": ...}``."""
    mods = {}
    for name, path in _FILES.items():
        src = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=_ROOT, capture_output=True, text=True,
                             check=True).stdout
        mod = types.ModuleType(f"_original_{name}_{ref}")
        mod.__file__ = f"{ref}:{path}"
        sys.modules[mod.__name__] = mod
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102
        mods[name] = mod
    return mods


@dataclass
class Record:
    """What the solver returned (``OptimResult``s, one per fit_least_squares call) and how many
    rows each derivative function evaluated (Hessian and loss-only rows)."""

    results: list = field(default_factory=list)
    hessian_rows: int = 0
    loss_rows: int = 0


@contextmanager
def fit_path(kind: str, original: dict[str, types.ModuleType] | None = None,
             count: bool = False) -> Iterator[Record]:
    """Within the block, ``fit_least_squares`` runs path ``kind`` (module docstring) and the
    yielded :class:`Record` collects the solver's results (with ``count``, also the rows each of
    the solver's two functions evaluated; the wrappers cost a Python call each)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rec = Record()
    solver = original["newton"].trust_region if kind == "original" else newton.trust_region

    def run(hessian, objective, x0, speculate: bool = True, **kw):
        if count:
            h, o = hessian, objective

            def hessian(x, idx):
                rec.hessian_rows += x.shape[0]
                return h(x, idx)

            def objective(x, idx):
                rec.loss_rows += x.shape[0]
                return o(x, idx)

        if kind != "original":
            kw["speculate"] = kind == "speculate" and speculate
        res = solver(hessian, objective, x0, **kw)
        rec.results.append(res)
        return res

    saved = {"trust_region": fit_module.trust_region, "LeastSquaresObjective": fit_module.LeastSquaresObjective}
    fit_module.trust_region = run
    if kind == "original":
        fit_module.LeastSquaresObjective = original["objective"].LeastSquaresObjective
    try:
        yield rec
    finally:
        for name, value in saved.items():
            setattr(fit_module, name, value)
