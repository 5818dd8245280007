"""The identity of a training run: one frozen :class:`RunSpec`.

A run is fully described by what it trains (task, data set, horizon, attention variant, model
sizes), its seed, and how it trains (optimiser, schedule, evaluation and checkpoint cadence,
numeric precision). Everything that changes the numbers a run produces is a field here, and
nothing else is:

* the reference recipes of the tasks are ``RunSpec`` instances (``attnmoe.tasks.vision``,
  ``language``, ``forecasting``), so every default is defined once, in the recipe;
* ``attnmoe train`` / ``compare`` options are overrides of the recipe (:meth:`RunSpec.override`);
* the loop trains from a spec, ``config.json`` and every checkpoint store it
  (:meth:`RunSpec.to_dict`), and a resume whose spec differs is refused, naming the fields
  (:meth:`RunSpec.differences`).

Where a run goes (``--out``), the device, threads and progress bars are not part of the spec:
they do not change the result.

Validation happens once, in ``__post_init__``; messages name the command-line option
(``--seed``, ``--model seq_len``), because that is where users set the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
"""Training precisions: float32, or autocast to bfloat16 / float16 (fp16 with a gradient scaler)."""

FEATURES = ("M", "S", "MS")
"""Forecast feature modes, as Time-Series-Library's ``--features``: ``M`` all channels in and
out, ``S`` the target channel in and out, ``MS`` all channels in, the target out."""


def flag(name: str) -> str:
    """The command-line option of a spec field (``batch_size`` -> ``--batch-size``)."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a training run's result.

    Args:
        task: ``vision``, ``lm`` or ``forecast`` (any registered task name).
        dataset: data set name or file path.
        attention: attention variant name (``softmax``, ``active-gelu``, ``gated-g1+...``).
        horizon: forecast horizon (forecast only; ``None`` for the other tasks).
        features: forecast feature mode, one of :data:`FEATURES` (forecast only; ``None`` for
            the other tasks).
        target: forecast target column, predicted by ``S`` / ``MS`` and moved to the last
            channel (forecast only; ``None`` for the other tasks).
        seed: seeds the initialisation, the data order and dropout (>= 0).
        model: model sizes, keyword arguments of the task's model (``dim``, ``n_layer``,
            ``seq_len``, ...); read-only.
        steps / epochs: training length; exactly one is set.
        batch_size: global batch size.
        lr: peak learning rate; ``min_lr_ratio``: cosine floor as a fraction of ``lr``.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW decoupled weight decay (Linear/Conv weights only).
        beta1, beta2: AdamW moment decays.
        grad_clip: global gradient-norm clip (``None``: none).
        eval_interval: steps between validation evaluations; 0 = once per epoch.
        patience: early stopping after this many evaluations without improvement (``None``: off).
        checkpoint_interval: steps between checkpoints; 0 = once per epoch.
        log_interval: steps between training-loss records in ``log.jsonl``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; ``fp16`` with a gradient scaler).

    Raises:
        ValueError: a field out of range, naming its command-line option.
    """

    task: str
    dataset: str
    attention: str = "softmax"
    horizon: int | None = None
    features: str | None = None
    target: str | None = None
    seed: int = 0
    model: Mapping[str, Any] = field(default_factory=dict)
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = 1.0
    eval_interval: int = 0
    patience: int | None = None
    checkpoint_interval: int = 0
    log_interval: int = 10
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        for name in ("task", "dataset", "attention"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{flag(name)} must be a non-empty string, got {getattr(self, name)!r}")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"give exactly one of --steps or --epochs (got steps={self.steps}, "
                             f"epochs={self.epochs})")
        _check_int(self, "seed", 0)
        if self.seed > MAX_SEED:
            raise ValueError(f"--seed must be at most {MAX_SEED} (2^32 - 1), got {self.seed}")
        _check_int(self, "batch_size", 1)
        _check_int(self, "log_interval", 1)
        _check_int(self, "warmup_steps", 0)
        _check_int(self, "eval_interval", 0)
        _check_int(self, "checkpoint_interval", 0)
        for name in ("steps", "horizon", "patience"):
            if getattr(self, name) is not None:
                _check_int(self, name, 1)
        check_steps(self.steps)
        if self.epochs is not None:
            _check_real(self, "epochs", lambda v: v > 0, "> 0")
        _check_real(self, "lr", lambda v: v > 0, "> 0")
        _check_real(self, "min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")
        _check_real(self, "weight_decay", lambda v: v >= 0, ">= 0")
        _check_real(self, "beta1", lambda v: 0 <= v < 1, "in [0, 1)")
        _check_real(self, "beta2", lambda v: 0 <= v < 1, "in [0, 1)")
        if self.grad_clip is not None:
            _check_real(self, "grad_clip", lambda v: v > 0, "> 0 (or None: no clipping)")
        if self.features is not None and self.features not in FEATURES:
            raise ValueError(f"--features: unknown features mode {self.features!r}; expected one of "
                             f"{list(FEATURES)} (M: all channels -> all, S: target -> target, "
                             "MS: all channels -> target)")
        if self.target is not None and (not isinstance(self.target, str) or not self.target):
            raise ValueError(f"--target must be a non-empty column name, got {self.target!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for key in self.model:
            if not isinstance(key, str) or not key:
                raise ValueError(f"--model keys must be non-empty strings, got {key!r}")

    # ------------------------------------------------------------------ derived specs

    def override(self, **changes: Any) -> RunSpec:
        """A copy with ``changes`` applied (``None`` values ignored).

        ``model`` is merged key by key, and only keys the spec already has are accepted (the
        recipe lists every model size). Giving ``steps`` drops ``epochs`` and vice versa;
        giving both is an error (by validation).

        Raises:
            ValueError: unknown field or model size, or an invalid resulting spec.
        """
        given = {k: v for k, v in changes.items() if v is not None}
        names = {f.name for f in fields(self)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise ValueError(f"unknown run option(s) {unknown}; known: {sorted(names)}")
        sizes = dict(given.pop("model", {}) or {})
        bad = sorted(set(sizes) - set(self.model))
        if bad:
            raise ValueError(f"unknown --model key(s) {bad} for task {self.task!r}; "
                             f"model sizes: {sorted(self.model)}")
        if "steps" in given and "epochs" not in given:
            given["epochs"] = None
        if "epochs" in given and "steps" not in given:
            given["steps"] = None
        return replace(self, **given, model={**self.model, **sizes})

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``model`` as a plain dict)."""
        return {f.name: dict(self.model) if f.name == "model" else getattr(self, f.name)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """The spec :meth:`to_dict` wrote.

        Raises:
            ValueError: unknown or missing fields, or invalid values.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown run spec field(s) {unknown}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"incomplete run spec: {err}") from None

    def __reduce__(self) -> tuple[Any, ...]:  # the read-only ``model`` proxy does not pickle
        return (_spec_from_dict, (self.to_dict(),))

    def differences(self, other: RunSpec) -> list[str]:
        """``["lr: 0.001 -> 0.5", "model.heads: 2 -> 4"]``: the fields where ``other`` differs."""
        out: list[str] = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "model":
                for key in sorted(set(a) | set(b)):
                    if a.get(key, "<unset>") != b.get(key, "<unset>"):
                        out.append(f"model.{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
            elif a != b:
                out.append(f"{f.name}: {a!r} -> {b!r}")
        return out


MAX_SEED = 2**32 - 1
"""The largest seed: NumPy's seed range, and the data-order generators (seeded with
``seed * 1_000_003 + epoch``, ``attnmoe.train.batches``) stay far below torch's 2^63 limit."""

MAX_STEPS = 10**8
"""The most optimiser steps a run may have (``--steps``, or ``--epochs`` once converted): 10^8 steps
take more than a day even at 1 ms a step, so a larger value is a typo, not a plan."""


def check_steps(steps: int | None, given: str = "--steps") -> None:
    """Refuse more than :data:`MAX_STEPS` steps in one line (``given`` names where they came from)."""
    if steps is not None and steps > MAX_STEPS:
        raise ValueError(f"{given} gives {steps:.3g} optimiser steps, more than the cap {MAX_STEPS:.0e} "
                         "(over a day even at 1 ms a step)")


def _spec_from_dict(data: dict[str, Any]) -> RunSpec:
    return RunSpec.from_dict(data)


def _check_int(spec: RunSpec, name: str, minimum: int) -> None:
    value = getattr(spec, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{flag(name)} must be a {kind} integer, got {value!r}")


def _check_real(spec: RunSpec, name: str, ok: Any, what: str) -> None:
    value = getattr(spec, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not ok(value):
        raise ValueError(f"{flag(name)} must be a finite number {what}, got {value!r}")


__all__ = ["FEATURES", "MAX_SEED", "MAX_STEPS", "PRECISIONS", "RunSpec", "check_steps", "flag"]
