"""``--perturb``: starts moved at rounding level, for the claims ledger's solver-path check (rule 7).

Checked against independent expectations: the move is the formula of ``perturb_starts`` (recomputed
here from its random stream), depends on the key only (not on the batch), is recorded in
``study.json`` only when used (so every committed study keeps its options hash), a resume under
another ``--perturb`` is refused, and for every family a perturbed study's records differ from the
unperturbed ones by a rounding-level amount on exact-specified fits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.families.common import MAX_PERTURB, PERTURB_STREAM, derive_seed, perturb_starts
from attnmoe.estimation.families import hmoe
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.study.engine import StudyArgs
from attnmoe.estimation.study.presets.hmoe import run_hmoe

runner = CliRunner()


def test_perturb_starts_formula_and_key_only() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64) * 3
    seeds = [7, 8, 9]
    y = perturb_starts(x, seeds, 1e-9)
    for r, s in enumerate(seeds):  # the formula, from the stream itself
        z = torch.randn(2, 4, generator=torch.Generator().manual_seed(derive_seed(s, PERTURB_STREAM)),
                        dtype=torch.float64)
        torch.testing.assert_close(y[:, r], x[:, r] + 1e-9 * x[:, r].abs().clamp(min=1.0) * z, rtol=0, atol=0)
    assert torch.equal(perturb_starts(x[:, 2:3], [9], 1e-9), y[:, 2:3])  # alone = in a batch
    assert perturb_starts(x, seeds, 0.0) is x
    assert not torch.equal(y, x)
    for bad in (-1e-9, 2 * MAX_PERTURB, float("nan")):
        with pytest.raises(ValueError, match="--perturb"):
            perturb_starts(x, seeds, bad)


def test_recorded_only_when_used() -> None:
    assert "perturb" not in FitOptions().to_dict()
    assert FitOptions(perturb=1e-9).to_dict()["perturb"] == 1e-9
    with pytest.raises(ValueError, match="perturb"):
        FitOptions(perturb=1.0)


def _records(folder: Path) -> dict:
    rows = [json.loads(v) for v in (folder / "records.jsonl").read_text().splitlines()]
    return {(r["setting"], r["n"], r["seed"]): r for r in rows}


def _check_moved(plain: Path, moved: Path) -> None:
    """Same keys; some number moved; exact-specified converged fits only at rounding level."""
    assert "perturb" not in (plain / "study.json").read_text()
    assert '"perturb": 1e-09' in (moved / "study.json").read_text()
    ra, rb = _records(plain), _records(moved)
    assert ra.keys() == rb.keys() and ra
    moved_any = False
    for key, rec in ra.items():
        other = rb[key]
        moved_any |= rec["losses"] != other["losses"]
        if key[0].endswith("exact") and rec["converged"] and other["converged"]:
            for name, v in rec["losses"].items():
                w = other["losses"][name]
                if isinstance(v, float) and isinstance(w, float) and not name.startswith("width"):
                    assert abs(w - v) <= 1e-3 * abs(v) + 1e-12, (key, name, v, w)
    assert moved_any


@pytest.mark.parametrize("family", [
    ["--preset", "quick", "--settings", "monomial-linear-exact", "--n-grid", "200,400", "--max-iter", "50"],
    ["--preset", "temperature-gate", "--n-grid", "200,400"],
], ids=["least-squares", "likelihood"])
def test_the_cli_takes_perturb_and_refuses_a_mismatched_resume(tmp_path: Path, family: list[str]) -> None:
    common = [*family, "--replicates", "2", "--workers", "1", "--no-progress"]
    plain, moved = tmp_path / "plain", tmp_path / "moved"
    a = runner.invoke(app, ["rates", *common, "--out", str(plain)])
    b = runner.invoke(app, ["rates", *common, "--perturb", "1e-9", "--out", str(moved)])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    _check_moved(plain, moved)
    # a resume with another (or no) perturbation is refused, naming the difference
    c = runner.invoke(app, ["rates", *common, "--out", str(moved)])
    assert c.exit_code == 2 and "perturb" in c.output, c.output
    d = runner.invoke(app, ["rates", *common, "--perturb", "1", "--out", str(tmp_path / "big")])
    assert d.exit_code == 2 and "--perturb" in d.output and not (tmp_path / "big" / "study.json").exists()


def test_hmoe_takes_perturb(tmp_path: Path) -> None:
    cfg = hmoe.HMoEConfig(n_test=100, max_iter=20)
    settings = hmoe.hmoe_settings(["plain"], [2])
    for folder, eps in (("plain", 0.0), ("moved", 1e-9)):
        args = StudyArgs(out=tmp_path / folder, n_grid=(40, 60), replicates=2, progress=False, perturb=eps)
        assert run_hmoe(args, cfg, settings).fitted == 4
    _check_moved(tmp_path / "plain", tmp_path / "moved")


def test_family_presets_take_a_subset_of_their_settings(tmp_path: Path) -> None:
    """--settings (for the rule-7 refits of one claim's cells): only those settings are fitted and
    recorded; an unknown one is refused in one line before anything is written."""
    for preset, grid, name in (("temperature-gate", "200,400", "temp-activation"), ("hmoe", "60,120", "plain-exact")):
        out = tmp_path / preset
        res = runner.invoke(app, ["rates", "--preset", preset, "--settings", name, "--n-grid", grid, "--replicates", "2",
                                  "--workers", "1", "--no-progress", "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert {k[0] for k in _records(out)} == {name}
        assert f'"{name}"' in (out / "study.json").read_text()  # the subset is part of the study's identity
        bad = runner.invoke(app, ["rates", "--preset", preset, "--settings", "nope", "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and "nope" in bad.output and not (tmp_path / "bad" / "study.json").exists()
