"""Noise sweeps: the slope on log(n / sigma^2), setting names, and the CLI options of the protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation import get_setting
from attnmoe.estimation.study import split_noise_name, sweep_summary
from attnmoe.estimation.families.least_squares.truth import with_noise


def test_sweep_slope_known_answer() -> None:
    """log loss = 1 - 0.3 log(n / sigma^2) + seed effect: slope -0.3 exactly, CI around it."""
    recs = []
    for seed in range(6):
        for sigma in (1e-2, 1e-3, 1e-4):
            for n in (500, 1000):
                value = math.exp(1.0 - 0.3 * math.log(n / sigma**2) + 0.1 * seed)
                recs.append({"setting": f"toy-over-sd{sigma:g}", "n": n, "seed": seed, "converged": True,
                             "losses": {"D1": value}})
    out = sweep_summary(recs)["settings"]["toy-over"]
    assert out["cells"] == 6 and out["fits"] == 36
    assert out["losses"]["D1"]["slope"] == pytest.approx(-0.3, abs=1e-12)
    assert out["losses"]["D1"]["ci_low"] == pytest.approx(-0.3, abs=1e-9)


def test_noise_names_round_trip() -> None:
    s = with_noise(get_setting("monomial-sigmoid-over"), 1e-4)
    assert s.name == "monomial-sigmoid-over-sd0.0001" and s.noise_std == 1e-4
    assert split_noise_name(s.name) == ("monomial-sigmoid-over", 1e-4)
    assert split_noise_name("monomial-sigmoid-over") == ("monomial-sigmoid-over", None)
    with pytest.raises(ValueError, match="--noise"):
        with_noise(get_setting("monomial-sigmoid-over"), -1.0)


def test_cli_noise_sweep_with_two_kinds_of_start(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, [
        "rates", "--settings", "monomial-sigmoid-over", "--n-grid", "200", "--replicates", "2",
        "--noise", "1e-2,1e-3", "--init", "near-truth:0.1+displaced:0.3", "--max-iter", "20",
        "--workers", "1", "--no-progress", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["setting"] for r in recs} == {"monomial-sigmoid-over-sd0.01", "monomial-sigmoid-over-sd0.001"}
    assert all(r["starts"] == 2 and "D1@displaced" in r["losses"] for r in recs)
    assert "monomial-sigmoid-over" in json.loads((out / "summary.json").read_text())["sweep"]["settings"]
    assert "Noise sweep" in (out / "summary.md").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--init", "nearest"], "--init"), (["--starts", "0"], "--starts"),
    (["--noise", "-1"], "--noise"), (["--near-best", "-2"], "--near-best"),
])
def test_cli_protocol_options_validated_before_writing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["rates", "--out", str(out), "--no-progress", *args])
    assert res.exit_code == 2 and message in res.output
    assert not out.exists()
