"""The documented commands still print what the docs show (issue 24, item 6).

A code block in ``README.md`` or ``docs/*.md`` preceded by the line ``<!-- docs-test -->`` is run:

* a shell transcript (lines ``$ command`` followed by its output lines) runs in one ``bash`` in an
  empty temporary folder, ``attnmoe`` being ``python -m attnmoe.cli``; each command's printed
  lines (stdout and stderr) must equal the lines the doc shows under it;
* a ``python`` block runs from the repository root (where the docs' ``../shared/data`` paths
  point); it must only read, and its printed lines must equal the next code block.

Blocks that read ``../shared/data`` are skipped when that folder is absent. Only blocks that take
under a minute are marked (the long studies have their own records and tests).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- docs-test -->"
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
SEP = "@@docs-test-command@@"


def _blocks() -> list[tuple[str, str, str, str | None]]:
    """``(id, kind, code, expected output or None)`` of every marked block."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        marks = re.finditer(f"^{re.escape(MARK)}$", text, re.MULTILINE)  # on a line of its own
        for number, start in enumerate(m.end() for m in marks):
            block = FENCE.search(text, start)
            assert block is not None, f"{doc.name}: {MARK} without a code block"
            header = text[block.start(): text.index("\n", block.start())]
            if "python" in header:
                output = FENCE.search(text, block.end())
                found.append((f"{doc.name}#{number}", "python", block.group(1), output.group(1)))
            else:
                found.append((f"{doc.name}#{number}", "shell", block.group(1), None))
    return found


BLOCKS = _blocks()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _skip_without_data(code: str) -> None:
    if "../shared/data" in code and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("needs ../shared/data")


def test_some_blocks_are_marked() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize(("name", "kind", "code", "expected"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_documented_block_prints_what_the_doc_shows(name: str, kind: str, code: str, expected: str | None,
                                                   tmp_path: Path) -> None:
    _skip_without_data(code)
    if kind == "python":
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), text=True,
                                capture_output=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected.splitlines()
        return
    commands: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    script = [f'attnmoe() {{ "{sys.executable}" -m attnmoe.cli "$@"; }}']
    for command, _ in commands:
        script += [f"echo {SEP}", f"{{ {command}", "} 2>&1"]  # own line: a trailing # comment is fine
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=_env(), text=True,
                            capture_output=True, timeout=120, check=False)
    printed = result.stdout.split(SEP + "\n")[1:]
    assert len(printed) == len(commands), result.stdout + result.stderr
    for (command, want), got in zip(commands, printed):
        assert got.splitlines() == want, f"{name}: {command}"
