"""ONE table of fit defaults (``estimation/families/options.py``) and no number moved with it:
every options object takes its defaults from the table, and every committed study in
``docs/rates/`` is what the current presets would write (its ``study.json`` dict and the
``options_hash`` stamped on its records), so resuming any of them still works."""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.families.hmoe import HMoEConfig
from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.families.likelihood.experiment import FIT_OPTIONS
from attnmoe.estimation.families.likelihood.objective import fit_likelihood
from attnmoe.estimation.families.likelihood.settings import START_KINDS
from attnmoe.estimation.families.options import FIT_DEFAULTS, defaults
from attnmoe.estimation.study.engine import StudyArgs
from attnmoe.estimation.study.records import STUDY_VERSION, identity_of, jsonable
from attnmoe.estimation.study.registry import preset_table

RATES = Path(__file__).parent.parent / "docs" / "rates"

#: committed study folder -> (preset, StudyArgs fields) of the command that wrote it
#: (attnmoe.claims.registry.STUDY_COMMANDS, docs/rates.md, docs/rates/engine-v2-reference/README.md;
#: grids and replicates do not enter study.json and are left out)
STUDIES: dict[str, tuple[str, dict]] = {
    "contaminated": ("contaminated", {}),
    "contaminated-full": ("contaminated", {"full": True}),
    "cosine-router": ("cosine-router", {}),
    "hmoe": ("hmoe", {}),
    "hmoe-full": ("hmoe", {"full": True}),
    "hmoe-full-perturbed": ("hmoe", {"full": True, "perturb": 1e-9, "options": {"settings": ["G1-over", "G2-over"]}}),
    "identifiability": ("identifiability", {}),
    "engine-v2-reference/exact": ("quick", {"options": {"settings": [
        "monomial-sigmoid-exact", "monomial-linear-exact", "polynomial-sigmoid-exact", "polynomial-linear-exact"]}}),
    "engine-v2-reference/over": ("quick", {"options": {"max_iter": 500, "settings": [
        "monomial-sigmoid-over", "monomial-linear-over", "polynomial-sigmoid-over", "polynomial-linear-over"]}}),
    "equivalence/eq-ngrid": ("paper", {"options": {"settings": ["monomial-sigmoid-over"], "noise": [1e-3]}}),
    "equivalence/eq-sweep": ("paper", {"options": {"settings": ["monomial-sigmoid-over"],
                                                   "noise": [1e-3, 5.62e-4, 3.16e-4]}}),
    "multinomial-logistic": ("multinomial-logistic", {}),
    "multinomial-logistic-box": ("multinomial-logistic-box", {}),
    "multinomial-logistic-full": ("multinomial-logistic", {"full": True}),
    "paper-over-v3": ("paper", {"options": {"block_size": 8, "settings": [
        "monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over", "polynomial-sigmoid-over"]}}),
    "paper-over-numba-v3": ("paper", {"options": {"block_size": 8, "assembly": "numba", "settings": [
        "monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over", "polynomial-sigmoid-over"]}}),
    "paper-over-v3-perturbed": ("paper", {"perturb": 1e-9, "options": {"block_size": 8, "settings": [
        "monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over", "polynomial-sigmoid-over"]}}),
    "sgate-natural": ("sigmoid-gating-natural", {}),
    "sigmoid-attention": ("sigmoid-attention", {}),
    "sigmoid-gating": ("sigmoid-gating", {}),
    "temperature-gate": ("temperature-gate", {}),
    "temperature-gate-full": ("temperature-gate", {"full": True}),
    "temperature-identifiable": ("temperature-identifiable", {}),
    "temperature-identifiable-full": ("temperature-identifiable", {"full": True}),
    "topk-gaussian": ("topk-gaussian", {}),
    "topk-gaussian-full": ("topk-gaussian", {"full": True}),
    "topk-gaussian-full-perturbed": ("topk-gaussian", {"full": True, "perturb": 1e-9,
                                                       "options": {"settings": ["topk-over-K3"]}}),
}

#: committed studies whose options no current preset can write: version-1 fits with fields the
#: options objects no longer have (L-BFGS ``tol`` without ``dtol``/``starts``/``near_best``, a
#: ``scorer``, the likelihood's single ``start``). A resume of a version-1 study is refused anyway.
LEGACY: dict[str, str] = {
    ".": "version 1, lbfgs, fit.scorer",
    "paper-40": "version 1, lbfgs (no dtol / starts / near_best)",
    "v1-lbfgs500": "version 1, lbfgs, fit.scorer",
    "contaminated-wide": "version 1, one start (fit.start)",
    "paper-over-numba": "numba kernel version 1 (no fit.assembly_version); kernel 2 rounds gradient and Hessian "
                        "differently, so a resume is refused",
}


def _hashes(folder: Path) -> set[str | None]:
    """The ``options_hash`` values of a study's records (None: records written before the hash)."""
    path = folder / "records.jsonl"
    opener = open
    if not path.exists():
        path, opener = folder / "records.jsonl.gz", gzip.open
    if not path.exists():
        return set()
    with opener(path, "rt", encoding="utf-8") as f:
        return {json.loads(line).get("options_hash") for line in f if line.strip()}


def test_every_options_object_takes_its_defaults_from_the_one_table() -> None:
    """FitOptions, HMoEConfig and FIT_OPTIONS hold the table's values, field for field and in
    the table's order; so do the keyword defaults of the families' fit functions."""
    assert set(FIT_DEFAULTS) == {"least_squares", "likelihood", "hmoe"}
    ls = dataclasses.asdict(FitOptions())
    assert list(ls.items()) == list(FIT_DEFAULTS["least_squares"].items())
    assert list(dataclasses.asdict(HMoEConfig()).items()) == list(FIT_DEFAULTS["hmoe"].items())
    assert {k: v for k, v in FIT_OPTIONS.items() if k != "starts"} == defaults("likelihood")
    assert FIT_OPTIONS["starts"] == list(START_KINDS)
    solver = inspect.signature(fit_least_squares).parameters
    for name in ("method", "max_iter", "tol", "dtol", "bound"):
        assert solver[name].default == FIT_DEFAULTS["least_squares"][name], name
    lik = inspect.signature(fit_likelihood).parameters
    for name in ("max_iter", "dtol"):
        assert lik[name].default == FIT_DEFAULTS["likelihood"][name], name
    with pytest.raises(TypeError):
        FIT_DEFAULTS["hmoe"]["max_iter"] = 1  # type: ignore[index]  # read-only
    with pytest.raises(ValueError, match="unknown family 'nope'; choose among least_squares"):
        defaults("nope")


def test_every_committed_study_is_listed() -> None:
    """A study committed later must join STUDIES (or LEGACY), so the check below covers it."""
    on_disk = {str(p.parent.relative_to(RATES)) for p in RATES.glob("**/study.json")}
    assert on_disk == set(STUDIES) | set(LEGACY)


@pytest.mark.parametrize("folder", sorted(STUDIES))
def test_committed_study_options_and_hash_are_what_the_presets_write(folder: str, tmp_path: Path) -> None:
    """The plan the current code builds for the committed command has the ``study.json`` dict on
    file and hence its options hash; records that carry a hash carry this one. A study written by
    an older fitting-code version differs in ``version`` only (its fit options are the preset's)."""
    preset, fields = STUDIES[folder]
    args = StudyArgs(out=tmp_path / "out", **fields)
    plan = preset_table()[preset].plan(args)
    want = jsonable(plan.config)
    on_file = json.loads((RATES / folder / "study.json").read_text(encoding="utf-8"))
    if on_file["version"] != want["version"]:  # least squares: versions 1 and 2 before STUDY_VERSION
        assert want["version"] == STUDY_VERSION and "preset" not in want, folder
        want = {**want, "version": on_file["version"]}
    assert want == on_file
    assert json.dumps(want["fit"], sort_keys=True) == json.dumps(on_file["fit"], sort_keys=True)
    hashes = _hashes(RATES / folder) - {None}
    assert hashes <= {identity_of(want)}, (folder, hashes, identity_of(want))


@pytest.mark.parametrize(("folder", "preset"), [("sigmoid-gating", "sigmoid-gating"),
                                                ("multinomial-logistic", "multinomial-logistic"),
                                                ("hmoe", "hmoe")])
def test_summary_only_rewrites_a_committed_study_of_each_family_byte_for_byte(folder: str, preset: str,
                                                                             tmp_path: Path) -> None:
    """``attnmoe rates --preset P --summary-only`` on a copy of a committed study (least squares,
    likelihood, hmoe) writes its summary.json and summary.md byte for byte (hmoe's summary.json
    also records the fit options) and leaves study.json as it was."""
    out = tmp_path / folder
    shutil.copytree(RATES / folder, out)
    res = CliRunner().invoke(app, ["rates", "--preset", preset, "--summary-only", "--no-progress",
                                   "--workers", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("summary.json", "summary.md", "study.json"):
        assert (out / name).read_bytes() == (RATES / folder / name).read_bytes(), name
