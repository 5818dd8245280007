"""The one training loop behind ``attnmoe train`` / ``attnmoe compare`` (issue 4).

Every task (vision, lm, forecast) goes through :func:`train_task`, driven by one
:class:`~attnmoe.tasks.spec.RunSpec` (the run's identity: every field below comes from it):

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
* **Precision**: ``fp32``, or the forward pass and loss under ``torch.autocast`` to ``bf16`` /
  ``fp16`` (weights, optimizer state and evaluation stay float32); ``fp16`` scales the loss with
  a ``GradScaler`` (its state is checkpointed).
* **Data order**: a pure function of ``(seed, step)``. Map-style data sets are read in
  per-epoch permutations ``randperm(n, generator=seed*1_000_003 + epoch)`` cut into global
  batches (``drop_last`` for training only); a task that exposes ``get_batch`` (random
  language-model blocks) is called with a generator seeded from ``(seed, step)``. This is
  what makes ``--resume`` and data parallelism exact: nothing about the data order lives
  in a DataLoader (``attnmoe.train.batches``).
* **Evaluation** every ``eval_interval`` steps on the validation split (rank 0 only), logged
  to ``log.jsonl``; with ``patience`` set (forecasting), training stops after ``patience``
  evaluations without improvement of the monitored validation metric and the best weights
  are restored before the test.
  ``eval_interval = 0`` / ``checkpoint_interval = 0`` mean once per epoch.
* **Checkpoints** every ``checkpoint_interval`` steps (``attnmoe.train.checkpoint``), holding
  the spec; ``resume=True`` continues from the last one and reaches the same weights, metrics
  and log as an uninterrupted run (the running training-loss sum is checkpointed too). A
  resume whose spec differs from the stored one is refused, naming the fields (the resume
  checks and the readers of the run's files live in ``attnmoe.train.rundir``).
* **Divergence**: a non-finite training loss writes ``diverged.json`` (step, loss) and raises
  :class:`TrainingDiverged`.

Outputs in ``out_dir`` (rank 0 only; every JSON file written atomically, temp file + rename):
``config.json`` (the spec, data facts, resolved step counts), ``log.jsonl`` (one JSON object
per logged step / evaluation), ``metrics.json`` (final metrics, parameter count, wall time,
throughput; its presence marks a finished run), ``checkpoint/`` and ``checkpoint.old/``,
``diverged.json`` for a diverged run.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from attnmoe.tasks.spec import RunSpec, check_steps
from attnmoe.train import distributed
from attnmoe.train.batches import BatchPlan as BatchPlan
from attnmoe.train.batches import _fetch as _fetch
from attnmoe.train.batches import _move, _rank_slice
from attnmoe.train.batches import _units as _units
from attnmoe.train.checkpoint import load_checkpoint, save_checkpoint
from attnmoe.train.probing import evaluate_with_probes
from attnmoe.train.rundir import (
    CONFIG_FILE,
    DIVERGED_FILE,
    LOG_FILE,
    METRICS_FILE,
    RUN_FILES,
    _truncate_log,
    _usable_checkpoint,
    check_same_spec,
    is_diverged,
    is_finished,
    read_log,
    read_metrics,
    saved_spec,
)
from attnmoe.train.rundir import read_json as read_json
from attnmoe.utils import atomic_write_json, atomic_write_text

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite (recorded in ``diverged.json``)."""


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


def _monitor(task: TaskLike) -> tuple[str, bool]:
    """The validation metric early stopping watches and whether lower is better."""
    name = getattr(task, "monitor", None) or task.primary_metric
    if name.startswith("test_"):
        name = "val_" + name[len("test_"):]
    lower = getattr(task, "lower_is_better", None)
    if lower is None:
        lower = not any(word in name for word in ("acc", "accuracy"))
    return name, bool(lower)


class RunLog:
    """``log.jsonl`` (one JSON object per line, appended) and, optionally, TensorBoard scalars."""

    def __init__(self, path: Path, writer: Any = None) -> None:
        self.path, self.writer = path, writer

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tensorboard(out_dir: Path, step: int) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``out_dir/tensorboard`` that drops events after ``step``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package "
                         "(pip install 'attnmoe[tensorboard]')") from None
    return SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=step + 1 if step else None)


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


def _interval(value: int, per_epoch: int | None, option: str) -> int:
    """``value`` steps, or one epoch when ``value`` is 0."""
    if value:
        return value
    if per_epoch is None:
        raise ValueError(f"{option} 0 means once per epoch, but this task samples random blocks "
                         "(no epochs); give a number of steps")
    return per_epoch


def train_task(
    task: TaskLike,
    spec: RunSpec,
    out_dir: Path,
    *,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    label: str | None = None,
    compile: bool = False,
    tensorboard: bool = False,
    run_info: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``task.model`` as ``spec`` says and write the run into ``out_dir``.

    Args:
        task: an ``attnmoe.tasks.registry.Task`` (see :class:`TaskLike`), built from ``spec``.
        spec: the run spec (schedule, optimiser, seed, precision; stored with the run).
        out_dir: run directory (created); only rank 0 writes.
        device: ``"cpu"`` or ``"cuda"``.
        resume: continue the run in ``out_dir``: a finished one returns its metrics, an
            interrupted one continues from its checkpoint, an empty directory starts fresh.
            Without ``resume`` a directory holding any run file is an error, so runs are
            never mixed or overwritten.
        progress: show a tqdm bar (``label`` as its description, default ``task.name``).
        compile: run the forward pass through ``torch.compile`` (same numbers up to kernel
            rounding; not part of the spec).
        tensorboard: also write every ``log.jsonl`` record as TensorBoard scalars under
            ``out_dir/tensorboard`` (needs the ``tensorboard`` package; events after the
            checkpoint a resume starts from are purged, as the log's lines are).
        run_info: extra JSON-serialisable fields for ``config.json``.
        stop_after: stop (after checkpointing) once this step is reached without finishing
            the run; simulates an interruption for tests. Returns ``{}`` then.

    Returns:
        The final metrics (those of ``metrics.json``) on every rank.

    Raises:
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
        ValueError: the run in ``out_dir`` has another spec, or its files are damaged beyond
            the fallback checkpoint.
        TrainingDiverged: the training loss became NaN or infinite.
    """
    out_dir = Path(out_dir)
    where = distributed.info()
    torch_device = torch.device(device if device == "cpu" else f"cuda:{where.local_rank}")
    if spec.batch_size % where.world_size:
        raise ValueError(f"--batch-size {spec.batch_size} is not divisible by the "
                         f"{where.world_size} data-parallel processes")
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and not resume:
        raise FileExistsError(f"{out_dir} already holds a run ({', '.join(existing)}): pass "
                              "--resume to continue it, or use another --out")
    found: tuple[Path, dict[str, Any]] | None = None
    if existing:
        before = saved_spec(out_dir)
        if before is not None:
            check_same_spec(before, spec, out_dir)
        finished = read_metrics(out_dir)
        if finished is not None and before is not None:
            return finished  # nothing to do
        found = _usable_checkpoint(out_dir, spec)
    if where.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / DIVERGED_FILE).unlink(missing_ok=True)
    log_path, metrics_path = out_dir / LOG_FILE, out_dir / METRICS_FILE

    # Dropout noise differs per rank; data order does not (BatchPlan).
    seed_everything(spec.seed + 7919 * where.rank)
    plan = BatchPlan(task, spec.batch_size, spec.seed)
    total = spec.steps if spec.steps is not None else plan.steps_for(float(spec.epochs))
    check_steps(total, f"--epochs {spec.epochs}" if spec.steps is None else "--steps")
    warmup = min(spec.warmup_steps, total - 1) if total > 1 else 0
    eval_every = _interval(spec.eval_interval, plan.steps_per_epoch, "--eval-interval")
    save_every = _interval(spec.checkpoint_interval, plan.steps_per_epoch, "--checkpoint-interval")

    model = task.model.to(torch_device)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, spec.weight_decay), lr=spec.lr,
                                  betas=(spec.beta1, spec.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total, warmup, spec.min_lr_ratio))
    amp_dtype = AMP_DTYPES[spec.precision]
    scaler = torch.amp.GradScaler(torch_device.type, enabled=spec.precision == "fp16")
    n_params = count_parameters(model)
    monitor, lower_better = _monitor(task)

    state: dict[str, Any] = {"step": 0, "best": None, "best_step": None, "bad_evals": 0,
                             "stopped_early": False, "elapsed_s": 0.0, "units": 0,
                             "running": 0.0, "running_n": 0, "spec": spec.to_dict()}
    best_weights: dict[str, torch.Tensor] | None = None
    if found is not None:
        loaded = load_checkpoint(found[0], model, optimizer, scheduler, device=torch_device, state=found[1])
        state.update(loaded.state)
        best_weights = loaded.best_weights
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if where.is_main:
            _truncate_log(log_path, state["step"])
    elif where.is_main:
        atomic_write_text(log_path, "")
    if where.is_main:
        atomic_write_json(out_dir / CONFIG_FILE, {
            **(run_info or {}), "spec": spec.to_dict(), "total_steps": total, "warmup_steps": warmup,
            "eval_interval_steps": eval_every, "checkpoint_interval_steps": save_every,
            "n_params": n_params, "world_size": where.world_size, "device": device,
            "monitor": monitor, "monitor_lower_is_better": lower_better})

    log = RunLog(log_path, _tensorboard(out_dir, state["step"]) if tensorboard and where.is_main else None)
    wrapped: nn.Module = DistributedDataParallel(model) if where.enabled else model
    forward = torch.compile(wrapped) if compile else wrapped
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = tqdm(total=total, initial=state["step"], disable=not (progress and where.is_main),
               desc=label or task.name, dynamic_ncols=True, leave=False)
    last_val = None
    final_val: dict[str, float] | None = None  # the evaluation at the last step, reused at the end
    started = time.perf_counter() - state["elapsed_s"]

    def snapshot() -> None:
        state["elapsed_s"] = time.perf_counter() - started
        state["scaler"] = scaler.state_dict() if scaler.is_enabled() else None
        if where.is_main:
            save_checkpoint(out_dir, model, optimizer, scheduler, dict(state), best_weights)
        distributed.barrier()

    while state["step"] < total and not state["stopped_early"]:
        step = state["step"]
        batch = _move(_rank_slice(plan.global_batch(step), where.rank, where.world_size), torch_device)
        with torch.autocast(torch_device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            loss = task.loss_fn(forward, batch)
        if not torch.isfinite(loss):
            bar.close()
            log.close()
            value = float(loss.detach())
            if where.is_main:
                atomic_write_json(out_dir / DIVERGED_FILE, {"step": step, "loss": str(value)})
            raise TrainingDiverged(f"training diverged: the loss is {value} at step {step} "
                                   f"({task.name}); lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if spec.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        state["step"] = step = step + 1
        state["units"] += _units(batch, task.throughput_unit) * where.world_size
        state["running"] += float(loss.detach())
        state["running_n"] += 1

        if where.is_main and (step % spec.log_interval == 0 or step == total):
            mean_loss = state["running"] / state["running_n"]
            log.append({"step": step, "train_loss": mean_loss, "lr": scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{mean_loss:.4f}",
                            **({monitor: f"{last_val:.4f}"} if last_val is not None else {}))
        if step % spec.log_interval == 0 or step == total:
            state["running"], state["running_n"] = 0.0, 0

        if step % eval_every == 0 or step == total:
            decision = None
            if where.is_main:
                metrics = _evaluate(task, model, "val")
                if monitor not in metrics:
                    raise KeyError(f"task {task.name!r} evaluate('val') gave {sorted(metrics)}, "
                                   f"not the monitored metric {monitor!r}")
                last_val = metrics[monitor]
                final_val = metrics if step == total else None
                log.append({"step": step, **metrics})
                better = state["best"] is None or (
                    last_val < state["best"] if lower_better else last_val > state["best"])
                if better:
                    state.update(best=last_val, best_step=step, bad_evals=0)
                    if spec.patience is not None:
                        best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    state["bad_evals"] += 1
                decision = spec.patience is not None and state["bad_evals"] >= spec.patience
            state["stopped_early"] = bool(distributed.broadcast_object(decision))
        bar.update(1)

        if step % save_every == 0 or step == total or state["stopped_early"]:
            snapshot()
        if stop_after is not None and step >= stop_after and step < total:
            if step % save_every:
                snapshot()
            bar.close()
            log.close()
            return {}
    bar.close()
    log.close()

    elapsed = time.perf_counter() - started
    result: dict[str, Any] | None = None
    if where.is_main:
        restore = spec.patience is not None and best_weights is not None
        if restore:
            model.load_state_dict(best_weights)
        result = dict(final_val) if final_val is not None and not restore else \
            _evaluate(task, model, "val")
        # the last split evaluated also carries the attention-sink probes (train/probing.py)
        last = "test" if _has_split(task, "test") else "val"
        metrics, probed = evaluate_with_probes(lambda m, split: _evaluate(task, m, split), model, last)
        if last == "test":
            result.update(metrics)
        result.update(probed)
        result.update({
            "n_params": n_params, "steps": state["step"], "best_step": state["best_step"],
            "stopped_early": state["stopped_early"], "wall_time_s": elapsed,
            f"train_{task.throughput_unit}_per_s": state["units"] / max(elapsed, 1e-9),
        })
        atomic_write_json(metrics_path, result)
    result = distributed.broadcast_object(result)
    return result


__all__ = [
    "BatchPlan",
    "TrainingDiverged",
    "WarmupCosine",
    "count_parameters",
    "is_diverged",
    "is_finished",
    "parameter_groups",
    "read_log",
    "read_metrics",
    "saved_spec",
    "seed_everything",
    "train_task",
]
