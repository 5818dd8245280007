"""Fault injection against ``attnmoe train`` and the training loop (issue 9).

Every case must end with the right result or a one-line error naming the problem (exit 2),
with nothing lost or half-written. Tiny runs: a 1-block ViT on the bundled digits (about a
second each) through the CLI in-process, or the toy task of ``test_train_loop`` for the loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import ToyNet, ToyTask, _config
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.train.checkpoint import load_checkpoint, save_checkpoint
from attnmoe.train.lock import run_lock
from attnmoe.train.loop import TrainingDiverged, WarmupCosine, train_task
from attnmoe.utils import atomic_write_text

TINY = ["--task", "vision", "--dataset", "digits", "--steps", "20", "--batch-size", "32",
        "--model", "dim=16", "--model", "depth=1", "--model", "heads=2", "--no-progress"]


def _train(*args: str) -> object:
    return CliRunner().invoke(app, ["train", *args])


def _one_line_error(result: object, *needles: str) -> str:
    """The run failed with exit 2 and exactly one ``error:`` line mentioning every needle."""
    out = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, out  # type: ignore[attr-defined]
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (the ``base`` of the issue)."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = _train(*TINY, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------- 1. run identity on resume


@pytest.mark.parametrize(("change", "field"), [
    (["--attention", "active-gelu"], "attention"),
    (["--model", "heads=4"], "model.heads"),
    (["--seed", "7"], "seed"),
    (["--lr", "0.5"], "lr"),
    (["--steps", "40"], "steps"),
])
def test_resume_with_another_spec_is_refused(base: Path, change: list[str], field: str) -> None:
    before = _snapshot(base)
    args = [*TINY, "--out", str(base), "--resume"]
    line = _one_line_error(_train(*args, *change), "cannot resume", field)
    assert "another spec" in line
    assert _snapshot(base) == before  # config.json and metrics.json untouched


def _series_csv(path: Path, rows: int = 240, flat: float | None = None, big: float | None = None) -> Path:
    t = np.arange(rows)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=rows, freq="h").astype(str),
                          "a": np.sin(t / 7.0), "OT": np.cos(t / 5.0)})
    if flat is not None:
        frame["a"] = flat  # e.g. 0.1 everywhere: float64 std ~1e-17, not 0
        frame.loc[rows - 1, "a"] = flat + 1.0  # in the test split
    if big is not None:
        frame.loc[3, "OT"] = big
    frame.to_csv(path, index=False)
    return path


FORECAST = ["--task", "forecast", "--horizon", "4", "--steps", "3", "--batch-size", "8",
            "--model", "seq_len=8", "--model", "d_model=8", "--model", "d_ff=8", "--model", "e_layers=1",
            "--model", "heads=2", "--no-progress"]


def test_resume_on_another_dataset_is_refused(tmp_path: Path) -> None:
    one, two = _series_csv(tmp_path / "one.csv"), _series_csv(tmp_path / "two.csv", rows=250)
    out = tmp_path / "run"
    assert _train(*FORECAST, "--dataset", str(one), "--out", str(out)).exit_code == 0
    (out / "metrics.json").unlink()  # as if interrupted at the end
    _one_line_error(_train(*FORECAST, "--dataset", str(two), "--out", str(out), "--resume"),
                    "cannot resume", "dataset")


def test_resume_with_other_features_is_refused(tmp_path: Path) -> None:
    """``features`` / ``target`` are part of the run spec: another mode is refused, naming the
    field; spelling out the defaults (``--features M --target OT``) is the same run."""
    series = str(_series_csv(tmp_path / "series.csv"))
    out = tmp_path / "run"
    assert _train(*FORECAST, "--dataset", series, "--out", str(out)).exit_code == 0
    (out / "metrics.json").unlink()  # as if interrupted at the end
    before = _snapshot(out)
    for change, field in ((["--features", "MS"], "features"), (["--features", "S"], "features"),
                          (["--target", "a"], "target")):
        line = _one_line_error(_train(*FORECAST, "--dataset", series, *change, "--out", str(out), "--resume"),
                               "cannot resume", field)
        assert "another spec" in line and repr(change[1]) in line
        assert _snapshot(out) == before
    again = _train(*FORECAST, "--dataset", series, "--features", "M", "--target", "OT", "--out", str(out),
                   "--resume")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "config.json").read_text())["spec"]["features"] == "M"


# ---------------------------------------------------------------- 2. finished runs are protected


def test_finished_run_without_checkpoint_is_not_overwritten(base: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(*TINY, "--out", str(run)).exit_code == 0
    for path in (run / "checkpoint").iterdir():
        path.unlink()
    (run / "checkpoint").rmdir()
    before = _snapshot(run)
    _one_line_error(_train(*TINY, "--out", str(run), "--seed", "3"), "already holds a run", "--resume")
    assert _snapshot(run) == before
    # --resume with the same spec: the finished metrics, nothing retrained
    again = _train(*TINY, "--out", str(run), "--resume")
    assert again.exit_code == 0 and json.loads(again.stdout) == json.loads(before["metrics.json"])


# ---------------------------------------------------------------- 4. --out ''


def test_empty_out_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _one_line_error(_train(*TINY, "--out", ""), "--out")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 5. bad values, bad data


def test_seq_len_zero_is_refused(tmp_path: Path) -> None:
    csv = _series_csv(tmp_path / "s.csv")
    args = [*FORECAST, "--dataset", str(csv), "--out", str(tmp_path / "run")]
    args[args.index("seq_len=8")] = "seq_len=0"
    _one_line_error(_train(*args), "seq_len")


def test_near_constant_channel_is_refused(tmp_path: Path) -> None:
    csv = _series_csv(tmp_path / "s.csv", flat=0.1)
    _one_line_error(_train(*FORECAST, "--dataset", str(csv), "--out", str(tmp_path / "run")),
                    "constant channel", "'a'")


def test_huge_csv_value_is_refused(tmp_path: Path) -> None:
    csv = _series_csv(tmp_path / "s.csv", big=1e308)
    _one_line_error(_train(*FORECAST, "--dataset", str(csv), "--out", str(tmp_path / "run")),
                    "'OT'", "too large")


@pytest.mark.parametrize(("args", "needle"), [
    (["--seed", "-5"], "--seed"),
    (["--batch-size", "0"], "--batch-size"),
    (["--precision", "fp8"], "--precision"),
    (["--lr", "nan"], "--lr"),
])
def test_bad_option_values_name_the_option(tmp_path: Path, args: list[str], needle: str) -> None:
    _one_line_error(_train(*TINY, "--out", str(tmp_path / "run"), *args), needle)
    assert not (tmp_path / "run" / "config.json").exists()


def test_dataset_names_are_case_insensitive_with_suggestions(tmp_path: Path) -> None:
    result = _train(*[a if a != "digits" else "DIGITS" for a in TINY], "--steps", "2",
                    "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["spec"]["dataset"] == "digits"
    _one_line_error(_train(*[a if a != "digits" else "digts" for a in TINY], "--out", str(tmp_path / "r2")),
                    "did you mean 'digits'")


# ---------------------------------------------------------------- 6. damaged checkpoints


def _toy_cut(out: Path, **kw: object) -> None:
    """A toy run interrupted at step 8: checkpoint/ at step 8, checkpoint.old/ at step 4."""
    assert train_task(ToyTask(), _config(**kw), out, progress=False, stop_after=8) == {}


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    full = train_task(ToyTask(), _config(), tmp_path / "full", progress=False)
    _toy_cut(tmp_path / "cut")
    model = tmp_path / "cut" / "checkpoint" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    resumed = train_task(ToyTask(), _config(), tmp_path / "cut", progress=False, resume=True)
    assert resumed["test_loss"] == full["test_loss"]
    a = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["empty", "truncate", "flip"])
def test_unusable_checkpoints_give_one_line(tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    assert _train(*TINY, "--checkpoint-interval", "5", "--out", str(run)).exit_code == 0
    (run / "metrics.json").unlink()  # interrupted before the metrics were written
    for name in ("checkpoint", "checkpoint.old"):
        path = run / name / "tensors.safetensors"
        data = path.read_bytes()
        path.write_bytes({"empty": b"", "truncate": data[:-7],
                          "flip": data[:-1] + bytes([data[-1] ^ 1])}[damage])
    line = _one_line_error(_train(*TINY, "--checkpoint-interval", "5", "--out", str(run), "--resume"),
                           "no usable checkpoint", "tensors.safetensors")
    assert "checksum" in line


def test_checkpoint_of_other_shapes_is_a_value_error(tmp_path: Path) -> None:
    small, big = ToyNet("softmax", dim=8), ToyNet("softmax", dim=16)
    opt = torch.optim.AdamW(small.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(10, 0, 0.1))
    path = save_checkpoint(tmp_path, small, opt, sched, {"step": 0})
    opt2 = torch.optim.AdamW(big.parameters())
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, WarmupCosine(10, 0, 0.1))
    with pytest.raises(ValueError, match="does not match the model") as info:
        load_checkpoint(path, big, opt2, sched2)
    assert "\n" not in str(info.value)


def test_resume_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    _toy_cut(tmp_path)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert train_task(ToyTask(), _config(), tmp_path, progress=False, resume=True)["steps"] == 12
    suffixes = {p.suffix for d in ("checkpoint", "checkpoint.old") for p in (tmp_path / d).iterdir()}
    assert suffixes == {".safetensors", ".json"}


# ---------------------------------------------------------------- 7. divergence


class ExplodingTask(ToyTask):
    """The toy task whose loss becomes NaN from step ``at`` on (counted by loss calls)."""

    at: int = 5

    def loss_fn(self, model: torch.nn.Module, batch: object) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        loss = super().loss_fn(model, batch)
        return loss * float("nan") if self.calls > self.at else loss


def test_divergence_is_recorded(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="step 5") as info:
        train_task(ExplodingTask(), _config(), tmp_path, progress=False)
    assert "\n" not in str(info.value)
    record = json.loads((tmp_path / "diverged.json").read_text())
    assert record["step"] == 5 and record["loss"] == "nan"
    assert not (tmp_path / "metrics.json").exists()


def test_diverging_cli_run_is_one_line(tmp_path: Path) -> None:
    _one_line_error(_train(*TINY, "--lr", "1e30", "--out", str(tmp_path / "run")), "diverged", "--lr")
    assert (tmp_path / "run" / "diverged.json").is_file()


# ---------------------------------------------------------------- 9. two processes, one run


def test_second_train_on_a_locked_run_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_lock(run):  # as another `attnmoe train` would hold it
        line = _one_line_error(_train(*TINY, "--out", str(run)), "being trained by", f"pid {os.getpid()}")
    assert "--out" in line
    assert not (run / "config.json").exists()
    assert _train(*TINY, "--out", str(run)).exit_code == 0  # free again


# ---------------------------------------------------------------- 11. damaged logs and outputs


def test_partial_log_line_does_not_block_resume(tmp_path: Path) -> None:
    full = train_task(ToyTask(), _config(), tmp_path / "full", progress=False)
    _toy_cut(tmp_path / "cut")
    with (tmp_path / "cut" / "log.jsonl").open("a") as handle:
        handle.write('{"step": 9, "train_loss": 1.0')  # the line an interruption cut
    resumed = train_task(ToyTask(), _config(), tmp_path / "cut", progress=False, resume=True)
    assert resumed["test_loss"] == full["test_loss"]
    assert (tmp_path / "cut" / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()


def test_damaged_config_is_named(base: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(*TINY, "--out", str(run)).exit_code == 0
    config = run / "config.json"
    config.write_text(config.read_text()[:40])
    _one_line_error(_train(*TINY, "--out", str(run), "--resume"), "config.json", "damaged")


_WRITER = """
import json, sys
from attnmoe.utils import atomic_write_text
path, i = sys.argv[1], 0
while True:
    i += 1
    atomic_write_text(path, json.dumps({"i": i, "pad": "x" * 2_000_000}))
"""


def test_kill_during_atomic_writes_leaves_a_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_text(target, json.dumps({"i": 0}))
    for delay in (0.5, 0.8, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)])
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert isinstance(json.loads(target.read_text())["i"], int)  # old or new, never a part


def test_interrupted_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.md"
    target.write_text("old")

    def cut(_: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", cut)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new" * 1000)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


# ---------------------------------------------------------------- 13. the log after a resume


def test_resume_off_the_log_interval_keeps_the_log(tmp_path: Path) -> None:
    # checkpoints at 3, 6, 9, 12; training-loss records every 4 steps; cut at 6
    kw = {"log_interval": 4, "checkpoint_interval": 3}
    train_task(ToyTask(), _config(**kw), tmp_path / "full", progress=False)
    assert train_task(ToyTask(), _config(**kw), tmp_path / "cut", progress=False, stop_after=6) == {}
    train_task(ToyTask(), _config(**kw), tmp_path / "cut", progress=False, resume=True)
    assert (tmp_path / "cut" / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()
