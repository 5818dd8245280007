"""Fault injection against ``attnmoe compare`` (issue 9): locks, diverged runs, damaged files.

Training is replaced by a fake ``run_one`` (``test_compare``) that takes the run's real lock and
writes ``metrics.json``, except where a real tiny run is needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_compare import BASE, _fake_run_one
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.train import compare as cmp
from attnmoe.train.lock import LOCK_FILE
from attnmoe.train.loop import DIVERGED_FILE, TrainingDiverged
from attnmoe.utils import atomic_write_json

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_empty_and_foreign_pid_locks_do_not_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, bool]] = []
    monkeypatch.setattr(cmp, "run_one", _fake_run_one(calls))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # unrelated, alive
    try:
        for variant, content in (("softmax", ""), ("sigmoid", str(other.pid))):
            for name in (LOCK_FILE, ".running"):  # today's lock file and the old pid file
                (tmp_path / variant / "seed0").mkdir(parents=True, exist_ok=True)
                (tmp_path / variant / "seed0" / name).write_text(content)
        summary = cmp.run_comparison(BASE, ["softmax", "sigmoid"], [0], tmp_path, progress=False)
    finally:
        other.kill()
        other.wait()
    assert calls == [("softmax", 0, False), ("sigmoid", 0, False)]
    assert summary["skipped"] == {}


def test_run_held_by_a_live_process_is_skipped_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, bool]] = []
    monkeypatch.setattr(cmp, "run_one", _fake_run_one(calls))
    lock = tmp_path / "softmax" / "seed0" / LOCK_FILE
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        summary = cmp.run_comparison(BASE, ["softmax", "sigmoid"], [0], tmp_path, progress=False,
                                     report=lines.append)
    finally:
        holder.kill()
        holder.wait()
    assert calls == [("sigmoid", 0, False)]
    assert list(summary["skipped"]) == ["softmax/seed0"] and "being trained by" in summary["skipped"]["softmax/seed0"]
    assert lines == [f"softmax/seed0: {summary['skipped']['softmax/seed0']}"]
    assert "Not finished: softmax/seed0" in (tmp_path / "summary.md").read_text()
    # the holder is gone (killed): its lock went with it, and the run is trained now
    cmp.run_comparison(BASE, ["softmax", "sigmoid"], [0], tmp_path, progress=False, report=lines.append)
    assert calls[-1] == ("softmax", 0, False) and lines[-1] == "sigmoid/seed0: finished earlier"


def test_diverged_run_is_recorded_and_the_comparison_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, bool]] = []
    fake = _fake_run_one(calls)

    def run_one(spec: Any, out_dir: Path, **kw: Any) -> dict[str, float]:
        if spec.attention == "active-gelu" and spec.seed == 1:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out_dir / DIVERGED_FILE, {"step": 3, "loss": "nan"})
            raise TrainingDiverged("training diverged: the loss is nan at step 3")
        return fake(spec, out_dir, **kw)

    monkeypatch.setattr(cmp, "run_one", run_one)
    lines: list[str] = []
    summary = cmp.run_comparison(BASE, ["softmax", "active-gelu", "sigmoid"], [0, 1, 2], tmp_path,
                                 progress=False, report=lines.append)
    assert len(calls) == 8  # every other run was trained, after the divergence too
    assert summary["variants"]["active-gelu"]["n"] == 2 and summary["variants"]["active-gelu"]["diverged"] == {1: 3}
    assert lines == ["active-gelu/seed1: diverged: training diverged: the loss is nan at step 3"]
    md = (tmp_path / "summary.md").read_text()
    assert "Diverged (training loss NaN/inf; not in the statistics): active-gelu/seed1 (step 3)." in md
    assert "Not finished: none." in md
    # run again: the diverged run is not retried forever in silence, it is named
    lines.clear()
    cmp.run_comparison(BASE, ["softmax", "active-gelu", "sigmoid"], [0, 1, 2], tmp_path,
                       progress=False, report=lines.append)
    assert len(calls) == 8 and any(line.startswith("active-gelu/seed1: diverged earlier") for line in lines)


def test_truncated_metrics_file_is_rerun_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, bool]] = []
    monkeypatch.setattr(cmp, "run_one", _fake_run_one(calls))
    cmp.run_comparison(BASE, ["softmax", "sigmoid"], [0], tmp_path, progress=False)
    metrics = tmp_path / "sigmoid" / "seed0" / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])
    summary = cmp.summarize_comparison(tmp_path)  # --summary-only: the damaged run is unfinished
    assert summary["variants"]["sigmoid"]["n"] == 0
    assert "Not finished: sigmoid/seed0" in (tmp_path / "summary.md").read_text()
    cmp.run_comparison(BASE, ["softmax", "sigmoid"], [0], tmp_path, progress=False)
    assert calls[-1] == ("sigmoid", 0, False) and json.loads(metrics.read_text())["steps"] == 5


def test_damaged_comparison_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "comparison.json").write_text('{"spec": {"task": "forecast"')
    result = CliRunner().invoke(app, ["compare", "--summary-only", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "comparison.json is damaged" in result.output


def test_compare_cli_names_skipped_runs_and_goes_on_after_divergence(tmp_path: Path) -> None:
    args = ["compare", "--task", "vision", "--dataset", "digits", "--attention", "softmax,sigmoid",
            "--seeds", "1", "--steps", "3", "--batch-size", "16", "--model", "dim=8", "--model", "depth=1",
            "--model", "heads=2", "--out", str(tmp_path), "--no-progress"]
    (tmp_path / "softmax" / "seed0").mkdir(parents=True)
    atomic_write_json(tmp_path / "softmax" / "seed0" / DIVERGED_FILE, {"step": 2, "loss": "inf"})
    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "softmax/seed0: diverged earlier (step 2)" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["variants"]["sigmoid"]["n"] == 1 and summary["variants"]["softmax"]["diverged"] == {"0": 2}
    assert time.perf_counter() - start < 60
