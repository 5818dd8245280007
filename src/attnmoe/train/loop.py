"""The one training loop behind ``attnmoe train`` / ``attnmoe compare`` (issue 4).

Every task (vision, lm, forecast) goes through :func:`train`:

* **Optimiser**: AdamW (Loshchilov & Hutter, arXiv 1711.05101). Weight decay applies only to
  the weights of ``nn.Linear`` / convolution layers; biases, normalisation parameters,
  embeddings (``nn.Embedding``, class tokens, position tables: any parameter that is not the
  weight of a Linear/Conv layer) get none. A weight shared by an ``nn.Embedding`` and a Linear
  head (GPT weight tying) counts as an embedding: no decay.
* **Schedule**: linear warm-up then cosine decay,
  ``lr(s) = lr * (s+1)/W`` for ``s < W`` and
  ``lr(s) = lr * (r + (1-r) * (1 + cos(pi * (s-W)/(S-W))) / 2)`` after,
  with ``S`` total steps, ``W`` warm-up steps and ``r = min_lr_ratio`` (arXiv 1608.03983,
  SGDR, without restarts).
* **Clipping**: the global gradient 2-norm is clipped to ``grad_clip``.
* **Data order**: a pure function of ``(seed, step)``. Map-style data sets are read in
  per-epoch permutations ``randperm(n, generator=seed*1_000_003 + epoch)`` cut into global
  batches (``drop_last`` for training only); a task that exposes ``get_batch`` (random
  language-model blocks) is called with a generator seeded from ``(seed, step)``. This is
  what makes ``--resume`` and data parallelism exact: nothing about the data order lives
  in a DataLoader.
* **Evaluation** every ``eval_interval`` steps on the validation split (rank 0 only), logged
  to ``log.jsonl``; with ``patience`` set (forecasting), training stops after ``patience``
  evaluations without improvement of the monitored validation metric and the best weights
  are restored before the test.
* **Checkpoints** every ``checkpoint_interval`` steps (``attnmoe.train.checkpoint``);
  ``resume=True`` continues from the last one and reaches the same weights and metrics as
  an uninterrupted run.

Outputs in ``out_dir``: ``config.json`` (task, dataset, attention, training config),
``log.jsonl`` (one JSON object per logged step / evaluation), ``metrics.json`` (final
metrics, parameter count, wall time, throughput), ``checkpoint/``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, TensorDataset, default_collate
from tqdm.auto import tqdm

from attnmoe.train import distributed
from attnmoe.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint

METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"


class TaskLike(Protocol):
    """What the loop needs from ``attnmoe.tasks.registry.Task`` (duck-typed).

    ``train_data`` is a map-style Dataset, or ``None`` when the task has ``get_batch``.
    ``evaluate(model, split)`` returns metrics named ``<split>_<metric>``.
    """

    name: str
    model: nn.Module
    train_data: Any
    primary_metric: str
    throughput_unit: str

    def loss_fn(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...


@dataclass
class TrainConfig:
    """Training hyper-parameters (defaults come from the task's recipe; the CLI overrides).

    Args:
        steps: number of optimiser steps; exclusive with ``epochs``.
        epochs: passes over the training set (map-style data only); ``steps = ceil(epochs *
            (n_train // batch_size))``.
        batch_size: global batch size (split evenly over data-parallel ranks).
        lr: peak learning rate.
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine floor).
        warmup_steps: linear warm-up length; ``warmup_frac`` is used when this is ``None``.
        warmup_frac: warm-up length as a fraction of ``steps``.
        weight_decay: AdamW decoupled weight decay on Linear/Conv weights only.
        beta1: AdamW first-moment decay.
        beta2: AdamW second-moment decay.
        grad_clip: maximal global gradient norm; ``None`` or 0 disables clipping.
        eval_interval: evaluate on the validation split every this many steps (and at the end).
        patience: early stopping after this many evaluations without improvement
            (``None``: no early stopping; the final weights are tested).
        checkpoint_interval: save a checkpoint every this many steps (and at the end).
        log_interval: write the running training loss to ``log.jsonl`` every this many steps.
        seed: seeds Python, NumPy, torch and the data order.
        device: ``"cpu"`` or ``"cuda"``.
    """

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None
    warmup_frac: float = 0.05
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = 1.0
    eval_interval: int = 250
    patience: int | None = None
    checkpoint_interval: int = 500
    log_interval: int = 10
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"give exactly one of steps or epochs (got steps={self.steps}, "
                             f"epochs={self.epochs})")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive int, got {self.steps!r}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        for name in ("batch_size", "eval_interval", "checkpoint_interval", "log_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    @classmethod
    def from_recipe(cls, recipe: Any, **overrides: Any) -> TrainConfig:
        """A config from a task recipe (dataclass or mapping), then ``overrides`` (``None`` ignored).

        Only recipe fields that are ``TrainConfig`` fields are used (model sizes are the
        task's business). Giving ``steps`` in ``overrides`` drops the recipe's ``epochs`` and
        vice versa.
        """
        names = {f.name for f in fields(cls)}
        source = recipe if isinstance(recipe, Mapping) else (
            asdict(recipe) if recipe is not None and hasattr(recipe, "__dataclass_fields__")
            else vars(recipe) if recipe is not None else {}
        )
        values = {k: v for k, v in source.items() if k in names and v is not None}
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - names
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(names)}")
        if "steps" in given:
            values.pop("epochs", None)
        if "epochs" in given:
            values.pop("steps", None)
        values.update(given)
        return cls(**values)


class WarmupCosine:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio`` (see module doc).

    A callable object (not a lambda) so that ``LambdaLR.state_dict`` stores its fields.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on Linear/Conv weights only (not on tied embedding weights).

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}]``
        (empty groups dropped), every trainable parameter in exactly one group.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and id(m.weight) not in embedding_ids
    }
    decay, rest = [], []
    for param in model.parameters():  # unique parameters, tied weights once
        if param.requires_grad:
            (decay if id(param) in decay_ids else rest).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


def _monitor(task: TaskLike) -> tuple[str, bool]:
    """The validation metric early stopping watches and whether lower is better."""
    name = getattr(task, "monitor", None) or task.primary_metric
    if name.startswith("test_"):
        name = "val_" + name[len("test_"):]
    lower = getattr(task, "lower_is_better", None)
    if lower is None:
        lower = not any(word in name for word in ("acc", "accuracy"))
    return name, bool(lower)


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines past ``last_step`` (written after the checkpoint an interrupted run left)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def _evaluate(task: TaskLike, model: nn.Module, split: str) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = task.evaluate(model, split)
    model.train(was_training)
    return {k: v if isinstance(v, int) else float(v) for k, v in result.items()}


def _has_split(task: TaskLike, split: str) -> bool:
    attr = getattr(task, f"{split}_data", None)
    return attr is not None or (split == "val" and hasattr(task, "get_batch"))


def train(
    task: TaskLike,
    config: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> dict[str, float]:
    """Train ``task.model`` with ``config`` and write the run into ``out_dir``.

    Args:
        task: an ``attnmoe.tasks.registry.Task`` (see :class:`TaskLike`).
        config: the training configuration.
        out_dir: run directory (created); only rank 0 writes.
        resume: continue from ``out_dir/checkpoint`` when it exists (else start fresh).
            Without ``resume`` an existing checkpoint is an error, so runs are not mixed.
        progress: show a tqdm bar with the running loss and the last validation metric.
        run_info: extra JSON-serialisable fields for ``config.json`` (task name, dataset,
            attention variant, model sizes...).
        stop_after: stop (after checkpointing) once this step is reached without finishing
            the run; simulates an interruption for tests. Returns ``{}`` then.

    Returns:
        The final metrics (those of ``metrics.json``) on every rank.

    Raises:
        FileExistsError: when ``out_dir`` holds a checkpoint and ``resume`` is False.
        FloatingPointError: when the training loss becomes NaN or infinite.
    """
    out_dir = Path(out_dir)
    where = distributed.info()
    device = torch.device(config.device if config.device == "cpu" else f"cuda:{where.local_rank}")
    if config.batch_size % where.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{where.world_size} data-parallel processes")
    found = checkpoint_path(out_dir)
    if found is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds a checkpoint: pass resume=True (--resume) "
                              "to continue it, or choose another output directory")
    if where.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    log_path, metrics_path = out_dir / LOG_FILE, out_dir / METRICS_FILE

    # Dropout noise differs per rank; data order does not (BatchPlan).
    seed_everything(config.seed + 7919 * where.rank)
    plan = BatchPlan(task, config.batch_size, config.seed)
    total = config.steps if config.steps is not None else plan.steps_for(float(config.epochs))
    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_frac * total)
    warmup = min(warmup, total - 1) if total > 1 else 0

    model = task.model.to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr,
        betas=(config.beta1, config.beta2),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(total, warmup, config.min_lr_ratio)
    )
    n_params = count_parameters(model)
    monitor, lower_better = _monitor(task)

    state: dict[str, Any] = {"step": 0, "best": None, "best_step": None, "bad_evals": 0,
                             "stopped_early": False, "elapsed_s": 0.0, "units": 0}
    best_weights: dict[str, torch.Tensor] | None = None
    if found is not None:
        loaded = load_checkpoint(found, model, optimizer, scheduler, device=device)
        state.update(loaded.state)
        best_weights = loaded.best_weights
        if where.is_main:
            _truncate_log(log_path, state["step"])
    elif where.is_main:
        log_path.write_text("")
    if where.is_main:
        record = {**(run_info or {}), "train": asdict(config), "total_steps": total,
                  "warmup_steps": warmup, "n_params": n_params, "world_size": where.world_size,
                  "monitor": monitor, "monitor_lower_is_better": lower_better}
        (out_dir / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")

    wrapped: nn.Module = DistributedDataParallel(model) if where.enabled else model
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = tqdm(total=total, initial=state["step"], disable=not (progress and where.is_main),
               desc=f"{task.name}", dynamic_ncols=True, leave=False)
    running, running_n, last_val = 0.0, 0, None
    final_val: dict[str, float] | None = None  # the evaluation at the last step, reused at the end
    started = time.perf_counter() - state["elapsed_s"]

    def snapshot() -> None:
        state["elapsed_s"] = time.perf_counter() - started
        if where.is_main:
            save_checkpoint(out_dir, model, optimizer, scheduler, dict(state), best_weights)
        distributed.barrier()

    while state["step"] < total and not state["stopped_early"]:
        step = state["step"]
        batch = _move(_rank_slice(plan.global_batch(step), where.rank, where.world_size), device)
        loss = task.loss_fn(wrapped, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step} "
                                     f"(task {task.name}); lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        state["step"] = step = step + 1
        state["units"] += _units(batch, task.throughput_unit) * where.world_size
        running += float(loss.detach())
        running_n += 1

        if where.is_main and (step % config.log_interval == 0 or step == total):
            _append_log(log_path, {"step": step, "train_loss": running / running_n,
                                   "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{running / running_n:.4f}",
                            **({monitor: f"{last_val:.4f}"} if last_val is not None else {}))
            running, running_n = 0.0, 0

        if step % config.eval_interval == 0 or step == total:
            decision = None
            if where.is_main:
                metrics = _evaluate(task, model, "val")
                if monitor not in metrics:
                    raise KeyError(f"task {task.name!r} evaluate('val') gave {sorted(metrics)}, "
                                   f"not the monitored metric {monitor!r}")
                last_val = metrics[monitor]
                final_val = metrics if step == total else None
                _append_log(log_path, {"step": step, **metrics})
                better = state["best"] is None or (
                    last_val < state["best"] if lower_better else last_val > state["best"])
                if better:
                    state.update(best=last_val, best_step=step, bad_evals=0)
                    if config.patience is not None:
                        best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    state["bad_evals"] += 1
                decision = config.patience is not None and state["bad_evals"] >= config.patience
            state["stopped_early"] = bool(distributed.broadcast_object(decision))
        bar.update(1)

        if step % config.checkpoint_interval == 0 or step == total or state["stopped_early"]:
            snapshot()
        if stop_after is not None and step >= stop_after and step < total:
            if step % config.checkpoint_interval:
                snapshot()
            bar.close()
            return {}
    bar.close()

    elapsed = time.perf_counter() - started
    result: dict[str, float] | None = None
    if where.is_main:
        restore = config.patience is not None and best_weights is not None
        if restore:
            model.load_state_dict(best_weights)
        result = dict(final_val) if final_val is not None and not restore else \
            _evaluate(task, model, "val")
        if _has_split(task, "test"):
            result.update(_evaluate(task, model, "test"))
        result.update({
            "n_params": n_params, "steps": state["step"], "best_step": state["best_step"],
            "stopped_early": state["stopped_early"], "wall_time_s": elapsed,
            f"train_{task.throughput_unit}_per_s": state["units"] / max(elapsed, 1e-9),
        })
        metrics_path.write_text(json.dumps(result, indent=2) + "\n")
    result = distributed.broadcast_object(result)
    return result


def is_finished(out_dir: Path) -> bool:
    """True when ``out_dir`` holds a completed run (``metrics.json``)."""
    return (Path(out_dir) / METRICS_FILE).is_file()


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    """The records of ``out_dir/log.jsonl``."""
    path = Path(out_dir) / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else []


__all__ = [
    "BatchPlan",
    "TrainConfig",
    "WarmupCosine",
    "count_parameters",
    "is_finished",
    "parameter_groups",
    "read_log",
    "seed_everything",
    "train",
]
