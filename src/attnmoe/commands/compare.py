"""``attnmoe compare``: not implemented yet."""

from __future__ import annotations

import typer


def compare() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
