"""The files of a study directory: ``records.jsonl`` (read back, append), ``study.json``.

``records.jsonl`` holds one JSON record per fit. Reading it back never stops a study: a line
that is not a JSON object, lacks a required key, or whose ``n`` / ``seed`` is not an integer is
reported (``RuntimeWarning`` + :class:`BadLine`) and skipped, and the fit is redone. Records may
carry keys beyond :data:`REQUIRED_KEYS`; they are kept as they are.

``study.json`` records the fit options of the study. A resumed study must use the same options;
a ``study.json`` that cannot be read is refused, never replaced (replacing it would record new
options over fits made with unknown ones).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnmoe.estimation.families.common import Record, jsonable
from attnmoe.utils import atomic_write_text

__all__ = [
    "FIGURE_FILE",
    "RECORDS_FILE",
    "REQUIRED_KEYS",
    "STUDY_FILE",
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "BadLine",
    "RecordWriter",
    "atomic_write",
    "check_identity",
    "identity_of",
    "read_config",
    "stamp",
    "check_records_file",
    "jsonable",
    "read_records",
    "record_key",
]

RECORDS_FILE = "records.jsonl"
STUDY_FILE = "study.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
FIGURE_FILE = "rates.png"

#: Keys every record must carry to be usable (others, e.g. ``train_loss``, are kept as-is).
REQUIRED_KEYS: tuple[str, ...] = ("setting", "n", "seed", "losses", "converged", "iterations")



@dataclass(frozen=True)
class BadLine:
    """A line of ``records.jsonl`` that was skipped, and why."""

    lineno: int
    reason: str
    text: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record_problem(rec: object) -> str | None:
    """Why ``rec`` is not a usable record (None if it is).

    Usable: a JSON object with every key of :data:`REQUIRED_KEYS`, ``setting`` a string,
    ``n`` an integer >= 1, ``seed`` an integer, ``losses`` an object, ``iterations`` a number.
    The loss values themselves are checked by the summary (a NaN loss drops that loss only).
    """
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        return f"missing keys {missing}"
    if not isinstance(rec["setting"], str):
        return f"setting is not a string ({rec['setting']!r})"
    if not _is_int(rec["n"]) or rec["n"] < 1:
        return f"n is not a positive integer ({rec['n']!r})"
    if not _is_int(rec["seed"]):
        return f"seed is not an integer ({rec['seed']!r})"
    if not isinstance(rec["losses"], dict):
        return "losses is not an object"
    if isinstance(rec["iterations"], bool) or not isinstance(rec["iterations"], (int, float)):
        return f"iterations is not a number ({rec['iterations']!r})"
    return None


def check_records_file(path: Path) -> None:
    """Refuse a ``records.jsonl`` that exists but is not a regular file (one-line error)."""
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists but is not a regular file; move it away or use another --out")


def _record_lines(path: Path) -> Iterable[tuple[str, int, str]]:
    """(file, line number, text) of ``path.gz`` (a committed, compressed study) then ``path``."""
    for part in (path.with_name(path.name + ".gz"), path):
        if not part.exists():
            continue
        check_records_file(part)
        opener = gzip.open if part.suffix == ".gz" else open
        try:
            with opener(part, "rt", encoding="utf-8", errors="replace") as fh:
                for lineno, line in enumerate(fh, start=1):
                    yield str(part), lineno, line
        except (OSError, EOFError) as err:
            raise ValueError(f"cannot read {part}: {getattr(err, 'strerror', None) or err}") from None


def read_records(path: Path) -> tuple[list[Record], list[BadLine]]:
    """Read ``records.jsonl`` and, first, ``records.jsonl.gz`` beside it (a committed study is
    kept compressed; new records of a resume go to the plain file). Unusable lines are warned
    about, returned, and skipped.

    A line is unusable if :func:`record_problem` says so. Duplicate ``(setting, n, seed)``
    lines keep the first occurrence.

    Raises:
        ValueError: a file exists but is not a regular file, or cannot be read.
    """
    records: list[Record] = []
    bad: list[BadLine] = []
    seen: set[tuple[str, int, int]] = set()
    where: list[str] = []
    for name, lineno, line in _record_lines(Path(path)):
        text = line.strip()
        if not text:
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as err:
            bad.append(BadLine(lineno, f"not valid JSON ({err.msg})", text[:120]))
            where.append(name)
            continue
        problem = record_problem(rec)
        if problem is not None:
            bad.append(BadLine(lineno, problem, text[:120]))
            where.append(name)
            continue
        key = record_key(rec)
        if key not in seen:
            seen.add(key)
            records.append(rec)
    for name, b in zip(where, bad):
        warnings.warn(f"{name}: line {b.lineno} skipped, {b.reason}: {b.text!r}", RuntimeWarning, stacklevel=2)
    return records, bad


def record_key(rec: Record) -> tuple[str, int, int]:
    """The identity of a record: ``(setting, n, seed)``."""
    return (str(rec["setting"]), int(rec["n"]), int(rec["seed"]))


class RecordWriter:
    """Appends records to ``records.jsonl``, one flush (and fsync) per block."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, records: Iterable[Record]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as fh:  # an interrupted write may have left a partial line
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(("\n" if needs_newline else "") + lines)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (:func:`attnmoe.utils.atomic_write_text`)."""
    atomic_write_text(path, text)


#: version of the fitting code behind a record; 2: autograd-gate (cosine router) Hessians by
#: :func:`~attnmoe.estimation.solvers.derivatives.batched_hessian` (version 1: vmapped torch.func, equal
#: to 2e-15, so those records differ from version 1's at rounding level; closed-form gates unchanged);
#: 3: the closed-form loss, gradient and Hessian summed in passes of ``objective.CHUNK`` samples
#: as one coefficient x feature-product matrix product (equal to version 2's to ~1e-15 relative
#: per call; records differ at rounding level, more where a fit's path is rounding-sensitive)
STUDY_VERSION = 3


def read_config(out: Path) -> dict[str, Any] | None:
    """The ``study.json`` of ``out`` (None if there is none).

    Raises:
        ValueError: the file exists but is not readable JSON with a ``fit`` object.
    """
    path = Path(out) / STUDY_FILE
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = getattr(err, "msg", None) or getattr(err, "strerror", None) or str(err)
        raise ValueError(
            f"{path} is unreadable ({reason}); it records the options of the fits in {out}: "
            "move it away or use another --out"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("fit"), dict):
        raise ValueError(
            f"{path} is unreadable (no 'fit' options in it); move it away or use another --out"
        )
    return config


#: the record field naming the options (and fitting-code version) a record was made under
IDENTITY_FIELD = "options_hash"


def identity_of(config: dict[str, Any]) -> str:
    """A short hash of a study's ``study.json`` content (fit options and code version): stamped
    on every record, so a record made under other options is recognised whatever happened to
    ``study.json``."""
    text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(records: Iterable[Record], identity: str) -> list[Record]:
    """``records`` with their :data:`IDENTITY_FIELD` set to ``identity``."""
    return [{**r, IDENTITY_FIELD: identity} for r in records]


def check_identity(records: Sequence[Record], identity: str, path: Path, *, config_on_file: bool) -> None:
    """Refuse to reuse records made under other options.

    A record with another :data:`IDENTITY_FIELD` is refused; a record without one (written
    before records carried it) is taken only when ``study.json`` was on file and matched this
    run (``config_on_file``), since nothing else says what made it.

    Raises:
        ValueError: one line naming the file, the count and what to do.
    """
    other = sorted({str(r[IDENTITY_FIELD]) for r in records if r.get(IDENTITY_FIELD) not in (None, identity)})
    if other:
        count = sum(1 for r in records if r.get(IDENTITY_FIELD) not in (None, identity))
        raise ValueError(f"{path} holds {count} record(s) fitted under other options (options hash "
                         f"{', '.join(other)}; this run: {identity}); resume with the options that made them "
                         "or use another --out")
    legacy = sum(1 for r in records if r.get(IDENTITY_FIELD) is None)
    if legacy and not config_on_file:
        raise ValueError(f"{path} holds {legacy} record(s) without an options hash and there is no "
                         f"{STUDY_FILE} saying what options made them; restore {STUDY_FILE} or use another --out")
