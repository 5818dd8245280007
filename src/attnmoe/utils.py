"""Small helpers shared by the command-line jobs (no torch, no model code)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def check_writable(out: Path | str) -> Path:
    """Create the output directory ``out`` if needed and prove a file can be written there.

    Called before any work starts, so a bad ``--out`` fails at once and leaves nothing
    half-written.

    Raises:
        ValueError: ``out`` is an existing file, or the directory cannot be created or written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write to output directory {out}: it exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to output directory {out}: {err.strerror or err}") from None
    return out


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part.

    The text goes to a temporary file in the same directory (same file system), is flushed to
    disk, and replaces ``path`` with ``os.replace`` (atomic on POSIX and Windows). An
    interruption at any point leaves ``path`` as it was (and at worst a ``.*.tmp-<pid>`` file).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_json(path: Path | str, data: object) -> Path:
    """``atomic_write_text(path, json.dumps(data, indent=2) + "\\n")``."""
    import json

    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def did_you_mean(close: list[str]) -> str:
    """``"; did you mean 'x'?"`` / ``"; did you mean one of 'x', 'y'?"`` / ``""`` for no candidate."""
    if not close:
        return ""
    return f"; did you mean {'' if len(close) == 1 else 'one of '}{', '.join(map(repr, close))}?"


def lookup_name(name: str, choices: Iterable[str], what: str, aliases: Mapping[str, str] | None = None,
                or_else: str = "") -> str:
    """The canonical spelling of ``name`` among ``choices``, matched case-insensitively.

    ``aliases`` maps other names (any case) to a choice. Raises ``ValueError`` naming ``what``,
    the close matches (``difflib``) and every valid choice (then ``or_else``, e.g. "a path to a
    .csv file") when nothing matches.
    """
    choices = list(choices)
    table = {c.lower(): c for c in choices}
    table.update({k.lower(): v for k, v in (aliases or {}).items()})
    found = table.get(name.lower())
    if found is not None:
        return found
    close = difflib.get_close_matches(name.lower(), list(table), n=3, cutoff=0.6)
    hint = did_you_mean(list(dict.fromkeys(table[c] for c in close)))
    valid = ", ".join(choices) + (f", or {or_else}" if or_else else "")
    raise ValueError(f"unknown {what} {name!r}{hint} (valid: {valid})")
