"""The claims ledger: the verdict rule on synthetic records with known truth, the command end to
end on a temporary folder, and the committed ledger regenerated identically."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from attnmoe.claims import CLAIMS, Claim, RateArm, RealArm, evaluate
from attnmoe.claims.ledger import CONFIRMED, CONTRADICTED, NOT_TESTABLE, PERTURBED, UNDECIDED, VERDICTS
from attnmoe.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIZES = (1000, 3162, 10000, 31623, 100000)


def _records(setting: str, slope: float, seeds: int, rng: np.random.Generator, *, sd: float = 0.05,
             converged: bool = True, loss: str = "D1", noise_grid: tuple[float, ...] = ()) -> list[dict]:
    out = []
    for s in range(seeds):
        b = slope + rng.normal(0.0, sd)
        a = rng.normal()
        cells = [(setting, n, n) for n in SIZES] if not noise_grid else \
            [(f"{setting}-sd{sig:g}", 1000, 1000 / sig**2) for sig in noise_grid]
        for name, n, x in cells:
            value = math.exp(a + b * math.log(x) + rng.normal(0.0, 0.02))
            out.append({"setting": name, "n": n, "seed": s, "losses": {loss: value}, "converged": converged,
                        "iterations": 10})
    return out


def _write(docs: Path, study: str, records: list[dict], name: str = "records.jsonl") -> None:
    folder = docs / "rates" / study
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    if name.endswith(".gz"):
        with gzip.open(folder / name, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        (folder / name).write_text(text + "not json\n", encoding="utf-8")  # a bad line is skipped


def _summary(docs: Path, name: str, metric: str, diffs: dict[str, list[float]]) -> None:
    folder = docs / "results" / name
    folder.mkdir(parents=True, exist_ok=True)
    seeds = max(len(d) for d in diffs.values())
    variants = {"softmax": {"runs": [{"seed": s, metric: 1.0 + 0.01 * s} for s in range(seeds)]}}
    for v, d in diffs.items():
        variants[v] = {"runs": [{"seed": s, metric: 1.0 + 0.01 * s + d[s]} for s in range(len(d))]}
    (folder / "summary.json").write_text(json.dumps({"primary_metric": metric, "variants": variants}))


def _claim(cid: str, arms: tuple, predicted: float | str, competing: float, family: str = "none", **kw) -> Claim:
    return Claim(cid, "test", cid, arms, predicted, competing, family, **kw)


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    recs = (_records("fast", -0.5, 40, rng) + _records("slow", -0.25, 40, rng) + _records("mid", -0.375, 40, rng, sd=0.01)
            + _records("few", -0.5, 4, rng, sd=0.3) + _records("unconv", -0.5, 40, rng, converged=False)
            + _records("flat", -0.2, 40, rng))
    _write(tmp_path, "toy", recs)
    _write(tmp_path, "toygz", _records("fast", -0.5, 20, rng), name="records.jsonl.gz")
    _write(tmp_path, "sweep", _records("sw", -0.25, 12, rng, noise_grid=(1e-2, 1e-3, 1e-4)), name="near-truth.jsonl")
    _summary(tmp_path, "cmp", "test_mse", {"good": list(rng.normal(-0.01, 0.002, 12)), "bad": list(rng.normal(0.01, 0.002, 12)),
                                            "tiny": [-0.01, -0.011, -0.009]})
    return tmp_path


def _verdicts(docs: Path, claims: list[Claim]) -> dict[str, str]:
    return {r.claim.id: r.verdict for r in evaluate(docs, claims)}


def test_rate_rule_on_known_truth(synthetic: Path) -> None:
    arm = lambda s, study="toy": RateArm(study, s, "D1")
    got = _verdicts(synthetic, [
        _claim("true-fast", (arm("fast"),), -0.5, -0.25),
        _claim("true-slow", (arm("slow"),), -0.5, -0.25),
        _claim("between", (arm("mid"),), -0.5, -0.25),
        _claim("few-seeds", (arm("few"),), -0.5, -0.25),
        _claim("unconverged", (arm("unconv"),), -0.5, -0.25),
        _claim("gz", (RateArm("toygz", "fast", "D1", records="records.jsonl"),), -0.5, -0.25),
        _claim("sweep", (RateArm("sweep", "sw", "D1", sweep=True, records="near-truth.jsonl"),), -0.25, 0.0),
        _claim("untestable", (arm("fast"),), "less", 0.0, testable="a lower bound"),
        _claim("blocked", (arm("fast"),), -0.5, -0.25, blocker=("method", "no box")),
    ])
    assert got == {"true-fast": CONFIRMED, "true-slow": CONTRADICTED, "between": UNDECIDED, "few-seeds": UNDECIDED,
                   "unconverged": UNDECIDED, "gz": CONFIRMED, "sweep": CONFIRMED, "untestable": NOT_TESTABLE,
                   "blocked": UNDECIDED}


def test_causes_and_power(synthetic: Path) -> None:
    rows = {r.claim.id: r for r in evaluate(synthetic, [
        _claim("between", (RateArm("toy", "mid", "D1"),), -0.5, -0.25),
        _claim("few", (RateArm("toy", "few", "D1"),), -0.5, -0.25),
        _claim("unconv", (RateArm("toy", "unconv", "D1"),), -0.5, -0.25)])}
    assert rows["between"].cause.startswith("method")
    assert rows["few"].cause.startswith("compute") and rows["unconv"].cause.startswith("software")
    few = rows["few"]
    # power by hand: smallest S with noncentral-t power >= 0.8 for the gap 0.25 at the per-seed sd
    sd = np.std(few.values, ddof=1)
    s = next(s for s in range(2, 10000) if sps.nct.sf(sps.t.ppf(0.975, s - 1), s - 1, 0.25 * math.sqrt(s) / sd)
             + sps.nct.cdf(-sps.t.ppf(0.975, s - 1), s - 1, 0.25 * math.sqrt(s) / sd) >= 0.8)
    assert few.seeds_needed == max(s, 6)  # 6: fewest seeds whose exact sign-flip p can be < 0.05
    assert few.decades_needed == pytest.approx(few.span * math.sqrt(few.seeds_needed / 4))


def test_contrast_rule_and_lower_bound_arm(synthetic: Path) -> None:
    fast, flat = RateArm("toy", "fast", "D1"), RateArm("toy", "flat", "D1")
    got = _verdicts(synthetic, [
        _claim("faster", (fast, flat), "less", 0.0),
        _claim("reversed", (flat, fast), "less", 0.0),
        _claim("reversed-lower-bound", (flat, fast), "less", 0.0, contradictable=False)])
    assert got == {"faster": CONFIRMED, "reversed": CONTRADICTED, "reversed-lower-bound": UNDECIDED}


def test_projected_cost_of_the_decisive_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    recs = _records("few", -0.4, 4, rng, sd=0.3) + _records("few2", -0.3, 4, rng, sd=0.3)
    for r in recs:
        r["seconds"] = 2.0 if r["setting"] == "few" else 3.0
        r["losses"]["D2"] = r["losses"]["D1"] ** 1.2
    _write(tmp_path, "timed", recs)
    _write(tmp_path, "untimed", _records("few", -0.4, 4, rng, sd=0.3))
    rows = {r.claim.id: r for r in evaluate(tmp_path, [
        _claim("over", (RateArm("timed", "few", "D1"), RateArm("timed", "few2", "D1")), "less", 0.0, overspecified=True),
        _claim("same-cells-twice", (RateArm("timed", "few", "D1"), RateArm("timed", "few", "D2")), "less", 0.0),
        _claim("untimed", (RateArm("untimed", "few", "D1"),), -0.5, -0.25)])}
    over = rows["over"]
    assert over.verdict == UNDECIDED and over.seed_seconds == pytest.approx(len(SIZES) * (2.0 + 3.0))
    assert over.seeds_to_run == max(over.seeds_needed, 24)
    assert over.cpu_hours_needed == pytest.approx(over.seeds_to_run * len(SIZES) * 5.0 / 3600)
    assert rows["same-cells-twice"].seed_seconds == pytest.approx(len(SIZES) * 2.0)  # one setting timed once
    assert rows["untimed"].cpu_hours_needed is None
    # an over-specified claim spanning < 2 decades is projected at n = 1e3..1e5 from a power law
    narrow = [r for r in _records("nar", -0.4, 4, rng, sd=0.3) if r["n"] <= 10000]
    for r in narrow:
        r["seconds"] = 1e-3 * r["n"] ** 1.5
    _write(tmp_path, "narrow", narrow)
    row = evaluate(tmp_path, [_claim("narrow", (RateArm("narrow", "nar", "D1"),), -0.5, -0.25, overspecified=True)])[0]
    grid = np.round(np.logspace(3, 5, 9))
    assert row.seed_seconds == pytest.approx(float(np.sum(1e-3 * grid**1.5)), rel=1e-6)


def test_rule_7_solver_path_robustness(synthetic: Path) -> None:
    """An over-specified verdict stands only if the perturbed refits give the same word; without
    refits it is not stated; exact-specified rows are not affected."""
    rng = np.random.default_rng(11)
    # refits: "fast" keeps its rate, "fast2" (a copy of fast in the original records) turns slow
    _write(synthetic, "toy", _records("fast", -0.5, 40, rng) + _records("fast2", -0.5, 40, rng))
    _write(synthetic, "toy" + PERTURBED, _records("fast", -0.5, 40, rng) + _records("fast2", -0.25, 40, rng))
    _write(synthetic, "other", _records("fast", -0.5, 40, rng))  # no perturbed refits of this study
    _write(synthetic, "part", _records("fast", -0.5, 40, rng))
    _write(synthetic, "part" + PERTURBED, _records("fast", -0.5, 39, rng))  # refits of 39 of the 40 seeds
    arm = lambda s, study="toy": RateArm(study, s, "D1")
    rows = {r.claim.id: r for r in evaluate(synthetic, [
        _claim("stable", (arm("fast"),), -0.5, -0.25, overspecified=True),
        _claim("flips", (arm("fast2"),), -0.5, -0.25, overspecified=True),
        _claim("unchecked", (arm("fast", "other"),), -0.5, -0.25, overspecified=True),
        _claim("exact", (arm("fast", "other"),), -0.5, -0.25),
        _claim("partial", (arm("fast", "part"),), -0.5, -0.25, overspecified=True)])}
    assert {k: r.verdict for k, r in rows.items()} == {
        "stable": CONFIRMED, "flips": UNDECIDED, "unchecked": UNDECIDED, "exact": CONFIRMED, "partial": UNDECIDED}
    assert rows["partial"].robustness.startswith("not checked")  # refits must cover every cell the claim reads
    assert rows["flips"].cause.startswith("solver-path dependent") and "contradicted" in rows["flips"].cause
    assert rows["unchecked"].cause.startswith("compute") and "other-perturbed" in rows["unchecked"].cause
    assert rows["stable"].robustness.startswith("checked") and rows["exact"].robustness.startswith("not needed")


def test_real_data_rule_sign_flip_floor_and_holm(synthetic: Path) -> None:
    rows = {r.claim.id: r for r in evaluate(synthetic, [
        _claim("good", (RealArm("cmp", "good"),), "better", 0.0, family="fam"),
        _claim("bad", (RealArm("cmp", "bad"),), "better", 0.0, family="fam"),
        _claim("tiny", (RealArm("cmp", "tiny"),), "better", 0.0, family="fam")])}
    assert rows["good"].verdict == CONFIRMED and rows["bad"].verdict == CONTRADICTED
    # 3 seeds: the exact sign-flip p is 0.25 at best, so no verdict, however small the t-test p
    assert rows["tiny"].sign_flip == (pytest.approx(0.25), "exact") and rows["tiny"].verdict == UNDECIDED
    # Holm over the family "fam", by hand
    ps = sorted((r.p_competing, k) for k, r in rows.items())
    adj, run = {}, 0.0
    for i, (p, k) in enumerate(ps):
        run = max(run, min(1.0, (3 - i) * p))
        adj[k] = run
    assert {k: r.holm_competing for k, r in rows.items()} == pytest.approx(adj)


def _synthetic_docs_for_registry(docs: Path) -> None:
    """Synthetic records for every study, setting and comparison the registry reads."""
    rng = np.random.default_rng(11)
    files: dict[tuple[str, str], list[dict]] = {}
    seen: set[tuple[str, str, str]] = set()
    results: dict[str, set[str]] = {}
    for c in CLAIMS:
        for a in c.arms:
            if isinstance(a, RealArm):
                results.setdefault(a.result, set()).update({a.variant, a.baseline})
                continue
            key = (a.study, a.records.removesuffix(".gz"), a.setting)
            if key in seen:
                continue
            seen.add(key)
            recs = _records(a.setting, -0.5, 6, rng, noise_grid=(1e-2, 1e-3, 1e-4) if a.sweep else ())
            losses = {a2.loss for c2 in CLAIMS for a2 in c2.arms if isinstance(a2, RateArm) and a2.setting == a.setting}
            for r in recs:
                r["losses"] = {k: r["losses"]["D1"] for k in losses}
            files.setdefault((a.study, a.records), []).extend(recs)
    for (study, name), recs in files.items():
        _write(docs, study, recs, name=name)
    for name, variants in results.items():
        _summary(docs, name, "val_loss", {v: list(rng.normal(0, 0.01, 3)) for v in variants if v != "softmax"})


def test_command_end_to_end_on_a_temporary_folder(tmp_path: Path) -> None:
    _synthetic_docs_for_registry(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["claims", "--docs", str(tmp_path)])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "claims.md").read_text()
    data = json.loads((tmp_path / "claims.json").read_text())
    assert [r["id"] for r in data["rows"]] == [c.id for c in CLAIMS]
    assert {r["verdict"] for r in data["rows"]} <= set(VERDICTS)
    for c in CLAIMS:
        assert f'<a id="{c.id}"></a>' in md
    assert not list(tmp_path.glob(".claims*.tmp*"))  # temporary files renamed away
    assert runner.invoke(app, ["claims", "--docs", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "claims.md").write_text(md.replace("confirmed", "confirmd", 1))
    assert runner.invoke(app, ["claims", "--docs", str(tmp_path), "--check"]).exit_code == 1


def test_command_bad_input_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["claims", "--docs", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "needs the folders rates/ and results/" in res.output
    _synthetic_docs_for_registry(tmp_path)
    (tmp_path / "claims.md").write_text("old\n")
    (tmp_path / "rates" / "hmoe-full" / "records.jsonl").unlink()
    res = runner.invoke(app, ["claims", "--docs", str(tmp_path)])
    assert res.exit_code == 2 and re.search(r"hmoe-full/records.jsonl: no such records file", res.output)
    assert (tmp_path / "claims.md").read_text() == "old\n"  # nothing written on failure


def test_committed_ledger_is_regenerated_identically() -> None:
    res = CliRunner().invoke(app, ["claims", "--docs", str(DOCS), "--check"])
    assert res.exit_code == 0, res.output


def test_every_ledger_link_of_the_result_pages_names_a_registered_claim() -> None:
    ids = {c.id for c in CLAIMS}
    for page in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"claims\.md#([A-Za-z0-9_.-]+)", page.read_text(encoding="utf-8")):
            assert target in ids, f"{page.name} links claims.md#{target}, which is not a ledger row"


def test_corrected_page_numbers_agree_with_the_studies_own_summaries() -> None:
    """``python -m attnmoe.claims.checks`` against the numbers the study code wrote itself."""
    from attnmoe.claims import checks

    summary = json.loads((DOCS / "rates/identifiability/summary.json").read_text())["settings"]
    conv = sum(round(v["converged_fraction"] * v["fits"]) for v in summary.values())
    assert checks.identifiability_converged(DOCS) == (conv, sum(v["fits"] for v in summary.values()))
    p, where, variant = checks.smallest_holm(DOCS)
    own = json.loads((DOCS / "results" / where / "summary.json").read_text())
    assert own["variants"][variant]["metrics"][own["primary_metric"]]["paired_vs_softmax"]["p_holm"] == p
    # the sweep's local slopes by hand: per-cell mean log loss, successive differences over log(n/sigma^2)
    local, _ = checks.sweep_local_slopes(DOCS, "monomial-sigmoid-over")
    cells: dict[float, list[float]] = {}
    for line in (DOCS / "rates/sweep-n1000/near-truth.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["setting"].startswith("monomial-sigmoid-over-sd"):
            sig = float(r["setting"].split("-sd")[1])
            cells.setdefault(math.log(1000 / sig**2), []).append(math.log(r["losses"]["expert"]))
    xs = sorted(cells)
    ref = [(np.mean(cells[b]) - np.mean(cells[a])) / (b - a) for a, b in itertools.pairwise(xs)]
    assert local == pytest.approx(ref)
