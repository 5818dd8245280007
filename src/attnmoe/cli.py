"""The ``attnmoe`` command line: one entry point, one subcommand per job.

    attnmoe rates    convergence-rate study of gating MoE estimators (issue 2)
    attnmoe train    train one model on one task with one attention variant (issue 4)
    attnmoe compare  variants x seeds, mean +- std and Welch's t-test (issue 4)
    attnmoe sample   generate text from a trained character GPT run (issue 10)
    attnmoe claims   the claims ledger from the committed records (issue 22)

The subcommands live in ``attnmoe.commands.<name>``; this file only registers them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _interrupted_while_loading(signum: int, frame: object) -> None:
    sys.stderr.write("interrupted\n")  # Ctrl-C while torch loads: one line, exit 130, no traceback
    os._exit(130)


# not where SIGINT is ignored: a study's worker processes start so (rates handles Ctrl-C itself)
_MAIN = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
_BEFORE = signal.signal(signal.SIGINT, _interrupted_while_loading) if _MAIN else None

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from attnmoe.commands.claims import claims
from attnmoe.commands.compare import compare_command
from attnmoe.commands.rates import rates
from attnmoe.commands.sample import sample
from attnmoe.commands.train import train_command

if _MAIN:
    signal.signal(signal.SIGINT, _BEFORE)  # the commands handle Ctrl-C themselves

app = typer.Typer(
    name="attnmoe",
    help="Attention and gating as mixtures of experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def package_version() -> str:
    """The installed attnmoe version (``unknown`` when running from an uninstalled tree)."""
    try:
        return version("attnmoe")
    except PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"attnmoe {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Attention and gating as mixtures of experts."""


app.command(name="rates")(rates)
app.command(name="train")(train_command)
app.command(name="compare")(compare_command)
app.command(name="sample")(sample)
app.command(name="claims")(claims)

if __name__ == "__main__":  # pragma: no cover
    app()
