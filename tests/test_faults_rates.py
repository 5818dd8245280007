"""Fault injection and bad input for ``attnmoe rates`` (issue 9: items 5, 8, 10 and 12).

Every case must end with the right result or a one-line error naming the problem (exit 2),
and leave nothing written or changed. Each test failed on the code before the study
subpackage (``estimation/study.py`` at b7ce3d5): bad numbers were accepted, a corrupted
``study.json`` was replaced, a record with ``"n": "abc"`` stopped the command, NaN losses were
dropped without a word, and the CIs changed with the order of the records.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation import study

runner = CliRunner()
ONE = ["--settings", "monomial-sigmoid-exact"]
TINY = [*ONE, "--n-grid", "200,400", "--replicates", "2", "--max-iter", "3", "--workers", "1", "--no-progress"]


def _invoke(*args: str):
    return runner.invoke(app, ["rates", *args])


def _one_line_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    for fragment in fragments:
        assert fragment in lines[0], res.output


@pytest.mark.parametrize(
    "args, option",
    [
        (["--threads", "0"], "--threads"),
        (["--workers", "0"], "--workers"),
        (["--block-size", "0"], "--block-size"),
        (["--threads", "-3"], "--threads"),
        (["--seed", "-5"], "--seed"),
    ],
)
def test_zero_parallelism_options_rejected_naming_the_option(
    tmp_path: Path, args: list[str], option: str
) -> None:
    out = tmp_path / "run"
    _one_line_error(_invoke("--out", str(out), *TINY, *args), option, "integer, got")
    assert not out.exists()


def test_huge_n_rejected_before_allocation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.perf_counter()
    res = _invoke("--out", str(out), *ONE, "--n-grid", "1000,1e12", "--replicates", "2", "--no-progress")
    assert time.perf_counter() - t0 < 30
    _one_line_error(res, "--n-grid", f"at most {study.MAX_N}")
    assert not out.exists()


@pytest.mark.parametrize("args", [["--k-true", "100000"], ["--k-true", "3", "--k-fit", "100000"]])
def test_huge_k_fails_fast(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "run"
    t0 = time.perf_counter()
    res = _invoke("--out", str(out), "--gates", "monomial", "--experts", "linear", *args)
    assert time.perf_counter() - t0 < 30  # the old code spent minutes in an O(k^2) loop
    _one_line_error(res, args[-2], f"at most {study.MAX_EXPERTS}")
    assert not out.exists()


def test_non_integer_grid_value_rejected(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for grid in ("1000,1.0005e3", "1000,1e400", "1000,1500.5"):
        res = _invoke("--out", str(out), *ONE, "--n-grid", grid, "--no-progress")
        assert res.exit_code == 2 and "--n-grid" in res.output, res.output
    assert not out.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny study (real fits, 4 records); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("rates") / "run"
    res = _invoke("--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupted_study_json_refused_never_replaced(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path / "run")
    for corrupted in ('{"fit": {"max_iter": 3', "", "[1, 2]"):
        (out / "study.json").write_text(corrupted)
        records = (out / "records.jsonl").read_bytes()
        res = _invoke("--out", str(out), *TINY, "--max-iter", "4")
        _one_line_error(res, "study.json", "unreadable", "move it away or use another --out")
        assert (out / "study.json").read_text() == corrupted
        assert (out / "records.jsonl").read_bytes() == records


def test_records_file_that_is_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "records.jsonl").mkdir(parents=True)
    res = _invoke("--out", str(out), *TINY)
    _one_line_error(res, "records.jsonl", "not a regular file")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "records.jsonl"]  # the study lock (harmless, kept)
    res = _invoke("--out", str(out), *ONE, "--summary-only")
    _one_line_error(res, "records.jsonl", "not a regular file")


@pytest.mark.parametrize(
    "field, value", [("n", "abc"), ("seed", "x"), ("seed", 1.5), ("n", -200), ("setting", 3)]
)
def test_record_with_bad_identity_skipped_like_other_bad_lines(
    finished: Path, tmp_path: Path, field: str, value: object
) -> None:
    out = _copy(finished, tmp_path / "run")
    lines = (out / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec[field] = value
    lines[1] = json.dumps(rec)
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    res = _invoke("--out", str(out), *TINY)
    assert res.exit_code == 0, res.output
    assert "line 2 skipped" in res.output and field in res.output
    assert "1 fits run, 3 reused" in res.output  # the lost fit is redone
    res = _invoke("--out", str(out), *ONE, "--summary-only")
    assert res.exit_code == 0 and "line 2 skipped" in res.output, res.output


def test_nan_and_string_losses_dropped_with_a_warning_naming_the_count(
    finished: Path, tmp_path: Path
) -> None:
    out = _copy(finished, tmp_path / "run")
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    lines[0]["losses"]["D1"] = None  # how a NaN loss is stored (strict JSON has no NaN)
    lines[2]["losses"]["D1"] = "oops"
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for extra in ([], ["--summary-only"]):
        res = _invoke("--out", str(out), *TINY, *extra)
        assert res.exit_code == 0, res.output
        assert "warning: monomial-sigmoid-exact: 2 record(s) whose D1" in res.output, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["monomial-sigmoid-exact"]["losses"]["D1"]["dropped"] == 2
    assert "monomial-sigmoid-exact D1: 2" in (out / "summary.md").read_text()


def _records(order: list[int]) -> list[dict]:
    base = []
    for seed in range(6):
        for n in (1000, 4000, 16000):
            loss = n**-0.5 * math.exp(0.3 * math.sin(7 * seed + n))
            base.append({"setting": "s", "n": n, "seed": seed, "losses": {"D1": loss},
                         "converged": True, "iterations": 1})
    return [base[i] for i in order]


def test_ci_does_not_depend_on_record_order_or_other_settings() -> None:
    forward = study.summarize_records(_records(list(range(18))), n_boot=400)["settings"]["s"]
    backward = study.summarize_records(_records(list(range(17, -1, -1))), n_boot=400)
    assert backward["settings"]["s"] == forward
    other = [dict(r, setting="a-first") for r in _records(list(range(18)))]
    together = study.summarize_records(other + _records(list(range(18))), n_boot=400)
    assert together["settings"]["s"] == forward


def test_records_made_under_other_options_are_never_reused_even_without_study_json(tmp_path) -> None:
    """Issue 24 silent-wrong 1: fit with --max-iter 100, delete study.json, rerun with --max-iter
    30 -> refused in one line (before: '0 fits run, 4 reused' and study.json rewritten to say 30);
    the same options as the records' resume normally; legacy records without a hash and without
    study.json are refused too."""
    import json as _json

    from typer.testing import CliRunner

    from attnmoe.cli import app

    out = tmp_path / "s"
    base = ["rates", "--settings", "monomial-sigmoid-exact", "--n-grid", "200,400", "--replicates", "2",
            "--no-progress", "--workers", "1", "--out", str(out)]
    runner = CliRunner()
    assert runner.invoke(app, [*base, "--max-iter", "100"]).exit_code == 0
    (out / "study.json").unlink()
    res = runner.invoke(app, [*base, "--max-iter", "30"])
    assert res.exit_code == 2 and "fitted under other options" in res.output
    assert not (out / "study.json").exists()
    res = runner.invoke(app, [*base, "--max-iter", "100"])
    assert res.exit_code == 0 and "0 fits run, 4 reused" in res.output
    lines = [_json.loads(v) for v in (out / "records.jsonl").read_text().splitlines()]
    (out / "records.jsonl").write_text("".join(_json.dumps({k: v for k, v in r.items() if k != "options_hash"}) + "\n"
                                               for r in lines))
    (out / "study.json").unlink()
    res = runner.invoke(app, [*base, "--max-iter", "100"])
    assert res.exit_code == 2 and "without an options hash" in res.output


def _rates_cli(*args: str):
    from typer.testing import CliRunner

    from attnmoe.cli import app

    return CliRunner().invoke(app, ["rates", *args])


@pytest.mark.parametrize("out", ["", "."])
def test_out_that_is_empty_or_the_current_directory_is_refused(out: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "summary.md").write_text("a user's file\n")
    res = _rates_cli("--out", out, "--settings", "monomial-sigmoid-exact", "--n-grid", "200,400")
    assert res.exit_code == 2 and "--out must name a study folder" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


@pytest.mark.parametrize(("args", "message"), [
    (["--replicates", "100000000"], "--replicates must be at most"),
    (["--replicates", "100000", "--n-grid", "100000,200000"], "GiB are available"),
])
def test_sizes_beyond_the_machine_are_refused_before_allocating(args, message, tmp_path) -> None:
    out = tmp_path / "o"
    res = _rates_cli("--out", str(out), "--settings", "monomial-sigmoid-exact", *args)
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_full_disk_ends_in_one_line_and_the_study_resumes(tmp_path, monkeypatch) -> None:
    import errno

    from attnmoe.estimation.study import records

    out = tmp_path / "o"
    common = ["--out", str(out), "--settings", "monomial-sigmoid-exact", "--n-grid", "200,400",
              "--replicates", "2", "--max-iter", "20", "--block-size", "1", "--workers", "1", "--no-progress"]
    real, calls = records.RecordWriter.append, []

    def full(self, recs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, recs)

    monkeypatch.setattr(records.RecordWriter, "append", full)
    res = _rates_cli(*common)
    assert res.exit_code == 1 and "No space left on device" in res.output
    assert len(res.output.strip().splitlines()) == 1
    monkeypatch.setattr(records.RecordWriter, "append", real)
    res = _rates_cli(*common)
    assert res.exit_code == 0 and "2 fits run, 2 reused" in res.output


def test_a_second_rates_on_the_same_out_is_refused(tmp_path) -> None:
    from attnmoe.train.lock import run_lock

    out = tmp_path / "o"
    with run_lock(out):
        res = _rates_cli("--out", str(out), "--settings", "monomial-sigmoid-exact", "--n-grid", "200,400",
                         "--replicates", "2", "--no-progress")
    assert res.exit_code == 2 and "is in use by" in res.output and not (out / "records.jsonl").exists()


def test_ctrl_c_during_worker_start_up_is_one_line_exit_130_and_leaves_no_process(tmp_path) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole process group) while the two workers start:
    one line on stderr, exit 130, no worker left (before: 86-143 lines of tracebacks)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "attnmoe.cli", "rates", "--preset", "quick", "--workers", "2", "--no-progress",
           "--out", str(tmp_path / "o")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    time.sleep(3)
    left = subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert p.returncode == 130 and len(err.decode().strip().splitlines()) == 1, err.decode()[-2000:]
    assert not left


@pytest.mark.parametrize("preset", [[], ["--preset", "temperature-gate"]])
def test_a_non_empty_folder_that_holds_no_study_is_refused(preset, tmp_path) -> None:
    """Issue 24: --out naming a non-empty folder that is not a study is refused in one line, as
    '' and '.' are (before: a user's summary.md there was overwritten by the study's)."""
    out = tmp_path / "papers"
    out.mkdir()
    (out / "summary.md").write_text("a user's file\n")
    res = _rates_cli("--out", str(out), *preset, "--n-grid", "200,400", "--replicates", "2", "--no-progress",
                     *([] if preset else ["--settings", "monomial-sigmoid-exact", "--max-iter", "3"]))
    assert res.exit_code == 2 and "holds no study" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert (out / "summary.md").read_text() == "a user's file\n"
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["summary.md"]


def test_a_study_whose_parent_folder_is_new_still_holds_the_lock(tmp_path, monkeypatch) -> None:
    """--out a/b with a missing: the study creates both and fits; while it writes records the
    folder's lock is held (before: no lock was taken when the parent was missing, so a second
    rates started on the same --out meanwhile fitted everything again beside it)."""
    from attnmoe.estimation.study import records
    from attnmoe.train.lock import RunBusy, run_lock

    out = tmp_path / "new" / "o"
    real, seen = records.RecordWriter.append, []

    def append(self, recs):
        try:
            with run_lock(out):
                seen.append("free")
        except RunBusy:
            seen.append("locked")
        real(self, recs)

    monkeypatch.setattr(records.RecordWriter, "append", append)
    res = _rates_cli("--out", str(out), "--settings", "monomial-sigmoid-exact", "--n-grid", "200,400",
                     "--replicates", "2", "--max-iter", "3", "--workers", "1", "--no-progress")
    assert res.exit_code == 0, res.output
    assert seen and set(seen) == {"locked"}, seen


def test_a_refused_study_leaves_no_folder_behind_even_its_new_parents(tmp_path) -> None:
    out = tmp_path / "new" / "deeper" / "o"
    res = _rates_cli("--out", str(out), "--settings", "monomial-sigmoid-exact", "--n-grid", "200,400",
                     "--replicates", "2", "--max-iter", "-3", "--no-progress")
    assert res.exit_code == 2 and not (tmp_path / "new").exists(), res.output


def test_an_options_mismatch_names_the_fields_that_differ(tmp_path) -> None:
    """Issue 24 (help): a resume under other options names the fields, not two whole dicts."""
    out = tmp_path / "o"
    assert _invoke("--out", str(out), *TINY).exit_code == 0
    res = _invoke("--out", str(out), *TINY[:-1], "--dtol", "1e-6", "--no-progress")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "dtol: 1e-08 there, 1e-06 here" in res.output and "n_test" not in res.output, res.output


def test_a_task_error_on_ray_is_one_line_like_the_process_backend(tmp_path) -> None:
    """--backend ray --device cuda where no GPU is visible: the workers' one-line error, exit 2
    (before: the Ray task's traceback, ~10 lines)."""
    pytest.importorskip("ray")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    res = _invoke("--out", str(tmp_path / "o"), *TINY, "--backend", "ray", "--device", "cuda")
    assert res.exit_code == 2, res.output
    error = res.output[res.output.index("error:"):].strip()
    assert error.count("\n") == 0 and "no GPU is visible" in error, res.output


def test_the_memory_bound_counts_the_fitted_models_parameters(tmp_path, monkeypatch) -> None:
    """A wide fitted model (k = 32: P = 282) at the smallest n it allows: its Hessians alone
    (block x P^2 x 8 bytes, several copies) exceed what is available, though the samples do
    not; refused in one line before any fit (before: only n was counted and the fit started)."""
    from attnmoe.estimation.study import engine, plan

    monkeypatch.setattr(plan, "available_memory", lambda: 16 * 2**30)

    def reached(*a, **k):
        raise AssertionError("the fits were started")

    monkeypatch.setattr(engine, "map_jobs", reached)
    out = tmp_path / "o"
    res = _rates_cli("--out", str(out), "--gates", "polynomial", "--experts", "linear", "--k-true", "2",
                     "--k-fit", "32", "--n-grid", "300,400", "--replicates", "20000", "--no-progress")
    assert res.exit_code == 2 and "GiB are available" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()
