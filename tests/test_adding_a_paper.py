"""The worked example of docs/adding-a-paper.md runs as written and prints what the page shows:
a gate registered from outside the package fits through the whole engine."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

from attnmoe.moe.gates import GATES

PAGE = Path(__file__).parent.parent / "docs" / "adding-a-paper.md"


def test_the_worked_example_runs_and_prints_the_documented_lines() -> None:
    text = PAGE.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shown = re.search(r"the test\ncompares these lines\):\n\n```\n(.*?)```", text, re.S).group(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(PAGE), "exec"), {"__name__": "adding_a_paper"})
    finally:
        torch.set_num_threads(threads)
        GATES.pop("linear-t2", None)
    assert printed.getvalue() == shown
