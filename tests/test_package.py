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


def test_lower_layers_never_import_the_study_engine_or_the_commands() -> None:
    """Data flows one way (cli -> commands -> estimation.study -> families + solvers -> moe): no
    module of families/, solvers/ or moe/ imports estimation.study, commands or the cli, at the
    top or inside a function (the one table of fit defaults, families/options.py, included)."""
    import ast
    from pathlib import Path

    root = Path(attnmoe.__file__).parent
    higher = ("attnmoe.estimation.study", "attnmoe.commands", "attnmoe.cli")
    bad = []
    for folder in (root / "estimation" / "families", root / "estimation" / "solvers", root / "moe"):
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(higher)]
    assert (root / "estimation" / "families" / "options.py").exists()
    assert not bad, bad
