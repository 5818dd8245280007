"""Training switches (issue 10): --precision, --tensorboard, --config, --version, compare's progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import ToyTask, _config
from typer.testing import CliRunner

from attnmoe.cli import app, package_version
from attnmoe.train import compare as cmp
from attnmoe.train.loop import read_log, train_task

TINY = ["--task", "vision", "--dataset", "digits", "--steps", "6", "--batch-size", "32",
        "--model", "dim=16", "--model", "depth=1", "--model", "heads=2", "--no-progress"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_and_resumes_exactly(tmp_path: Path, precision: str) -> None:
    spec = _config(precision=precision)
    full = train_task(ToyTask(), spec, tmp_path / "full", progress=False)
    fp32 = train_task(ToyTask(), _config(), tmp_path / "fp32", progress=False)
    assert torch.isfinite(torch.tensor(full["test_loss"]))
    assert full["test_loss"] != fp32["test_loss"]  # autocast really changed the arithmetic
    assert full["test_loss"] == pytest.approx(fp32["test_loss"], rel=0.05)
    assert train_task(ToyTask(), spec, tmp_path / "cut", progress=False, stop_after=6) == {}
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["extra"]
    assert (state["scaler"] is not None) == (precision == "fp16")  # GradScaler state kept
    resumed = train_task(ToyTask(), spec, tmp_path / "cut", progress=False, resume=True)
    assert resumed["test_loss"] == full["test_loss"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensorboard_scalars_equal_the_log(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train_task(ToyTask(), _config(), tmp_path, progress=False, tensorboard=True, stop_after=6) == {}
    train_task(ToyTask(), _config(), tmp_path, progress=False, tensorboard=True, resume=True)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = [(r["step"], r["train_loss"]) for r in read_log(tmp_path) if "train_loss" in r]
    scalars = [(e.step, e.value) for e in events.Scalars("train_loss")]
    assert [s for s, _ in scalars] == [s for s, _ in logged]  # each step once, also after the resume
    assert [v for _, v in scalars] == pytest.approx([v for _, v in logged], rel=1e-6)  # float32 in TB


def test_config_reruns_a_run(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["train", *TINY, "--lr", "0.003", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    config = str(tmp_path / "a" / "config.json")
    again = runner.invoke(app, ["train", "--config", config, "--out", str(tmp_path / "b"), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["test_accuracy"] == json.loads(first.stdout)["test_accuracy"]
    spec_a = json.loads((tmp_path / "a" / "config.json").read_text())["spec"]
    spec_b = json.loads((tmp_path / "b" / "config.json").read_text())["spec"]
    assert spec_a == spec_b and spec_a["lr"] == 0.003
    seed1 = runner.invoke(app, ["train", "--config", config, "--seed", "1", "--out", str(tmp_path / "c"),
                                "--no-progress"])
    assert seed1.exit_code == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["spec"] == {**spec_a, "seed": 1}
    both = runner.invoke(app, ["train", "--config", config, "--task", "lm", "--out", str(tmp_path / "d")])
    assert both.exit_code == 2 and "--config" in both.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    none = runner.invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "e")])
    assert none.exit_code == 2 and "records no run spec" in none.output


def test_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"attnmoe {version('attnmoe')}"
    assert package_version() == version("attnmoe")


def test_compare_progress_names_run_variant_and_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_compare import BASE, _fake_run_one

    labels: list[str] = []
    fake = _fake_run_one([])

    def run_one(spec: Any, out_dir: Path, *, label: str, **kw: Any) -> dict[str, float]:
        labels.append(label)
        return fake(spec, out_dir, **kw)

    monkeypatch.setattr(cmp, "run_one", run_one)
    cmp.run_comparison(BASE, ["softmax", "sigmoid"], [0, 1], tmp_path, progress=False)
    assert labels == ["run 1/4 softmax seed 0", "run 2/4 sigmoid seed 0",
                      "run 3/4 softmax seed 1", "run 4/4 sigmoid seed 1"]


@pytest.mark.slow
def test_compile_gives_the_same_run(tmp_path: Path) -> None:
    eager = train_task(ToyTask(), _config(), tmp_path / "eager", progress=False)
    compiled = train_task(ToyTask(), _config(), tmp_path / "compiled", progress=False, compile=True)
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-4)
