"""attnmoe.tasks: the evidence tasks (vision ViT, character GPT, iTransformer forecaster).

Each task module registers its task by name beside its reference recipe (a
:class:`~attnmoe.tasks.spec.RunSpec`). ``resolve_spec(task, dataset, ...)`` gives the run spec
of a run (recipe + overrides); ``build_task(spec, data_dir=...)`` returns a ``Task`` with the
data splits, the model (every attention layer an ``attnmoe.attention.Attention`` chosen by
variant name), the loss and the metrics. Data loaders live in ``attnmoe.tasks.data``.
"""

from attnmoe.tasks.forecasting import FORECAST_RECIPE, ITransformer
from attnmoe.tasks.language import GPT, LM_RECIPE
from attnmoe.tasks.registry import (
    TASK_REGISTRY,
    Task,
    apply_overrides,
    build_task,
    reference_spec,
    resolve_spec,
    task_entry,
    task_names,
)
from attnmoe.tasks.spec import RunSpec
from attnmoe.tasks.vision import DIGITS_RECIPE, VISION_RECIPE, ViT

__all__ = [
    "DIGITS_RECIPE",
    "FORECAST_RECIPE",
    "GPT",
    "LM_RECIPE",
    "TASK_REGISTRY",
    "VISION_RECIPE",
    "ITransformer",
    "RunSpec",
    "Task",
    "ViT",
    "apply_overrides",
    "build_task",
    "reference_spec",
    "resolve_spec",
    "task_entry",
    "task_names",
]
