"""``attnmoe rates``: not implemented yet."""

from __future__ import annotations

import typer


def rates() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
