"""The ``attnmoe`` command line: one entry point, one subcommand per job.

    attnmoe rates    convergence-rate study of gating MoE estimators (issue 2)
    attnmoe train    train one model on one task with one attention variant (issue 4)
    attnmoe compare  variants x seeds, mean +- std and Welch's t-test (issue 4)
    attnmoe sample   generate text from a trained character GPT run (issue 10)

The subcommands live in ``attnmoe.commands.<name>``; this file only registers them.
"""

from __future__ import annotations

import typer

from attnmoe.commands.compare import compare
from attnmoe.commands.rates import rates
from attnmoe.commands.sample import sample
from attnmoe.commands.train import train

app = typer.Typer(
    name="attnmoe",
    help="Attention and gating as mixtures of experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(name="rates")(rates)
app.command(name="train")(train)
app.command(name="compare")(compare)
app.command(name="sample")(sample)

if __name__ == "__main__":  # pragma: no cover
    app()
