"""attnmoe.tasks: the evidence tasks (vision ViT, character GPT, iTransformer forecaster).

``build_task(task, dataset, data_dir=..., attention=..., seed=...)`` returns a ``Task`` with the
data splits, the model (every attention layer an ``attnmoe.attention.Attention`` chosen by variant
name), the loss, the metrics and the reference training ``Recipe``. Data loaders live in
``attnmoe.tasks.data``.
"""

from attnmoe.tasks.forecasting import ITransformer
from attnmoe.tasks.language import GPT
from attnmoe.tasks.registry import TASKS, Recipe, Task, build_task, default_recipe
from attnmoe.tasks.vision import ViT

__all__ = ["GPT", "TASKS", "ITransformer", "Recipe", "Task", "ViT", "build_task", "default_recipe"]
