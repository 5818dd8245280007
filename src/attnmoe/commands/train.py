"""``attnmoe train``: train one model on one task with one attention variant (issue 4).

    attnmoe train --task forecast --dataset ETTh1 --horizon 96 --attention active-gelu \\
        --data-dir ../shared/data --out runs/etth1-gelu

The defaults are the task's reference recipe (``attnmoe.tasks.registry``, ``docs/tasks.md``);
``--steps/--epochs``, ``--batch-size``, ``--lr``, ``--seed`` and ``--model KEY=VALUE`` (model
sizes, e.g. ``--model n_layer=2``) override it. Writes ``metrics.json``, ``log.jsonl``,
``config.json`` and ``checkpoint/`` into ``--out``; ``--resume`` continues an interrupted run.
Data parallel: ``torchrun --nproc_per_node 2 -m attnmoe.cli train ...`` (gloo on CPU, NCCL with
``--device cuda``); ``--batch-size`` is the global batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from attnmoe.train import distributed
from attnmoe.utils import check_writable

TaskOpt = Annotated[str, typer.Option("--task", help="vision, lm or forecast.")]
DatasetOpt = Annotated[str, typer.Option(
    "--dataset", help="fashion-mnist, mnist, digits, shakespeare, ETTh1, ETTh2, exchange_rate, "
    "illness, or a path to a text / CSV file.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Folder of the named data sets (default: $ATTNMOE_DATA_DIR).")]
HorizonOpt = Annotated[int | None, typer.Option("--horizon", help="Forecast horizon (forecast only).")]
FeaturesOpt = Annotated[str | None, typer.Option(
    "--features", help="Forecast only, as Time-Series-Library: M (all channels -> all), S (target -> "
    "target), MS (all channels -> target). Default M.")]
TargetOpt = Annotated[str | None, typer.Option(
    "--target", help="Forecast only: the target column for S / MS (default OT).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Optimiser steps (overrides the recipe).")]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="Epochs (overrides the recipe).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Global batch size.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")]
EvalOpt = Annotated[int | None, typer.Option("--eval-interval", help="Steps between evaluations.")]
CkptOpt = Annotated[int | None, typer.Option("--checkpoint-interval", help="Steps between checkpoints.")]
PatienceOpt = Annotated[int | None, typer.Option("--patience", help="Early-stopping patience (evaluations).")]
ModelOpt = Annotated[list[str] | None, typer.Option(
    "--model", help="Model size override KEY=VALUE (repeatable), e.g. --model n_layer=2.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="torch intra-op threads (default: torch's choice). On a shared or small "
    "machine use 1: oversubscribed threads can make small models 10x slower.")]


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (must be >= 1)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def parse_model_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["dim=64", "dropout=0.1"]`` -> ``{"dim": 64, "dropout": 0.1}`` (JSON values, else strings)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--model expects KEY=VALUE, got {item!r}")
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result


def collect_overrides(
    *, steps: int | None, epochs: float | None, batch_size: int | None, lr: float | None,
    eval_interval: int | None, checkpoint_interval: int | None, patience: int | None,
    model: list[str] | None, features: str | None = None, target: str | None = None,
) -> dict[str, Any]:
    """Recipe, model-size and forecast-data (``features``, ``target``) overrides given on the
    command line (``None`` = default)."""
    if steps is not None and epochs is not None:
        raise typer.BadParameter("give --steps or --epochs, not both")
    given = {"steps": steps, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "eval_interval": eval_interval, "checkpoint_interval": checkpoint_interval,
                 "patience": patience, "features": features, "target": target}
    return {**{k: v for k, v in given.items() if v is not None}, **parse_model_overrides(model)}


def fail(err: Exception) -> typer.Exit:
    """Print an error line on stderr and return the exit to raise (code 2)."""
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)


def train(
    task: TaskOpt,
    dataset: DatasetOpt,
    out: Annotated[Path, typer.Option("--out", help="Run directory (created).")],
    attention: Annotated[str, typer.Option("--attention", help="Attention variant, e.g. softmax, "
                                           "active-gelu, gated-g1, sigmoid, active-gelu+gated-g1.")] = "softmax",
    data_dir: DataDirOpt = None,
    horizon: HorizonOpt = None,
    features: FeaturesOpt = None,
    target: TargetOpt = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: initialisation, data order, dropout.")] = 0,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    eval_interval: EvalOpt = None,
    checkpoint_interval: CkptOpt = None,
    patience: PatienceOpt = None,
    model: ModelOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's checkpoint.")] = False,
    device: DeviceOpt = "cpu",
    progress: ProgressOpt = True,
    threads: ThreadsOpt = None,
) -> None:
    """Train one model on one task with one attention variant; write metrics.json, log.jsonl, config.json."""
    from attnmoe.train.compare import run_one

    try:
        overrides = collect_overrides(steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
                                      eval_interval=eval_interval,
                                      checkpoint_interval=checkpoint_interval, patience=patience,
                                      model=model, features=features, target=target)
        set_threads(threads)
        here, _ = distributed.setup(device)
        if here.is_main:
            check_writable(out)
        metrics = run_one(task, dataset, attention, out, seed=seed, data_dir=data_dir,
                          horizon=horizon, overrides=overrides, device=device, resume=resume,
                          progress=progress)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        raise fail(err) from None
    finally:
        distributed.cleanup()
    if here.is_main:
        json.dump(metrics, sys.stdout, indent=2)
        sys.stdout.write("\n")
