"""Small helpers shared by the command-line jobs (no torch, no model code)."""

from __future__ import annotations

import os
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
