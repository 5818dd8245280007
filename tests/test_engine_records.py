"""The version-3 engine reproduces records written by the version-2 engine (commit 556b91c) for
exact-specified settings: docs/rates/engine-v2-reference (how they were made is written there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnmoe.estimation.families.least_squares.experiment import fit_and_score
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.families.least_squares.truth import get_setting

REFERENCE = Path(__file__).parent.parent / "docs" / "rates" / "engine-v2-reference" / "exact"


@pytest.mark.parametrize("name", ["monomial-sigmoid-exact", "monomial-linear-exact",
                                  "polynomial-sigmoid-exact", "polynomial-linear-exact"])
def test_exact_specified_records_of_the_previous_engine_are_reproduced(name: str) -> None:
    options = FitOptions(**json.loads((REFERENCE / "study.json").read_text())["fit"])
    old = {(r["n"], r["seed"]): r for r in map(json.loads, (REFERENCE / "records.jsonl").read_text().splitlines())
           if r["setting"] == name}
    seeds = [1, 4, 6]  # a fixed sample; batched, as a study fits them
    for n in (1000, 4000):
        for new in fit_and_score(get_setting(name), n, seeds, options):
            ref = old[(n, new["seed"])]
            assert new["converged"] == ref["converged"] and new["iterations"] == ref["iterations"]
            for key, value in ref["losses"].items():
                assert new["losses"][key] == pytest.approx(value, rel=1e-9), (n, new["seed"], key)
