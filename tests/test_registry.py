"""The one preset table behind ``attnmoe rates --preset NAME`` (study/registry.py): a preset
registered by any family is run by the one loop with the run options and its own options."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.study import registry
from attnmoe.estimation.study.engine import StudyArgs, StudyPlan, StudySummary


def toy_fit(setting: str, n: int, seeds: list[int]) -> list[dict]:
    """A module-level unit of work: one record per seed, depending on its key only."""
    return [{"setting": setting, "n": n, "seed": s, "losses": {"D1": 1.0 / n + s * 1e-6}, "converged": True,
             "iterations": 1} for s in seeds]


@pytest.fixture
def toy_preset():
    calls: list[StudyArgs] = []

    def plan(args: StudyArgs) -> StudyPlan:
        calls.append(args)
        return StudyPlan(name="toy", config={"fit": {"toy": 1}, "version": 1}, settings=["toy"],
                         grid=args.n_grid or (100, 300), seeds=range(args.seed, args.seed + (args.replicates or 2)),
                         fit=toy_fit, split=lambda name, n, todo: [(name, n, todo)],
                         summarize=lambda records: StudySummary({"settings": {}}, "| toy |\n"))

    preset = registry.register_preset(registry.StudyPreset("toy-family", "a test family", plan, ("alpha",)))
    yield calls
    registry.PRESETS.pop(preset.name)


def test_cli_dispatches_a_registered_preset_with_its_options(tmp_path: Path, toy_preset) -> None:
    out = tmp_path / "t"
    result = CliRunner().invoke(
        app, ["rates", "--preset", "toy-family", "--out", str(out), "--full", "--replicates", "5",
              "--n-grid", "100,300", "--seed", "7", "--no-progress", "--workers", "1"],
    )
    assert result.exit_code == 0, result.output
    (args,) = toy_preset
    assert (args.out, args.full, args.replicates, args.n_grid, args.seed, args.progress) == (
        out, True, 5, (100, 300), 7, False)
    assert "10 fits run, 0 reused" in result.output and "| toy |" in result.output
    again = CliRunner().invoke(app, ["rates", "--preset", "toy-family", "--out", str(out), "--replicates", "6",
                                     "--n-grid", "100,300", "--seed", "7", "--no-progress"])
    assert again.exit_code == 0 and "2 fits run, 10 reused" in again.output, again.output


def test_an_option_the_preset_does_not_declare_is_refused_before_planning(tmp_path: Path, toy_preset) -> None:
    with pytest.raises(ValueError, match="--max-iter: not an option of the preset 'toy-family'.*--alpha"):
        registry.run_preset("toy-family", StudyArgs(out=tmp_path / "t", options={"max_iter": 3}))
    assert toy_preset == [] and not (tmp_path / "t").exists()


def test_a_name_is_registered_once(toy_preset) -> None:
    other = registry.StudyPreset("toy-family", "another", lambda args: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_preset(other)


def test_unknown_preset_lists_every_preset(tmp_path: Path, toy_preset) -> None:
    result = CliRunner().invoke(app, ["rates", "--preset", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "toy-family" in result.output and "quick" in result.output
    assert "hmoe" in result.output and "contaminated" in result.output


def test_full_on_a_preset_without_a_full_size_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["rates", "--preset", "quick", "--full", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no full size" in result.output
    assert not (tmp_path / "r").exists()
