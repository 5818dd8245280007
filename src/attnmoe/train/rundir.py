"""The files of a run directory and the checks a resume makes before training continues.

A run directory (``attnmoe.train.loop.train_task``'s ``out_dir``) holds ``config.json`` (the
spec), ``log.jsonl``, ``metrics.json`` (a finished run), ``diverged.json`` (a diverged one) and
the checkpoints of :mod:`attnmoe.train.checkpoint`. This module names those files and reads
them back: the log, the metrics, the stored spec, and the newest checkpoint that verifies and
holds the same spec (a resume with another spec is refused, naming the fields).
:mod:`attnmoe.train.loop` re-exports its public names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from attnmoe.tasks.spec import RunSpec
from attnmoe.train.checkpoint import (
    CHECKPOINT_DIRS,
    CheckpointDamaged,
    checkpoint_candidates,
    read_state,
)
from attnmoe.utils import atomic_write_text

__all__ = [
    "CONFIG_FILE",
    "DIVERGED_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "RUN_FILES",
    "check_same_spec",
    "is_diverged",
    "is_finished",
    "read_json",
    "read_log",
    "read_metrics",
    "saved_spec",
]

METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
DIVERGED_FILE = "diverged.json"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, LOG_FILE, DIVERGED_FILE, *CHECKPOINT_DIRS)
"""Files whose presence means a directory holds a run (new runs never write over them)."""


def _log_records(path: Path, warn: bool = False) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``. A line that does not parse is dropped; with ``warn`` it is
    named on stderr (line number and start): the partial last line an interruption leaves, or a
    garbled line in the middle (whose record is then missing from the log)."""
    records = []
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif warn and line.strip():
            where = "the partial last line (an interrupted write)" if number == len(lines) else \
                f"garbled line {number} of {len(lines)}"
            _warn(f"{path}: dropped {where}: {line[:60]!r}")
    return records


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the log records up to ``last_step`` (those after the checkpoint an interrupted run
    left are dropped, and any line that does not parse is dropped and named on stderr)."""
    kept = [r for r in _log_records(path, warn=True) if r.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_json(path: Path, hint: str = "remove it or use another --out") -> Any:
    """A JSON file's content; ``ValueError`` naming the file (and ``hint``) when it does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as err:
        raise ValueError(f"{path} is damaged ({err}); {hint}") from None


def read_metrics(out_dir: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a finished run; ``None`` when absent or unreadable (a damaged file
    does not count as finished: the run is resumed from its checkpoint instead)."""
    try:
        metrics = json.loads((Path(out_dir) / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def saved_spec(out_dir: Path) -> RunSpec | None:
    """The spec ``out_dir/config.json`` records (``None`` without a config.json).

    Raises:
        ValueError: a damaged config.json, or one without a spec (written before specs were
            stored: it cannot be checked, so it is not resumed).
    """
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    config = read_json(path)
    if not isinstance(config, dict) or "spec" not in config:
        raise ValueError(f"{path} records no run spec (an older attnmoe wrote it), so a resume "
                         "cannot be checked; use another --out")
    return RunSpec.from_dict(config["spec"])


def check_same_spec(saved: RunSpec, spec: RunSpec, out_dir: Path) -> None:
    """Refuse to continue a run in ``out_dir`` with a spec other than the one it started with.

    Raises:
        ValueError: naming every differing field (``lr: 0.001 -> 0.5``).
    """
    diffs = saved.differences(spec)
    if diffs:
        raise ValueError(f"cannot resume {out_dir}: the run was started with another spec "
                         f"({'; '.join(diffs)}); use the run's options or another --out")


def _usable_checkpoint(out_dir: Path, spec: RunSpec) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose files verify, with its state; damaged ones are named on
    stderr and skipped. ``None`` when there is no checkpoint.

    Raises:
        ValueError: checkpoints exist but none is usable, or the usable one holds another spec.
    """
    found = checkpoint_candidates(out_dir)
    problems = []
    for path in found:
        try:
            state = read_state(path)
        except CheckpointDamaged as err:
            problems.append(str(err))
            _warn(f"{err}; trying the previous checkpoint")
            continue
        stored = state.get("extra", {}).get("spec")
        if stored is None:
            raise ValueError(f"{path} records no run spec (an older attnmoe wrote it); "
                             "use another --out")
        check_same_spec(RunSpec.from_dict(stored), spec, out_dir)
        return path, state
    if found:
        raise ValueError(f"no usable checkpoint in {out_dir}: {'; '.join(problems)}; remove "
                         f"{', '.join(p.name for p in found)} to start the run again")
    return None


def is_finished(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a completed run (a readable ``metrics.json``)."""
    return read_metrics(out_dir) is not None


def is_diverged(out_dir: Path) -> dict[str, Any] | None:
    """The ``diverged.json`` record of a run whose training loss became non-finite, else ``None``."""
    path = Path(out_dir) / DIVERGED_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return {"step": None, "loss": "unknown"}


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    """The records of ``out_dir/log.jsonl`` (a partial last line is skipped)."""
    return _log_records(Path(out_dir) / LOG_FILE)
