"""The run spec: one definition of every default, validation naming the option, round trips."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from attnmoe.tasks import (
    DIGITS_RECIPE,
    FORECAST_RECIPE,
    LM_RECIPE,
    VISION_RECIPE,
    RunSpec,
    reference_spec,
    resolve_spec,
    task_entry,
    task_names,
)


def test_recipes_are_specs_and_tasks_are_registered() -> None:
    assert set(task_names()) == {"vision", "lm", "forecast"}
    assert reference_spec("vision", "fashion-mnist") == VISION_RECIPE
    assert reference_spec("vision", "digits") == DIGITS_RECIPE
    assert reference_spec("lm", "shakespeare") == LM_RECIPE
    assert reference_spec("forecast", "ETTh1") == FORECAST_RECIPE
    ili = reference_spec("forecast", "illness")  # the data set's standard lengths
    assert (ili.model["seq_len"], ili.horizon) == (36, 24)
    assert {t: task_entry(t).primary_metric for t in task_names()} == {
        "vision": "test_accuracy", "lm": "val_loss", "forecast": "test_mse"}


def test_round_trips() -> None:
    spec = resolve_spec("forecast", "etth2", attention="gated-g1", seed=4, horizon=336,
                        overrides={"lr": 3e-4, "d_model": 64, "steps": 10})
    assert spec.dataset == "ETTh2" and spec.epochs is None and spec.model["d_model"] == 64
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec and copy.deepcopy(spec) == spec
    with pytest.raises(TypeError):
        spec.model["d_model"] = 3  # type: ignore[index]
    other = spec.override(lr=1e-3, model={"heads": 4})
    assert spec.differences(other) == ["model.heads: 8 -> 4", "lr: 0.0003 -> 0.001"]
    assert spec.differences(spec) == []


@pytest.mark.parametrize(("changes", "message"), [
    ({"seed": -1}, "--seed"),
    ({"steps": 0}, "--steps"),
    ({"epochs": 0.0}, "--epochs"),
    ({"batch_size": 2.5}, "--batch-size"),
    ({"lr": float("inf")}, "--lr"),
    ({"beta2": 1.0}, "--beta2"),
    ({"precision": "int8"}, "--precision"),
    ({"horizon": 0}, "--horizon"),
])
def test_invalid_values_name_the_option(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FORECAST_RECIPE.override(**changes)


def test_override_rules() -> None:
    with pytest.raises(ValueError, match="exactly one of --steps or --epochs"):
        FORECAST_RECIPE.override(steps=5, epochs=2.0)
    with pytest.raises(ValueError, match="unknown --model key"):
        resolve_spec("vision", "digits", overrides={"d_model": 3})
    with pytest.raises(ValueError, match="--horizon is only used by the forecast task"):
        resolve_spec("lm", "shakespeare", horizon=3)
    with pytest.raises(ValueError, match="unknown forecast data set 'ETTH3'; did you mean one of 'ETTh[12]', 'ETTh[12]'"):
        resolve_spec("forecast", "ETTH3")
    with pytest.raises(ValueError, match="--features only applies to the forecast task, not 'vision'"):
        resolve_spec("vision", "digits", overrides={"features": "S"})
    with pytest.raises(ValueError, match="--features: unknown features mode 'SM'"):
        resolve_spec("forecast", "ETTh1", overrides={"features": "SM"})
    # an explicit default is the default; TSL aliases resolve to the canonical name
    assert resolve_spec("forecast", "etth1", overrides={"features": "M", "target": "OT"}) == \
        resolve_spec("forecast", "ETTh1")
    assert resolve_spec("forecast", "ecl").dataset == "electricity"
    with pytest.raises(ValueError, match="unknown task 'audio'"):
        resolve_spec("audio", "x")
