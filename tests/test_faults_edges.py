"""Fault injection at the edges (issue 24): estimators, checkpoints read by ``sample``, size bounds,
interrupts and full disks in ``train`` / ``compare``.

Every case ends in the right result or a one-line error with a non-zero exit code, and leaves
nothing behind that blocks the next run. Tiny runs as in ``test_faults_train``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from test_faults_train import TINY, _one_line_error, _train
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation import MoERegressor
from attnmoe.estimation.sklearn.likelihood import GaussianMoERegressor, MoEClassifier

runner = CliRunner()


# ---------------------------------------------------------------- estimators: scale, NaN, threads


def _diabetes(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_diabetes(return_X_y=True)
    return X[:n], y[:n]


@pytest.mark.parametrize(("fx", "fy", "name"), [(1.0, 1e153, "y"), (1e100, 1.0, "X"), (1e154, 1.0, "X"),
                                                (1e-200, 1.0, "X")])
def test_regressor_refuses_scales_float64_cannot_hold(fx: float, fy: float, name: str) -> None:
    X, y = _diabetes()
    with pytest.raises(ValueError, match=f"^{name}[ '].*rescale {name}") as err:
        MoERegressor(n_init=1, max_iter=5).fit(X * fx, y * fy)
    assert "\n" not in str(err.value) and "NaN" not in str(err.value)


def test_regressor_fits_just_below_the_bound() -> None:
    X, y = _diabetes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MoERegressor(n_init=2, max_iter=50, random_state=0).fit(X, y * 1e150)
    assert np.isfinite(model.loss_) and np.isfinite(model.predict(X)).all()


def test_regressor_never_reports_success_with_a_non_finite_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnmoe.estimation.sklearn.regressor as est

    real = est.lbfgs

    def nan_lbfgs(*args, **kwargs):
        res = real(*args, **kwargs)
        res.loss[:] = float("nan")  # every restart diverged
        return res

    monkeypatch.setattr(est, "lbfgs", nan_lbfgs)
    X, y = _diabetes()
    with pytest.raises(ValueError, match="non-finite loss"):
        MoERegressor(n_init=2, max_iter=5).fit(X, y)


@pytest.mark.parametrize("estimator", [GaussianMoERegressor(n_init=1, max_iter=5),
                                       MoEClassifier(n_init=1, max_iter=5)])
def test_likelihood_estimators_refuse_overflowing_scales(estimator) -> None:
    X, y = _diabetes()
    target = y if isinstance(estimator, GaussianMoERegressor) else (y > np.median(y)).astype(int)
    with pytest.raises(ValueError, match="^X holds values up to .*rescale X"):
        estimator.fit(X * 1e160, target)


def test_likelihood_fit_with_only_non_finite_starts_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnmoe.estimation.sklearn.likelihood as lik

    real = lik.fit_likelihood

    def nan_fit(*args, **kwargs):
        fit = real(*args, **kwargs)
        fit.nll[:] = float("nan")
        return fit

    monkeypatch.setattr(lik, "fit_likelihood", nan_fit)
    X, y = _diabetes()
    with pytest.raises(ValueError, match="non-finite negative log-likelihood"):
        GaussianMoERegressor(n_init=2, max_iter=5).fit(X, y)


def test_one_torch_thread_per_fit_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnmoe.estimation.sklearn.regressor as est

    seen: list[int] = []
    real = est.lbfgs

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(est, "lbfgs", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        X, y = _diabetes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MoERegressor(n_init=1, max_iter=3).fit(X, y)
            assert torch.get_num_threads() == 2  # restored after the fit
            MoERegressor(n_init=1, max_iter=3, n_threads=None, selection="none").fit(X, y)
    finally:
        torch.set_num_threads(before)
    assert seen[:-1] == [1] * (len(seen) - 1) and seen[-1] == 2
    with pytest.raises(ValueError, match="n_threads"):
        MoERegressor(n_threads=0).fit(X, y)


def test_default_does_not_lose_to_ols_on_near_linear_data() -> None:
    # the case: diabetes, 30 % held out, seed 0, standardised; OLS from scikit-learn
    X, y = load_diabetes(return_X_y=True)
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.3, random_state=0)
    scaler = StandardScaler().fit(Xa)
    Xa, Xb = scaler.transform(Xa), scaler.transform(Xb)
    ols = LinearRegression().fit(Xa, ya).score(Xb, yb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moe = MoERegressor(random_state=0).fit(Xa, ya)
    assert moe.score(Xb, yb) >= ols - 1e-4, (moe.score(Xb, yb), ols, moe.validation_mse_)


def test_selection_keeps_the_mixture_when_it_is_clearly_better() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(400, 2))
    y = np.where(X[:, 0] ** 2 + X[:, 1] ** 2 > 2, 3 * X[:, 0], -3 * X[:, 1]) + 0.1 * rng.normal(size=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moe = MoERegressor(expert="linear", random_state=0).fit(X, y)
    assert moe.selected_ == "mixture" and moe.gate_ == "monomial" and moe.A_.shape == (2, 2, 2)
    assert moe.validation_mse_["mixture"] < moe.validation_mse_["linear"]


# ---------------------------------------------------------------- sample: checksums, NaN weights


@pytest.fixture(scope="module")
def lm_two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny character-GPT run with checkpoint/ (step 4) and checkpoint.old/ (step 2)."""
    tmp = tmp_path_factory.mktemp("lm2")
    corpus = tmp / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40, encoding="utf-8")
    out = tmp / "run"
    result = runner.invoke(app, [
        "train", "--task", "lm", "--dataset", str(corpus), "--steps", "4", "--checkpoint-interval", "2",
        "--batch-size", "4", "--out", str(out), "--no-progress", "--lr", "0.05",
        "--model", "n_layer=1", "--model", "n_embd=16", "--model", "n_head=2",
        "--model", "block_size=8", "--model", "eval_blocks=2"])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint.old" / "model.safetensors").is_file()
    return out


SAMPLE = ["--prompt", "to", "--tokens", "30", "--seed", "3"]


def test_sample_falls_back_to_the_previous_checkpoint_on_altered_bytes(lm_two_checkpoints: Path,
                                                                        tmp_path: Path) -> None:
    damaged, reference = tmp_path / "damaged", tmp_path / "reference"
    shutil.copytree(lm_two_checkpoints, damaged)
    shutil.copytree(lm_two_checkpoints, reference)
    weights = damaged / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # a changed byte near the end: still loads, other text
    weights.write_bytes(bytes(data))
    shutil.rmtree(reference / "checkpoint")  # the independent answer: only the previous checkpoint
    (reference / "checkpoint.old").rename(reference / "checkpoint")
    got = runner.invoke(app, ["sample", "--run", str(damaged), *SAMPLE])
    want = runner.invoke(app, ["sample", "--run", str(reference), *SAMPLE])
    assert got.exit_code == 0 and want.exit_code == 0, got.output
    assert got.stdout == want.stdout
    assert "does not match its checksum" in got.stderr and "checkpoint.old" in got.stderr
    # both damaged: one line, exit 2
    old = damaged / "checkpoint.old" / "model.safetensors"
    old.write_bytes(old.read_bytes()[:-3])
    result = runner.invoke(app, ["sample", "--run", str(damaged), *SAMPLE])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no checkpoint verifies" in result.stderr


def test_sample_refuses_nan_weights_in_one_line(lm_two_checkpoints: Path, tmp_path: Path) -> None:
    run = tmp_path / "nan"
    shutil.copytree(lm_two_checkpoints, run)
    shutil.rmtree(run / "checkpoint.old")
    ckpt = run / "checkpoint"
    tensors = load_file(str(ckpt / "model.safetensors"))
    name = min(tensors)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(ckpt / "model.safetensors"))
    state = json.loads((ckpt / "state.json").read_text())  # a consistent checkpoint of NaN weights
    state["files"]["model.safetensors"] = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    (ckpt / "state.json").write_text(json.dumps(state))
    result = runner.invoke(app, ["sample", "--run", str(run), *SAMPLE])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and "NaN or infinite" in result.stderr and name in result.stderr


def test_sample_ctrl_c_is_one_line_and_130(lm_two_checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnmoe.tasks import language

    real = language.generate_stream

    def interrupted(*args, **kwargs):
        for i, nxt in enumerate(real(*args, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt
            yield nxt

    monkeypatch.setattr(language, "generate_stream", interrupted)
    result = runner.invoke(app, ["sample", "--run", str(lm_two_checkpoints), *SAMPLE])
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted (Ctrl-C)"
    assert len(result.stdout) == len("to") + 5 + 1  # what was generated was streamed


def test_stream_equals_generate_and_keeps_only_the_window() -> None:
    from attnmoe.tasks.language import GPT, generate, generate_stream

    torch.manual_seed(0)
    model = GPT(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
    idx = torch.tensor([[1, 2]])
    full = generate(model, idx, 40, generator=torch.Generator().manual_seed(1))
    parts = list(generate_stream(model, idx, 40, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(full, torch.cat([idx, *parts], 1)) and full.shape == (1, 42)


# ---------------------------------------------------------------- bounds


def test_compare_seeds_bound_is_immediate(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = runner.invoke(app, ["compare", "--task", "vision", "--dataset", "digits", "--seeds",
                                 "1000000000", "--out", str(tmp_path / "c")])
    assert time.perf_counter() - started < 10
    assert result.exit_code == 2 and "more than 1000 seeds" in result.stderr
    assert not (tmp_path / "c").exists()


def test_train_steps_bound_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r"
    _one_line_error(_train(*TINY, "--steps", "1000000000000", "--out", str(out)), "--steps", "cap")
    assert not out.exists()


def test_train_model_too_large_is_refused_before_allocation(tmp_path: Path) -> None:
    out = tmp_path / "r"
    line = _one_line_error(_train(*TINY, "--model", "dim=1000000", "--out", str(out)), "parameters", "GiB")
    assert "lower the --model sizes" in line
    assert not out.exists()  # no .lock, no folder: the next command is not refused


def test_validation_error_after_the_lock_leaves_no_lock(tmp_path: Path) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    _one_line_error(_train("--task", "lm", "--dataset", str(tmp_path / "missing.txt"), "--steps", "2",
                           "--out", str(out), "--no-progress"))
    assert out.is_dir() and list(out.iterdir()) == []  # the user's folder stays, empty


# ---------------------------------------------------------------- interrupts, full disks, flags


def test_ctrl_c_in_train_is_one_line_and_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnmoe.train import run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "build_task", interrupted, raising=False)
    monkeypatch.setattr("attnmoe.tasks.build_task", interrupted)
    out = tmp_path / "r"
    result = _train(*TINY, "--out", str(out))
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("interrupted") and result.stderr.count("\n") == 1
    assert not out.exists()


def test_disk_full_while_checkpointing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnmoe.train import checkpoint

    real = checkpoint.save_file
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:  # the second checkpoint's tensors
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "r"
    result = _train(*TINY, "--checkpoint-interval", "5", "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stderr.count("\n") == 1 and "No space left" in result.stderr and "--resume" in result.stderr
    assert not (out / "checkpoint.tmp").exists()
    monkeypatch.setattr(checkpoint, "save_file", real)  # space freed: the resume finishes the run
    resumed = _train(*TINY, "--checkpoint-interval", "5", "--out", str(out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    whole = _train(*TINY, "--checkpoint-interval", "5", "--out", str(tmp_path / "whole"))
    assert json.loads(resumed.stdout)["test_accuracy"] == json.loads(whole.stdout)["test_accuracy"]


def test_tensorboard_missing_creates_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as without the package
    out = tmp_path / "r"
    _one_line_error(_train(*TINY, "--tensorboard", "--out", str(out)), "pip install 'attnmoe[tensorboard]'")
    assert not out.exists()
    assert _train(*TINY, "--out", str(out)).exit_code == 0  # the same command without the flag


def test_garbled_log_line_is_named_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = [*TINY, "--steps", "20", "--checkpoint-interval", "10", "--eval-interval", "5", "--out", str(out)]
    from attnmoe.commands import train as train_cmd  # noqa: F401  (the CLI stops at step 10 below)
    from attnmoe.tasks import build_task, resolve_spec
    from attnmoe.train.loop import train_task

    spec = resolve_spec("vision", "digits", overrides={"steps": 20, "batch_size": 32, "checkpoint_interval": 10,
                                                       "eval_interval": 5, "dim": 16, "depth": 1, "heads": 2})
    train_task(build_task(spec), spec, out, progress=False, stop_after=10)
    log = out / "log.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = lines[1][:7] + "#garbled"
    log.write_text("\n".join(lines) + "\n")
    result = _train(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "garbled line 2" in result.stderr


def test_damaged_config_option_does_not_advise_another_out(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    line = _one_line_error(_train("--config", str(bad), "--out", str(tmp_path / "r")), "--config", "damaged")
    assert "another --out" not in line


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_mid_training_is_one_line_and_resumable(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = [sys.executable, "-m", "attnmoe.cli", "train", *TINY, "--steps", "3000", "--checkpoint-interval",
            "50", "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "checkpoint").is_dir():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().startswith("interrupted"), err
    assert not (out / "checkpoint.tmp").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("after_s", [0.3, 2.0])
def test_ctrl_c_in_the_first_seconds_is_one_line_and_130(tmp_path: Path, after_s: float) -> None:
    # at 0.3 s Python is still importing torch (the handler of attnmoe.cli), at 2 s building the task
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "attnmoe.cli", "train", *TINY, "--steps", "100000",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"},
                            # as from a terminal: a background shell (nohup ... &) starts pytest with
                            # SIGINT ignored, the child would inherit that and cli.py keeps it (the
                            # cause of the hangs seen under `nohup pytest &`)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say where the child was
        proc.send_signal(signal.SIGABRT)  # faulthandler dumps every thread's stack to stderr
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"still running 60 s after SIGINT; its stacks:\n{err[-4000:]}")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("interrupted"), err


def test_infinite_csv_value_is_named_by_column_and_row(tmp_path: Path) -> None:
    from attnmoe.tasks.data.timeseries import load_forecast_splits

    rows = ["date,a,OT"] + [f"2020-01-01 {i % 24:02d}:00,{i % 7}.5,{'inf' if i == 41 else i % 5}"
                            for i in range(300)]
    csv = tmp_path / "s.csv"
    csv.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"column 'OT' has an infinite value inf at data row 41$"):
        load_forecast_splits(str(csv), None, seq_len=8, pred_len=4, features="M", target="OT")


def test_compare_ctrl_c_and_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnmoe.train import compare

    args = ["compare", "--task", "vision", "--dataset", "digits", "--attention", "softmax", "--seeds", "1",
            "--steps", "5", "--model", "dim=16", "--model", "depth=1", "--model", "heads=2", "--no-progress"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    def full(*a, **k):
        raise OSError(28, "No space left on device", "summary.json")

    for fake, code, needle in ((interrupted, 130, "interrupted"), (full, 1, "No space left on device")):
        monkeypatch.setattr(compare, "run_one", fake)
        result = runner.invoke(app, [*args, "--out", str(tmp_path / needle[:3])])
        assert result.exit_code == code and "Traceback" not in result.output, result.output
        assert result.stderr.count("\n") == 1 and needle in result.stderr


def test_lm_batch_too_large_is_refused_before_allocation(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world " * 200)
    out = tmp_path / "r"
    line = _one_line_error(_train("--task", "lm", "--dataset", str(corpus), "--steps", "2", "--batch-size",
                                  "1000000000", "--no-progress", "--out", str(out)), "--batch-size", "activations")
    assert "GiB are available" in line and not out.exists()


def test_sample_refuses_a_config_asking_for_an_impossible_model(lm_two_checkpoints: Path, tmp_path: Path) -> None:
    run = tmp_path / "huge"
    shutil.copytree(lm_two_checkpoints, run)
    config = json.loads((run / "config.json").read_text())
    config["spec"]["model"]["n_embd"] = 10**7  # tampered: 1e14+ parameters
    (run / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["sample", "--run", str(run), *SAMPLE])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "cannot hold" in result.stderr and "GiB are available" in result.stderr


def test_help_texts_show_what_they_mean() -> None:
    env = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    train = runner.invoke(app, ["train", "--help"], env=env).output
    assert "pip install 'attnmoe[tensorboard]'" in train  # not eaten by Rich markup
    for flag in ("--resume", "--compile", "--tensorboard", "--progress"):
        line = next(x for x in train.splitlines() if f"│ {flag} " in x)
        assert "<bool>" not in line, line  # on/off flags take no value
    for required in ("--out", "--task", "--dataset"):
        line = next(x for x in train.splitlines() if f"│ {required} " in x)
        assert "Required" in line, line
    for name in ("ETTm1", "ETTm2", "weather", "electricity", "traffic"):
        assert name in train
    sample = runner.invoke(app, ["sample", "--help"], env=env).output
    line = next(x for x in sample.splitlines() if "--prompt" in x)
    assert "default: a newline" in line and line.rstrip().endswith("│")  # one intact row


def test_seeds_beyond_the_generators_range_are_refused_before_any_run(tmp_path: Path) -> None:
    out = tmp_path / "c"
    result = runner.invoke(app, ["compare", "--task", "vision", "--dataset", "digits", "--steps", "2",
                                 "--seeds", "5,4294967296", "--no-progress", "--out", str(out)])
    assert result.exit_code == 2 and "at most 4294967295" in result.stderr and not out.exists()
    _one_line_error(_train(*TINY, "--seed", "99999999999999999999", "--out", str(tmp_path / "r")),
                    "--seed", "at most")


def test_threads_beyond_the_cores_are_refused(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    _one_line_error(_train(*TINY, "--threads", str(cores + 1), "--out", str(tmp_path / "r")), "--threads", "cores")
    assert not (tmp_path / "r").exists()
