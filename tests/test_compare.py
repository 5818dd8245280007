"""``attnmoe compare`` logic: skips finished runs, resumes interrupted ones, Welch numbers are right.

Training is replaced by a fake ``run_one`` that writes ``metrics.json`` from a known table, so
the aggregation is checked against statistics computed here from the formulas (Welch's t with
Welch-Satterthwaite degrees of freedom, p from the t distribution), not against scipy's
``ttest_ind`` that the module uses. One real tiny comparison runs through the CLI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.tasks import resolve_spec
from attnmoe.train import compare as cmp
from attnmoe.train.stats import holm
from attnmoe.train.lock import run_lock

BASE = resolve_spec("forecast", "ETTh1", horizon=96)  # the names only: no data is read

TABLE = {  # variant -> test_mse per seed
    "softmax": [0.40, 0.42, 0.41],
    "active-gelu": [0.38, 0.385, 0.39],
    "sigmoid": [0.45, 0.40, 0.50],
}


def _fake_run_one(calls: list[tuple[str, int, bool]]):
    """Records (variant, seed, whether a checkpoint was there to resume) and writes the files."""

    def run_one(spec: Any, out_dir: Path, **_: Any) -> dict[str, float]:
        with run_lock(out_dir):
            calls.append((spec.attention, spec.seed, (out_dir / "checkpoint").is_dir()))
            metrics = {"test_mse": TABLE[spec.attention][spec.seed], "test_mae": 0.1 * spec.seed,
                       "n_test_windows": 2785, "n_params": 10 + len(spec.attention), "wall_time_s": 1.0,
                       "steps": 5}
            (out_dir / "metrics.json").write_text(json.dumps(metrics))
            (out_dir / "log.jsonl").write_text(json.dumps({"step": 5, "train_loss": 1.0}) + "\n")
            return metrics

    return run_one


def test_holm_adjustment_on_a_hand_example() -> None:
    # m = 3 tests: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 = 0.04 -> running max 0.06
    got = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None})
    assert got["a"] == pytest.approx(0.03) and got["b"] == pytest.approx(0.06)
    assert got["c"] == pytest.approx(0.06) and got["d"] is None
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    return t, df, 2 * stats.t.sf(abs(t), df)


def test_comparison_skips_finished_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, bool]] = []
    monkeypatch.setattr(cmp, "run_one", _fake_run_one(calls))
    variants = list(TABLE)
    cmp.run_comparison(BASE, variants, [0, 1], tmp_path, progress=False)
    assert calls == [(v, s, False) for s in (0, 1) for v in variants]  # seed-major order

    calls.clear()
    # interrupted run: checkpoint present, no metrics.json -> resumed; finished runs skipped
    (tmp_path / "sigmoid" / "seed1" / "metrics.json").unlink()
    (tmp_path / "sigmoid" / "seed1" / "checkpoint").mkdir()
    (tmp_path / "sigmoid" / "seed1" / "checkpoint" / "state.json").write_text("{}")
    summary = cmp.run_comparison(BASE, variants, [0, 1, 2], tmp_path, progress=False)
    assert calls == [("sigmoid", 1, True), *[(v, 2, False) for v in variants]]

    for variant, values in TABLE.items():
        entry = summary["variants"][variant]
        assert entry["n"] == 3 and entry["seeds"] == [0, 1, 2]
        item = entry["metrics"]["test_mse"]
        assert item["mean"] == pytest.approx(np.mean(values))
        assert item["std"] == pytest.approx(np.sqrt(np.sum((np.array(values) - np.mean(values)) ** 2) / 2))
        if variant != "softmax":
            t, df, p = _welch_by_hand(values, TABLE["softmax"])
            got = item["welch_vs_softmax"]
            assert got["t"] == pytest.approx(t, rel=1e-10)
            assert got["df"] == pytest.approx(df, rel=1e-10)
            assert got["p"] == pytest.approx(p, rel=1e-8)
            d = [x - y for x, y in zip(values, TABLE["softmax"])]
            md, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
            t_pair = md / (sd / math.sqrt(3))
            pair = item["paired_vs_softmax"]
            assert pair["n_pairs"] == 3 and pair["mean_diff"] == pytest.approx(md, rel=1e-12)
            assert pair["t"] == pytest.approx(t_pair, rel=1e-10)
            assert pair["p"] == pytest.approx(2 * stats.t.sf(abs(t_pair), 2), rel=1e-8)
    assert "welch_vs_softmax" not in summary["variants"]["softmax"]["metrics"]["test_mse"]
    # Holm over the paired tests of the non-baseline variants, by hand: sort, scale, running max
    raw = {v: summary["variants"][v]["metrics"]["test_mse"]["paired_vs_softmax"]["p"]
           for v in TABLE if v != "softmax"}
    order = sorted(raw, key=raw.get)
    expected, running = {}, 0.0
    for i, v in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * raw[v]))
        expected[v] = running
    for v, p_raw in raw.items():
        got = summary["variants"][v]["metrics"]["test_mse"]["paired_vs_softmax"]["p_holm"]
        assert got == pytest.approx(expected[v], rel=1e-12) and got >= p_raw
    md = (tmp_path / "summary.md").read_text()
    assert "Not finished: none" in md and "| active-gelu | 3 |" in md
    assert (tmp_path / "curves.png").stat().st_size > 1000
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["variants"]["sigmoid"]["metrics"]["test_mse"]["values"] == TABLE["sigmoid"]

    with pytest.raises(ValueError, match="dataset"):
        cmp.run_comparison(resolve_spec("forecast", "ETTh2"), variants, [0], tmp_path, progress=False)


def test_partial_comparison_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cmp, "run_one", _fake_run_one([]))
    cmp.run_comparison(BASE, ["softmax", "active-gelu"], [0], tmp_path, progress=False)
    (tmp_path / "comparison.json").write_text(json.dumps({
        **json.loads((tmp_path / "comparison.json").read_text()), "seeds": [0, 1]}))
    summary = cmp.summarize_comparison(tmp_path)
    assert summary["variants"]["active-gelu"]["metrics"]["test_mse"]["welch_vs_softmax"] is None
    md = (tmp_path / "summary.md").read_text()
    assert "softmax/seed1" in md and "active-gelu/seed1" in md


def test_parse_seeds_and_variants() -> None:
    assert cmp.parse_seeds("3") == [0, 1, 2] and cmp.parse_seeds("4,7") == [4, 7]
    for bad in ("0", "x", "1,1", "-1,2"):
        with pytest.raises(ValueError, match="--seeds"):
            cmp.parse_seeds(bad)
    assert cmp.parse_variants("softmax, active-gelu+gated-g1") == ["softmax", "active-gelu+gated-g1"]
    with pytest.raises(ValueError):
        cmp.parse_variants("softmax,nonsense")


def test_compare_cli_tiny_real_runs(tmp_path: Path) -> None:
    args = ["compare", "--task", "vision", "--dataset", "digits", "--attention", "softmax,sigmoid",
            "--seeds", "1", "--steps", "2", "--batch-size", "16", "--model", "dim=8",
            "--model", "depth=1", "--model", "heads=2", "--out", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(summary["variants"][v]["n"] == 1 for v in ("softmax", "sigmoid"))
    for v in ("softmax", "sigmoid"):
        assert (tmp_path / v / "seed0" / "metrics.json").is_file()
    stamp = (tmp_path / "softmax" / "seed0" / "metrics.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "softmax" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp
    bad = CliRunner().invoke(app, [*args[:5], "softmax,bogus", *args[6:]])
    assert bad.exit_code == 2 and "bogus" in bad.output


def test_exact_paired_permutation_p_by_enumeration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``p_exact`` = share of the 2^k sign patterns of the per-seed differences whose |sum| is at
    least the observed one, enumerated here by hand; Holm-adjusted like the t-test p."""
    import itertools

    table = {"softmax": [0.40, 0.42, 0.41, 0.43, 0.39],
             "active-gelu": [0.38, 0.385, 0.39, 0.44, 0.37],  # 4 of 5 below softmax
             "sigmoid": [0.45, 0.40, 0.50, 0.46, 0.41]}
    monkeypatch.setitem(TABLE, "softmax", table["softmax"])
    monkeypatch.setitem(TABLE, "active-gelu", table["active-gelu"])
    monkeypatch.setitem(TABLE, "sigmoid", table["sigmoid"])
    monkeypatch.setattr(cmp, "run_one", _fake_run_one([]))
    summary = cmp.run_comparison(BASE, list(table), list(range(5)), tmp_path, progress=False)
    raw = {}
    for v in ("active-gelu", "sigmoid"):
        d = [x - y for x, y in zip(table[v], table["softmax"])]
        observed = abs(sum(d))
        hits = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-15
                   for signs in itertools.product((1, -1), repeat=len(d)))
        pair = summary["variants"][v]["metrics"]["test_mse"]["paired_vs_softmax"]
        assert pair["p_exact"] == pytest.approx(hits / 2 ** len(d), rel=1e-12)
        assert pair["exact"] == "exact" and pair["p_exact"] >= 2 / 2**5
        assert pair["n_negative"] + pair["n_positive"] == 5
        raw[v] = pair["p_exact"]
    lo, hi = sorted(raw.values())
    for v, p in raw.items():  # Holm with m = 2
        want = 2 * lo if p == lo else max(2 * lo, hi)
        got = summary["variants"][v]["metrics"]["test_mse"]["paired_vs_softmax"]["p_exact_holm"]
        assert got == pytest.approx(min(1.0, want))
    md = (tmp_path / "summary.md").read_text()
    assert "| exact p | Holm (exact) |" in md


def test_reuse_takes_committed_runs_of_the_same_recipe_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--reuse``: seeds 0-1 of a committed summary are taken (not retrained) and seed 2 is
    trained; the extended summary holds the committed values exactly; a summary of another
    recipe is refused before anything is written; an existing run directory is never overwritten."""
    calls: list[tuple[str, int, bool]] = []
    monkeypatch.setattr(cmp, "run_one", _fake_run_one(calls))
    variants = ["softmax", "active-gelu"]
    first = tmp_path / "first"
    cmp.run_comparison(BASE, variants, [0, 1], first, progress=False)
    committed = tmp_path / "committed.json"
    committed.write_text((first / "summary.json").read_text())
    calls.clear()

    extended = tmp_path / "extended"
    lines: list[str] = []
    summary = cmp.run_comparison(BASE, variants, [0, 1, 2], extended, progress=False, reuse=committed,
                                 report=lines.append)
    assert calls == [(v, 2, False) for v in variants]  # only the new seed trained
    assert sum("reused" in line for line in lines) == 4
    for v in variants:
        runs = {r["seed"]: r for r in summary["variants"][v]["runs"]}
        assert [runs[s]["test_mse"] for s in (0, 1, 2)] == TABLE[v]
        assert runs[0]["reused_from"]["file"] == str(committed) and "reused_from" not in runs[2]
        saved = json.loads((extended / v / "seed0" / "reused.json").read_text())
        assert saved["spec"]["attention"] == v and saved["spec"]["seed"] == 0
    assert "| softmax | 0 *reused* |" in (extended / "summary.md").read_text()

    # reusing again (or a second extension) changes nothing on disk
    stamp = (extended / "softmax" / "seed2" / "metrics.json").stat().st_mtime_ns
    cmp.run_comparison(BASE, variants, [0, 1, 2], extended, progress=False, reuse=committed)
    assert (extended / "softmax" / "seed2" / "metrics.json").stat().st_mtime_ns == stamp
    assert len(calls) == 2

    # another recipe: refused, naming the field, before the directory is created
    other = tmp_path / "other"
    with pytest.raises(ValueError, match="horizon: 96 -> 336"):
        cmp.run_comparison(resolve_spec("forecast", "ETTh1", horizon=336), variants, [0], other,
                           progress=False, reuse=committed)
    with pytest.raises(ValueError, match="epochs"):
        cmp.run_comparison(resolve_spec("forecast", "ETTh1", horizon=96, overrides={"epochs": 2}),
                           variants, [0], other, progress=False, reuse=committed)
    assert not other.exists()
    # an older summary (task/dataset/horizon/overrides, no spec) is checked the same way
    old = json.loads(committed.read_text())
    old.pop("spec", None)
    old.update({"horizon": 96, "overrides": {"epochs": 2.0}})
    committed.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="epochs: 2.0 -> 10"):
        cmp.run_comparison(BASE, variants, [0], other, progress=False, reuse=committed)
    with pytest.raises(ValueError, match="no such file"):
        cmp.run_comparison(BASE, variants, [0], other, progress=False, reuse=tmp_path / "missing.json")
