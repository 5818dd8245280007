"""``attnmoe train`` end to end on tiny models: the three output files, resume guard, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from attnmoe.cli import app

runner = CliRunner()


def _csv(path: Path, rows: int = 300) -> Path:
    t = np.arange(rows)
    frame = pd.DataFrame({
        "date": pd.date_range("2020-01-01", periods=rows, freq="h").astype(str),
        "a": np.sin(t / 7.0), "b": np.cos(t / 5.0), "OT": np.sin(t / 11.0) + 0.1 * t / rows,
    })
    frame.to_csv(path, index=False)
    return path


def _text(path: Path) -> Path:
    path.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    return path


def _args(task: str, tmp_path: Path) -> list[str]:
    if task == "vision":
        return ["--dataset", "digits", "--model", "dim=16", "--model", "depth=1"]
    if task == "lm":
        return ["--dataset", str(_text(tmp_path / "corpus.txt")), "--model", "n_layer=1",
                "--model", "n_embd=16", "--model", "n_head=2", "--model", "block_size=8",
                "--model", "eval_blocks=4"]
    return ["--dataset", str(_csv(tmp_path / "series.csv")), "--horizon", "4", "--model", "seq_len=8",
            "--model", "d_model=16", "--model", "d_ff=16", "--model", "e_layers=1", "--model", "heads=2"]


EXPECTED = {"vision": ["test_accuracy", "val_loss"], "lm": ["val_loss"],
            "forecast": ["test_mse", "test_mae", "n_test_windows"]}


@pytest.mark.parametrize("task", ["vision", "lm", "forecast"])
def test_train_writes_the_three_files(tmp_path: Path, task: str) -> None:
    out = tmp_path / "run"
    args = ["train", "--task", task, "--attention", "active-gelu", "--steps", "3",
            "--batch-size", "8", "--out", str(out), "--no-progress", *_args(task, tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for name in [*EXPECTED[task], "n_params", "wall_time_s"]:
        assert name in metrics
    assert metrics["steps"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["spec"]["attention"] == "active-gelu" and config["spec"]["batch_size"] == 8
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and any("train_loss" in r for r in log)
    if task == "forecast":
        # 300 rows, 70/10/20: test rows [240 - 8, 300) hold 68 - 8 - 4 + 1 = 57 windows
        assert metrics["n_test_windows"] == 57 and isinstance(metrics["n_test_windows"], int)
    # the same directory again without --resume is refused; with --resume it is a no-op finish
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    for name in EXPECTED[task]:
        assert json.loads((out / "metrics.json").read_text())[name] == metrics[name]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "audio", "--dataset", "digits"], "unknown task"),
        (["--task", "vision", "--dataset", "cifar"], "unknown vision data set"),
        (["--task", "vision", "--dataset", "digits", "--attention", "softmax-ish"], "softmax-ish"),
        (["--task", "vision", "--dataset", "digits", "--model", "width=3"], "width"),
        (["--task", "vision", "--dataset", "digits", "--steps", "2", "--epochs", "1"], "exactly one of --steps or --epochs"),
    ],
)
def test_train_clear_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code != 0 and message in result.output


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["train", "--task", "vision", "--dataset", "digits", "--steps", "1",
                                 "--out", str(blocker / "run"), "--no-progress"])
    assert result.exit_code == 2 and "cannot write to output directory" in result.output
