"""ONE table of study presets, every family's (``attnmoe rates --preset NAME``).

A preset is a name, a description, the options of its own that it takes beyond the run options
of :class:`~attnmoe.estimation.study.engine.StudyArgs`, and a function from those to a
:class:`~attnmoe.estimation.study.engine.StudyPlan`; :func:`run_preset` runs the plan through
the one loop (:func:`~attnmoe.estimation.study.engine.run_plan`). A family's presets are
registered by its preset module when imported: a new paper is a new module that calls
:func:`register_preset`, plus one line in :data:`_PLUGINS`, so that the table finds it without
the CLI importing every family.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from attnmoe.estimation.study.engine import StudyArgs, StudyPlan, StudyResult, run_plan

__all__ = ["PRESETS", "StudyPreset", "option_flag", "preset_table", "register_preset", "run_preset"]


@dataclass(frozen=True)
class StudyPreset:
    """A named study.

    Args:
        name: what ``--preset`` takes.
        description: one line for ``attnmoe rates --help``.
        plan: ``StudyArgs -> StudyPlan`` (raises ``ValueError`` on bad input, before anything is
            written).
        options: names of the preset's own options (``StudyArgs.options`` keys, the CLI's
            ``--NAME`` with ``-`` for ``_``); any other is refused before ``plan`` is called.
    """

    name: str
    description: str
    plan: Callable[[StudyArgs], StudyPlan]
    options: tuple[str, ...] = ()


#: every registered preset, by name (filled by :func:`preset_table`)
PRESETS: dict[str, StudyPreset] = {}

#: modules that register presets when imported (one line per family)
_PLUGINS: tuple[str, ...] = (
    "attnmoe.estimation.study.presets.least_squares",
    "attnmoe.estimation.study.presets.likelihood",
    "attnmoe.estimation.study.presets.hmoe",
)


def register_preset(preset: StudyPreset) -> StudyPreset:
    """Add ``preset`` to :data:`PRESETS` (a name may be registered once)."""
    if preset.name in PRESETS and PRESETS[preset.name] is not preset:
        raise ValueError(f"study preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def preset_table() -> dict[str, StudyPreset]:
    """Every registered preset (imports the modules of :data:`_PLUGINS` first)."""
    for module in _PLUGINS:
        importlib.import_module(module)
    return PRESETS


def option_flag(name: str) -> str:
    """The command-line spelling of a preset option: ``max_iter`` -> ``--max-iter``."""
    return "--" + name.replace("_", "-")


def run_preset(name: str, args: StudyArgs) -> StudyResult:
    """Run (or resume, or with ``summary_only`` re-summarise) the preset ``name``.

    Raises:
        ValueError: an unknown preset, an option it does not take, any invalid input (one line,
            before anything is written).
    """
    table = preset_table()
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    preset = table[name]
    foreign = [option_flag(k) for k in args.options if k not in preset.options]
    if foreign:
        own = ", ".join(option_flag(k) for k in preset.options) or "none"
        raise ValueError(f"{', '.join(foreign)}: not an option of the preset {name!r} (it takes --out, --full, "
                         "--n-grid, --replicates, --seed, --workers, --threads, --backend, --device, --perturb, "
                         f"--summary-only, and of its own: {own})")
    args.check()  # before the plan builds any seed list
    return run_plan(args, preset.plan(args))
