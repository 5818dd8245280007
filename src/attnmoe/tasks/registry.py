"""Task registry: tasks register themselves by name, beside their reference recipe.

A task module (``vision.py``, ``language.py``, ``forecasting.py``) defines its reference
recipe(s) as :class:`~attnmoe.tasks.spec.RunSpec` instances and a builder decorated with
:func:`register_task`::

    @register_task("vision", recipe=vision_recipe, primary_metric="test_accuracy",
                   monitor="val_accuracy", lower_is_better=False, throughput_unit="images",
                   datasets=("digits", "fashion-mnist", "mnist"))
    def build_vision(spec: RunSpec, data_dir: Path | None) -> Task: ...

Then

* :func:`resolve_spec` turns a task name, a data set and command-line overrides into the full
  ``RunSpec`` of a run (recipe defaults + overrides, data set names matched case-insensitively);
* :func:`build_task` loads the data and builds the model of a spec.

The headline metric of each task (``primary_metric``), the validation metric early stopping
watches (``monitor``) and its direction are defined once, in the registration.

``Task.evaluate(model, split)`` returns metric names prefixed by ``split`` (``val``/``test``),
evaluates in eval mode without gradients, and restores the model's mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from attnmoe.attention.variants import attention_kwargs
from attnmoe.tasks.spec import RunSpec, flag
from attnmoe.utils import lookup_name

EVAL_BATCH = 1000
"""Images / windows / LM blocks per forward pass in ``evaluate``."""


@dataclass
class Task:
    """A task instance: data, model, loss, metrics and the run spec it was built from.

    Attributes:
        name: ``"<task>/<dataset>/<attention>"`` (forecast: ``.../H<horizon>/...``).
        spec: the run spec (task, data set, attention, sizes, seed, schedule).
        model: the model (``nn.Module``), built from ``spec.model`` with ``spec.seed``.
        train_data, val_data, test_data: map-style Datasets yielding ``(x, y)`` (``test_data``
            is ``None`` for ``lm``).
        loss_fn: ``loss_fn(model, batch) -> scalar mean loss`` for a collated ``(x, y)`` batch.
        evaluate: ``evaluate(model, split) -> {f"{split}_{metric}": value}`` for ``val``/``test``.
        primary_metric, monitor, lower_is_better, throughput_unit: from the registration.
        get_batch: ``lm`` only: ``get_batch(split, batch_size, generator) -> (x, y)`` random
            blocks (nanoGPT sampling); ``None`` otherwise.
        info: data facts (split sizes, vocabulary, scaler, ...), for ``config.json``.
    """

    name: str
    spec: RunSpec
    model: nn.Module
    train_data: Dataset
    val_data: Dataset
    test_data: Dataset | None
    loss_fn: Callable[[nn.Module, Any], Tensor]
    evaluate: Callable[[nn.Module, str], dict[str, float]]
    primary_metric: str
    monitor: str
    lower_is_better: bool
    throughput_unit: str
    get_batch: Callable[[str, int, torch.Generator], tuple[Tensor, Tensor]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def dataset(self) -> str:
        return self.spec.dataset

    @property
    def attention(self) -> str:
        return self.spec.attention


Builder = Callable[[RunSpec, "Path | None", "TaskEntry"], Task]


@dataclass(frozen=True)
class TaskEntry:
    """A registered task.

    Args:
        name: the task name (``--task``).
        recipe: ``recipe(dataset) -> RunSpec``, the reference recipe for a (canonical) data set.
        build: ``build(spec, data_dir, entry) -> Task``.
        primary_metric: the headline metric of ``metrics.json`` (compared by ``attnmoe compare``).
        monitor: the validation metric for early stopping and model selection.
        lower_is_better: direction of ``monitor`` and ``primary_metric``.
        throughput_unit: ``images``, ``tokens`` or ``windows`` (``train_<unit>_per_s``).
        datasets: the named data sets (file paths may be accepted besides, see ``paths``).
        paths: whether a file path is a valid ``dataset``.
        aliases: other names of the named data sets (``{"ECL": "electricity"}``), any case.
    """

    name: str
    recipe: Callable[[str], RunSpec]
    build: Builder
    primary_metric: str
    monitor: str
    lower_is_better: bool
    throughput_unit: str
    datasets: Callable[[], Sequence[str]]
    paths: bool = False
    aliases: Mapping[str, str] = field(default_factory=dict)


TASK_REGISTRY: dict[str, TaskEntry] = {}


def register_task(
    name: str,
    *,
    recipe: Callable[[str], RunSpec],
    primary_metric: str,
    monitor: str,
    lower_is_better: bool,
    throughput_unit: str,
    datasets: Callable[[], Sequence[str]],
    paths: bool = False,
    aliases: Mapping[str, str] | None = None,
) -> Callable[[Builder], Builder]:
    """Register the decorated builder as task ``name`` (see the module docstring)."""

    def decorate(build: Builder) -> Builder:
        if name in TASK_REGISTRY:
            raise ValueError(f"task {name!r} is registered twice")
        TASK_REGISTRY[name] = TaskEntry(name, recipe, build, primary_metric, monitor, lower_is_better,
                                        throughput_unit, datasets, paths, dict(aliases or {}))
        return build

    return decorate


def task_names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(TASK_REGISTRY)


def task_entry(name: str) -> TaskEntry:
    """The registration of task ``name``.

    Raises:
        ValueError: unknown task, naming the registered ones.
    """
    if name not in TASK_REGISTRY:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASK_REGISTRY)}")
    return TASK_REGISTRY[name]


def canonical_dataset(entry: TaskEntry, dataset: str) -> str:
    """``dataset`` matched case-insensitively against the task's named data sets and aliases
    (:func:`attnmoe.utils.lookup_name`).

    A name that matches none is returned unchanged when the task accepts file paths and the
    path exists.

    Raises:
        ValueError: an unknown name, with the closest known names as suggestions.
    """
    known = list(entry.datasets())
    aliases = dict(entry.aliases)
    names = {name.lower() for name in [*known, *aliases]}
    if entry.paths and dataset.lower() not in names and Path(dataset).is_file():
        return dataset
    return lookup_name(dataset, known, f"{entry.name} data set", aliases,
                       or_else="the path of an existing file" if entry.paths else "")


def reference_spec(task: str, dataset: str) -> RunSpec:
    """The reference recipe of ``task`` on ``dataset`` (the defaults of ``attnmoe train``)."""
    entry = task_entry(task)
    return entry.recipe(canonical_dataset(entry, dataset))


def resolve_spec(
    task: str,
    dataset: str,
    *,
    attention: str = "softmax",
    seed: int = 0,
    horizon: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunSpec:
    """The run spec of ``task`` on ``dataset``: the reference recipe with ``overrides`` applied.

    Args:
        task: a registered task name.
        dataset: a data set name (any case) or, where the task accepts one, a file path.
        attention: attention variant name.
        seed: the run's seed.
        horizon: forecast horizon (forecast only; default the data set's first standard one).
        overrides: ``RunSpec`` fields (``steps``, ``epochs``, ``batch_size``, ``lr``, ...) and
            model sizes (any other key must be a key of the recipe's ``model``); ``None``
            values are ignored.

    Raises:
        ValueError: unknown task / data set / variant / override, or invalid values, with a
            message naming the option.
    """
    return apply_overrides(reference_spec(task, dataset), attention=attention, seed=seed,
                           horizon=horizon, overrides=overrides)


def apply_overrides(
    base: RunSpec,
    *,
    attention: str | None = None,
    seed: int | None = None,
    horizon: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunSpec:
    """``base`` with command-line style overrides (``None`` = keep ``base``'s value).

    ``overrides`` keys that are ``RunSpec`` fields set those fields; any other key is a model
    size and must be a key of ``base.model``.

    Raises:
        ValueError: unknown variant / option / model size, ``horizon``, ``features`` or
            ``target`` for a task without one, or invalid values.
    """
    if attention is not None:
        attention_kwargs(attention)  # fail on a bad variant name before loading any data
    if horizon is not None and base.horizon is None:
        raise ValueError(f"--horizon is only used by the forecast task, not {base.task!r}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unused = [flag(k) for k in ("features", "target") if k in given and getattr(base, k) is None]
    if unused:
        raise ValueError(f"{' and '.join(unused)} only appl{'ies' if len(unused) == 1 else 'y'} to the "
                         f"forecast task, not {base.task!r}")
    spec_fields = set(RunSpec.__dataclass_fields__) - {"task", "dataset", "model"}
    sizes = {k: v for k, v in given.items() if k not in spec_fields}
    options = {k: v for k, v in given.items() if k in spec_fields}
    return base.override(attention=attention, seed=seed, horizon=horizon, model=sizes, **options)


def build_task(
    spec: RunSpec | str,
    dataset: str | None = None,
    *,
    data_dir: str | Path | None = None,
    attention: str = "softmax",
    seed: int = 0,
    horizon: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Task:
    """Load the data and build the model of a run.

    ``build_task(spec, data_dir=...)`` builds a resolved :class:`RunSpec`;
    ``build_task(task, dataset, attention=..., seed=..., horizon=..., overrides=...)`` first
    resolves one with :func:`resolve_spec`.

    Raises:
        ValueError: unknown task / data set / variant / override, bad data (naming the file).
    """
    if not isinstance(spec, RunSpec):
        if dataset is None:
            raise TypeError("build_task(task, dataset, ...) needs a dataset")
        spec = resolve_spec(spec, dataset, attention=attention, seed=seed, horizon=horizon,
                            overrides=overrides)
    entry = task_entry(spec.task)
    return entry.build(spec, Path(data_dir) if data_dir is not None else None, entry)


def make_task(entry: TaskEntry, spec: RunSpec, name: str, **parts: Any) -> Task:
    """A :class:`Task` carrying ``entry``'s metric definitions (for builders)."""
    return Task(name=name, spec=spec, primary_metric=entry.primary_metric, monitor=entry.monitor,
                lower_is_better=entry.lower_is_better, throughput_unit=entry.throughput_unit, **parts)


# ---------------------------------------------------------------- helpers for builders

BYTES_PER_PARAMETER = 16
"""Training memory per parameter: float32 weight, gradient and AdamW's two moments (4 x 4 bytes)."""


def int_size(value: Any) -> int:
    """``value`` when it is a positive int, else 0 (for memory estimates made before the model
    validates its sizes: a bad size is then refused by the model's own message)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def available_memory() -> int | None:
    """Bytes of memory the kernel can still give this process (``MemAvailable``), else ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_model_memory(factory: Callable[[], nn.Module], spec: RunSpec, floats_per_example: int = 0,
                       bytes_per_parameter: int = BYTES_PER_PARAMETER,
                       hint: str = "lower the --model sizes or --batch-size") -> None:
    """Refuse, in one line and before anything is allocated, a run whose training state cannot fit.

    ``factory()`` is built on PyTorch's ``meta`` device (shapes only, no memory) and its parameters
    counted; the need is the weights + gradients + AdamW moments (:data:`BYTES_PER_PARAMETER` each;
    ``bytes_per_parameter=4`` for inference: the weights alone)
    plus ``floats_per_example`` float32 activations per example of a ``--batch-size`` batch (the
    builder's lower bound, e.g. one activation per layer output), compared with the memory
    available now. Both terms are lower bounds: the refusal is never wrong, a run that passes can
    still be large.

    Raises:
        ValueError: naming the parameter count, the bytes needed and the bytes available.
    """
    free = available_memory()
    try:
        with torch.device("meta"):
            model = factory()
    except (RuntimeError, NotImplementedError):  # a model that cannot be built on meta is built for real
        return
    n_params = sum(p.numel() for p in model.parameters())
    weights = n_params * bytes_per_parameter
    activations = 4 * floats_per_example * spec.batch_size
    if free is not None and weights + activations > free:
        sizes = ", ".join(f"{k}={v}" for k, v in spec.model.items())
        raise ValueError(f"the model ({sizes}; {n_params:.3g} parameters) with --batch-size {spec.batch_size} "
                         f"needs at least {(weights + activations) / 2**30:.3g} GiB ({weights / 2**30:.3g} for "
                         f"weights, gradients and AdamW moments, {activations / 2**30:.3g} for activations) and "
                         f"{free / 2**30:.3g} GiB are available; {hint}")



def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def split_of(splits: dict[str, Any], split: str, task: str) -> Any:
    data = splits.get(split)
    if data is None:
        raise ValueError(f"task {task!r} has no {split!r} split; expected one of "
                         f"{[k for k, v in splits.items() if v is not None]}")
    return data


def in_eval_mode(fn: Callable[[nn.Module, str], dict[str, float]]) -> Callable[[nn.Module, str], dict[str, float]]:
    """Run ``evaluate(model, split)`` in eval mode without gradients, restoring the mode."""

    def wrapped(model: nn.Module, split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, split)
        finally:
            model.train(was_training)

    return wrapped


__all__ = [
    "EVAL_BATCH",
    "TASK_REGISTRY",
    "Task",
    "TaskEntry",
    "apply_overrides",
    "build_task",
    "canonical_dataset",
    "make_task",
    "reference_spec",
    "register_task",
    "resolve_spec",
    "task_entry",
    "task_names",
]
