"""The package imports and the command line answers."""

import subprocess
import sys

import attnmoe


def test_version() -> None:
    assert attnmoe.__version__.count(".") == 2


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "attnmoe.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "rates" in out.stdout and "compare" in out.stdout
