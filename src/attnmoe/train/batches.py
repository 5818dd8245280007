"""Batches and data order for the training loop (``attnmoe.train.loop``).

:class:`BatchPlan` gives the global batch of every step as a pure function of ``(seed, step)``
(per-epoch permutations of a map-style data set, or ``get_batch`` with a generator seeded from
``(seed, step)``); ``_rank_slice`` cuts a rank's share of it, ``_move`` puts a batch on the
device, ``_fetch`` collates the items of an index and ``_units`` counts a batch's examples or
tokens for throughput.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

if TYPE_CHECKING:  # type-only: loop.py imports this module at run time
    from attnmoe.train.loop import TaskLike


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def _fetch(data: Dataset, index: torch.Tensor) -> Any:
    """Collate the items at ``index``: vectorised for a ``TensorDataset`` or a data set with a
    ``batch(index_tensor)`` method (``attnmoe.tasks`` window / block data sets), else item by item."""
    if isinstance(data, TensorDataset):
        return tuple(t[index] for t in data.tensors)
    batch = getattr(data, "batch", None)
    if callable(batch):
        return batch(index)
    getitems = getattr(data, "__getitems__", None)
    items = getitems(index.tolist()) if getitems is not None else [data[i] for i in index.tolist()]
    return default_collate(items)


class BatchPlan:
    """The global batch of every step, as a pure function of ``(seed, step)``.

    Args:
        task: the task (``train_data`` Dataset, or ``get_batch(split, batch_size, generator)``).
        batch_size: the global batch size.
        seed: the run's seed.
    """

    def __init__(self, task: TaskLike, batch_size: int, seed: int) -> None:
        self.task = task
        self.batch_size = batch_size
        self.seed = seed
        self.get_batch: Callable[..., Any] | None = getattr(task, "get_batch", None)
        data = getattr(task, "train_data", None)
        if self.get_batch is None and data is None:
            raise ValueError(f"task {task.name!r} has neither train_data nor get_batch")
        self.data = data if self.get_batch is None else None
        self.steps_per_epoch: int | None = None
        if self.data is not None:
            n = len(self.data)
            if n < batch_size:
                raise ValueError(
                    f"batch_size {batch_size} is larger than the training set ({n} examples)"
                )
            self.steps_per_epoch = n // batch_size
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def steps_for(self, epochs: float) -> int:
        """Steps that make ``epochs`` passes over the training data."""
        if self.steps_per_epoch is None:
            raise ValueError(f"task {self.task.name!r} samples random blocks: give steps, not epochs")
        return max(1, math.ceil(epochs * self.steps_per_epoch))

    def global_batch(self, step: int) -> Any:
        """The whole batch of ``step`` (every rank computes the same one)."""
        if self.get_batch is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return self.get_batch("train", self.batch_size, generator)
        assert self.steps_per_epoch is not None and self.data is not None
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.data), generator=generator)
            self._epoch = epoch
        index = self._perm[within * self.batch_size : (within + 1) * self.batch_size]
        return _fetch(self.data, index)


def _rank_slice(batch: Any, rank: int, world_size: int) -> Any:
    """This rank's contiguous share of a global batch (leading dimension)."""
    if world_size == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        share = batch.shape[0] // world_size
        return batch[rank * share : (rank + 1) * share]
    if isinstance(batch, Mapping):
        return {k: _rank_slice(v, rank, world_size) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_rank_slice(v, rank, world_size) for v in batch)
    return batch


def _units(batch: Any, unit: str) -> int:
    """Examples (images / windows) or tokens in a batch, for throughput."""
    first = batch
    while isinstance(first, (list, tuple)):
        first = first[0]
    if isinstance(first, Mapping):
        first = next(iter(first.values()))
    if not isinstance(first, torch.Tensor):
        return 0
    return int(first.numel()) if unit == "tokens" else int(first.shape[0])
