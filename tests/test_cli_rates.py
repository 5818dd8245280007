"""``attnmoe rates`` end to end on a tiny grid with the real estimator, bad input, backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation import study
from attnmoe.estimation.families.least_squares.truth import get_setting

runner = CliRunner()
TINY = ["--n-grid", "200,400", "--replicates", "2", "--max-iter", "5", "--no-progress"]


def _invoke(*args: str):
    return runner.invoke(app, ["rates", *args])


def test_end_to_end_tiny_grid(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _invoke("--out", str(out), "--settings", "monomial-sigmoid-exact,polynomial-linear-over", *TINY)
    assert res.exit_code == 0, res.output
    for name in ("records.jsonl", "summary.json", "rates.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 2
    rec = json.loads(lines[0])
    for key in ("setting", "n", "seed", "losses", "converged", "iterations", "seconds"):
        assert key in rec
    assert {"D1", "D2", "L2"} <= set(rec["losses"])
    summary = json.loads((out / "summary.json").read_text())["settings"]
    assert set(summary) == {"monomial-sigmoid-exact", "polynomial-linear-over"}
    d1 = summary["monomial-sigmoid-exact"]["losses"]["D1"]
    assert (d1["n_min"], d1["n_max"], d1["replicates"]) == (200, 400, 2)
    assert "8 fits run" in res.output and "monomial-sigmoid-exact" in (out / "summary.md").read_text()
    # resume: nothing left to fit; one corrupted line is reported, skipped and refitted
    lines[3] = lines[3][:20]
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    res = _invoke("--out", str(out), "--settings", "monomial-sigmoid-exact,polynomial-linear-over", *TINY)
    assert res.exit_code == 0, res.output
    assert "1 fits run, 7 reused" in res.output and "line 4 skipped" in res.output


def test_product_of_gates_experts_k(tmp_path: Path) -> None:
    chosen = study.resolve_settings(gates=["monomial"], experts=["tanh", "gelu"], k_true=[2], k_fit=[2, 3])
    assert [(s.gate, s.expert, s.k_true, s.k_fit) for s in chosen] == [
        ("monomial", "tanh", 2, 2), ("monomial", "tanh", 2, 3),
        ("monomial", "gelu", 2, 2), ("monomial", "gelu", 2, 3),
    ]
    assert len({s.name for s in chosen}) == 4
    core = study.resolve_settings()  # no choice: the 8 core settings
    assert len(core) == 8 and {(s.k_fit - s.k_true) for s in core} == {0, 1}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gates", "cubic"], "unknown gate 'cubic'"),
        (["--experts", "swish"], "unknown expert 'swish'"),
        (["--k-true", "3", "--k-fit", "2"], "k=2 < k*=3"),
        (["--k-true", "0"], ">= 1"),
        (["--settings", "monomial-sigmoid-exact", "--n-grid", "10,100"], "n=10 is smaller than"),
        (["--settings", "nope-exact"], "unknown setting 'nope-exact'"),
        (["--settings", "monomial-sigmoid-exact", "--gates", "monomial"], "not both"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--backend", "dask"], "unknown backend 'dask'"),
        (["--n-grid", "1e3,abc"], "comma-separated integers"),
        (["--replicates", "0"], "replicates must be a positive integer"),
    ],
)
def test_bad_input_clear_error_nothing_written(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    res = _invoke("--out", str(out), *args)
    assert res.exit_code != 0
    assert message in res.output
    assert not out.exists()


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = _invoke("--out", str(blocker / "run"), "--settings", "monomial-sigmoid-exact", *TINY)
    assert res.exit_code == 2 and "cannot write to output directory" in res.output
    res = _invoke("--out", str(blocker), "--settings", "monomial-sigmoid-exact", *TINY)
    assert res.exit_code == 2 and "not a directory" in res.output


def _without_time(records: list[dict]) -> list[dict]:
    """Records sorted by (setting, n, seed), wall time dropped, floats approx (rel 1e-9).

    Batched and one-at-a-time fits agree to rounding (~1e-14 relative), not bit for bit: a
    batched matmul sums in another order.
    """
    def approx(v):
        if isinstance(v, dict):
            return {k: approx(x) for k, x in v.items()}
        if isinstance(v, float):
            return pytest.approx(v, rel=1e-9, abs=1e-15)
        return v

    return sorted(
        ({k: approx(v) for k, v in r.items() if k != "seconds"} for r in records),
        key=lambda r: (r["setting"], r["n"], r["seed"]),
    )


def test_process_pool_and_blocks_equal_inline(tmp_path: Path) -> None:
    s = [get_setting("monomial-sigmoid-over")]
    opts = study.FitOptions(max_iter=10, n_test=500)
    kw = {"options": opts, "progress": False, "n_boot": 50}
    inline = study.run_study(s, [200], 2, tmp_path / "a", **kw)
    pooled = study.run_study(s, [200], 2, tmp_path / "b", workers=2, threads=1, block_size=1, **kw)
    assert _without_time(pooled.records) == _without_time(inline.records)


def test_ray_backend_equals_process_backend(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    s = [get_setting("polynomial-sigmoid-exact")]
    opts = study.FitOptions(max_iter=15, n_test=500)
    kw = {"options": opts, "progress": False, "n_boot": 50}
    local = study.run_study(s, [200], 2, tmp_path / "a", **kw)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        remote = study.run_study(s, [200], 2, tmp_path / "b", backend="ray", block_size=1, **kw)
    finally:
        ray.shutdown()
    assert _without_time(remote.records) == _without_time(local.records)


def test_summary_only_uses_every_record_on_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["--out", str(out), "--replicates", "2", "--max-iter", "5", "--workers", "1", "--no-progress"]
    assert _invoke(*base, "--settings", "monomial-sigmoid-exact", "--n-grid", "200,400").exit_code == 0
    # a second setting on a different grid, in the same directory
    assert _invoke(*base, "--settings", "monomial-linear-exact", "--n-grid", "300,600,900").exit_code == 0
    lines_before = (out / "records.jsonl").read_text()
    res = _invoke("--out", str(out), "--settings", "monomial-sigmoid-exact,monomial-linear-exact",
                  "--summary-only", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "summarised 10 records" in res.output
    assert (out / "records.jsonl").read_text() == lines_before  # nothing fitted
    summary = json.loads((out / "summary.json").read_text())["settings"]
    assert (summary["monomial-sigmoid-exact"]["losses"]["D1"]["n_max"]) == 400
    assert (summary["monomial-linear-exact"]["losses"]["D1"]["sizes"]) == 3
    # filters: one size and one seed leave no slope but a valid summary
    res = _invoke("--out", str(out), "--settings", "monomial-linear-exact", "--n-grid", "300,900",
                  "--replicates", "1", "--summary-only")
    assert res.exit_code == 0, res.output
    assert "summarised 2 records" in res.output
    res = _invoke("--out", str(tmp_path / "empty"), "--summary-only")
    assert res.exit_code == 2 and "nothing to summarise" in res.output


def test_family_preset_refuses_options_it_does_not_take(tmp_path: Path) -> None:
    """The issue's command: every least-squares-grid option given to a family preset is named
    in one line, exit 2, nothing written (before: exit 0 and a fit with all of them ignored)."""
    out = tmp_path / "c"
    res = _invoke("--preset", "contaminated", "--gates", "nonsense", "--settings", "bogus", "--max-iter", "3",
                  "--backend", "ray", "--noise", "0.5", "--init", "random", "--summary-only", "--out", str(out))
    assert res.exit_code == 2
    for name in ("--settings", "--gates", "--max-iter", "--init", "--noise"):
        assert name in res.output
    assert not out.exists()
    res = _invoke("--preset", "hmoe", "--device", "cuda", "--out", str(out))
    assert res.exit_code == 2 and "CPU only" in res.output and not out.exists()
    res = _invoke("--preset", "hmoe", "--summary-only", "--out", str(out))
    assert res.exit_code == 2 and "not a study folder" in res.output and not out.exists()


def test_family_summary_only_fits_nothing_and_reproduces_the_committed_summary(tmp_path: Path) -> None:
    """--summary-only on a committed family study (records.jsonl.gz read directly) rewrites its
    summary.md byte for byte and fits nothing."""
    import shutil

    committed = Path(__file__).parent.parent / "docs" / "rates" / "contaminated-full"
    out = tmp_path / "cf"
    shutil.copytree(committed, out)
    res = _invoke("--preset", "contaminated", "--full", "--summary-only", "--no-progress", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "summarised" in res.output and not (out / "records.jsonl").exists()
    assert (out / "summary.md").read_text() == (committed / "summary.md").read_text()


def test_family_ray_backend_equals_process_backend(tmp_path: Path) -> None:
    """A family preset on a local Ray cluster writes the records the process backend writes."""
    pytest.importorskip("ray")
    common = ["--preset", "temperature-gate", "--n-grid", "200,400", "--replicates", "2", "--no-progress"]
    a = _invoke(*common, "--workers", "1", "--out", str(tmp_path / "a"))
    b = _invoke(*common, "--backend", "ray", "--workers", "2", "--out", str(tmp_path / "b"))
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output

    def records(folder: str) -> dict:
        rows = [json.loads(v) for v in (tmp_path / folder / "records.jsonl").read_text().splitlines()]
        return {(r["setting"], r["n"], r["seed"]): {k: v for k, v in r.items() if k != "seconds"} for r in rows}

    assert records("a") == records("b") and len(records("a")) == 8


def test_the_readme_quick_table_is_what_the_quick_preset_prints(tmp_path: Path) -> None:
    """The README's first command (the main job) prints the table the README shows: every row of
    the README's table equals the first columns of the printed one, digit for digit."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    shown = [line for line in readme.splitlines() if line.startswith("| monomial-") or line.startswith("| polynomial-")]
    res = _invoke("--preset", "quick", "--out", str(tmp_path / "q"), "--no-progress")
    assert res.exit_code == 0, res.output
    printed = {line.split(" | ")[0]: line for line in res.output.splitlines() if line.startswith("| ")}
    assert len(shown) == 8
    for row in shown:
        cells = row.strip("|").split("|")
        got = printed[row.split(" | ")[0]].strip("|").split("|")
        assert got[: len(cells)] == cells, row


def test_least_squares_summary_only_reads_a_study_kept_only_as_records_jsonl_gz(tmp_path: Path) -> None:
    """docs/rates.md tells users to copy docs/rates/paper-40 (records.jsonl.gz only) and run
    --summary-only on it: the .gz records are summarised, not refused as 'nothing to summarise'."""
    import gzip

    src = tmp_path / "plain"
    assert _invoke("--out", str(src), "--settings", "monomial-sigmoid-exact", *TINY).exit_code == 0
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "study.json").write_bytes((src / "study.json").read_bytes())
    (gz / "records.jsonl.gz").write_bytes(gzip.compress((src / "records.jsonl").read_bytes()))
    res = _invoke("--out", str(gz), "--settings", "monomial-sigmoid-exact", "--summary-only", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "summarised 4 records" in res.output and not (gz / "records.jsonl").exists()
    want = json.loads((src / "summary.json").read_text())["settings"]
    got = json.loads((gz / "summary.json").read_text())["settings"]
    assert got == want


@pytest.mark.parametrize(("preset", "args", "message"), [
    ("hmoe", ["--replicates", "2000000"], "--replicates must be at most"),
    ("contaminated", ["--replicates", "2000000"], "--replicates must be at most"),
    ("contaminated", ["--n-grid", "1000,1e12"], "at most"),
    ("temperature-gate", ["--seed", "-5"], "--seed"),
    ("temperature-gate", ["--workers", "0"], "--workers must be a positive integer"),
    ("hmoe", ["--threads", "-2"], "--threads must be a positive integer"),
])
def test_family_presets_bound_their_sizes_before_planning_anything(preset, args, message, tmp_path,
                                                                   monkeypatch) -> None:
    """--replicates / --n-grid / --seed have the least-squares presets' bounds for every preset
    (issue 24: a size beyond the machine is refused in one line before anything is allocated);
    the study loop is never reached (it would build the seed lists and fit)."""
    from attnmoe.estimation.study import registry

    def reached(*a, **k):
        raise AssertionError("the study loop was reached")

    monkeypatch.setattr(registry, "run_plan", reached)
    out = tmp_path / "o"
    res = _invoke("--preset", preset, *args, "--no-progress", "--out", str(out))
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


def test_summary_only_says_when_it_mixes_records_of_other_options(tmp_path: Path) -> None:
    """A resume refuses records fitted under other options; --summary-only (which fits nothing)
    still summarises them but warns with their count (before: silently)."""
    one = ["--settings", "monomial-sigmoid-exact", "--n-grid", "200,400", "--replicates", "2", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _invoke("--out", str(a), *one, "--max-iter", "3").exit_code == 0
    assert _invoke("--out", str(b), *one, "--max-iter", "4", "--seed", "10").exit_code == 0
    with (a / "records.jsonl").open("a") as fh:
        fh.write((b / "records.jsonl").read_text())
    res = _invoke("--out", str(a), "--settings", "monomial-sigmoid-exact", "--summary-only")
    assert res.exit_code == 0 and "summarised 8 records" in res.output, res.output
    assert "4 of the 8 records summarised were fitted under other options" in res.output, res.output
    clean = _invoke("--out", str(b), "--settings", "monomial-sigmoid-exact", "--summary-only")
    assert clean.exit_code == 0 and "other options" not in clean.output, clean.output
