"""The family-preset registry behind ``attnmoe rates --preset NAME`` (study/families.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.study import families


@pytest.fixture
def toy_preset():
    calls: list[families.FamilyArgs] = []

    def run(args: families.FamilyArgs) -> families.FamilyResult:
        calls.append(args)
        return families.FamilyResult(fitted=3, reused=1, seconds=0.5, markdown="| toy |", files=("a.json",))

    preset = families.register_family_preset(families.FamilyPreset("toy-family", "a test family", run))
    yield calls
    families.FAMILY_PRESETS.pop(preset.name)


def test_cli_dispatches_a_family_preset_with_its_options(tmp_path: Path, toy_preset) -> None:
    result = CliRunner().invoke(
        app, ["rates", "--preset", "toy-family", "--out", str(tmp_path), "--full", "--replicates", "5",
              "--n-grid", "100,300", "--seed", "7", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    (args,) = toy_preset
    assert (args.out, args.full, args.replicates, args.n_grid, args.seed, args.progress) == (
        tmp_path, True, 5, (100, 300), 7, False)
    assert "3 fits run, 1 reused" in result.output and "| toy |" in result.output


def test_a_name_is_registered_once(toy_preset) -> None:
    other = families.FamilyPreset("toy-family", "another", lambda args: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="already registered"):
        families.register_family_preset(other)


def test_unknown_preset_lists_family_presets_too(tmp_path: Path, toy_preset) -> None:
    result = CliRunner().invoke(app, ["rates", "--preset", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "toy-family" in result.output


def test_full_on_a_preset_without_a_full_size_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["rates", "--preset", "quick", "--full", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no full size" in result.output
    assert not (tmp_path / "r").exists()
