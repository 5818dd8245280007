"""Study presets of model families that are not the core least-squares grid of :mod:`.plan`.

A likelihood mixture (issue 12) or a hierarchical, attention-shaped mixture (issue 13) has its
own truths, fits and losses, so its study cannot be a list of :class:`~attnmoe.estimation.truth.Setting`.
Such a family registers a :class:`FamilyPreset` here, by name, and ``attnmoe rates --preset NAME``
runs it: a new paper is a new module that calls :func:`register_family_preset`, plus one line in
:data:`_PLUGINS` so that the registry finds it without the CLI importing every family.

Contract of ``FamilyPreset.run``: fit into ``args.out`` (resumable: records already there are
reused, a mismatched resume is refused), write every file atomically, and return a
:class:`FamilyResult` whose ``markdown`` is what the CLI prints.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FAMILY_PRESETS", "FamilyArgs", "FamilyPreset", "FamilyResult", "family_presets",
           "register_family_preset"]


@dataclass(frozen=True)
class FamilyArgs:
    """What ``attnmoe rates`` passes to a family preset.

    Args:
        out: output directory (created; resumable).
        full: the committed study's size instead of the quick one.
        replicates: replicate seeds per (setting, n); None = the preset's.
        n_grid: sample sizes; None = the preset's.
        seed: seed of the first replicate.
        workers: parallel worker processes; None = the preset's default.
        threads: torch threads per worker; None = the project default.
        progress: show progress bars.
    """

    out: Path
    full: bool = False
    replicates: int | None = None
    n_grid: tuple[int, ...] | None = None
    seed: int = 0
    workers: int | None = None
    threads: int | None = None
    progress: bool = True


@dataclass(frozen=True)
class FamilyResult:
    """Outcome of a family preset: counts, the printed summary and the files written."""

    fitted: int
    reused: int
    seconds: float
    markdown: str
    files: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class FamilyPreset:
    """A named study of one model family (``run`` implements it; see the module docstring)."""

    name: str
    description: str
    run: Callable[[FamilyArgs], FamilyResult]


FAMILY_PRESETS: dict[str, FamilyPreset] = {}

#: modules that register family presets when imported (one line per family)
_PLUGINS: tuple[str, ...] = (
    "attnmoe.estimation.likelihood.study",
    "attnmoe.estimation.hmoe",
)


def register_family_preset(preset: FamilyPreset) -> FamilyPreset:
    """Add ``preset`` to :data:`FAMILY_PRESETS` (a name may be registered once)."""
    if preset.name in FAMILY_PRESETS and FAMILY_PRESETS[preset.name] is not preset:
        raise ValueError(f"family preset {preset.name!r} is already registered")
    FAMILY_PRESETS[preset.name] = preset
    return preset


def family_presets() -> dict[str, FamilyPreset]:
    """Every registered family preset (imports the modules of :data:`_PLUGINS` first)."""
    for module in _PLUGINS:
        importlib.import_module(module)
    return FAMILY_PRESETS
