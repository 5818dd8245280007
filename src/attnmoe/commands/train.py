"""``attnmoe train``: train one model on one task with one attention variant (issue 4).

    attnmoe train --task forecast --dataset ETTh1 --horizon 96 --attention active-gelu \\
        --data-dir ../shared/data --out runs/etth1-gelu
    attnmoe train --config runs/etth1-gelu/config.json --seed 1 --out runs/etth1-gelu-s1

The options make a run spec (``attnmoe.tasks.spec.RunSpec``): the task's reference recipe
(``docs/tasks.md``), or the spec of an earlier run (``--config RUN/config.json``), with
``--steps/--epochs``, ``--batch-size``, ``--lr``, ``--seed``, ``--precision``, ... and
``--model KEY=VALUE`` (model sizes, e.g. ``--model n_layer=2``) overriding it. Writes
``metrics.json``, ``log.jsonl``, ``config.json`` and ``checkpoint/`` into ``--out``;
``--resume`` continues an interrupted run with the same spec (another spec is refused).
Data parallel: ``torchrun --nproc_per_node 2 -m attnmoe.cli train ...`` (gloo on CPU, NCCL with
``--device cuda``); ``--batch-size`` is the global batch.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from attnmoe.train import distributed
from attnmoe.train.lock import RunBusy
from attnmoe.train.loop import TrainingDiverged
from attnmoe.utils import check_writable

TaskOpt = Annotated[str | None, typer.Option(
    "--task", help="vision, lm or forecast. Required (unless --config).", show_default=False)]
DatasetOpt = Annotated[str | None, typer.Option(
    "--dataset", show_default=False, help="Required (unless --config). vision: digits, fashion-mnist, "
    "mnist; lm: shakespeare; forecast: ETTh1, ETTh2, ETTm1, ETTm2, exchange_rate, illness, weather, "
    "electricity, traffic (any case); or a path to a text / CSV file.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Folder of the named data sets (default: $ATTNMOE_DATA_DIR).")]
HorizonOpt = Annotated[int | None, typer.Option("--horizon", help="Forecast horizon (forecast only).")]
FeaturesOpt = Annotated[str | None, typer.Option(
    "--features", help="Forecast only, as Time-Series-Library: M (all channels -> all), S (target -> "
    "target), MS (all channels -> target). Default M.")]
TargetOpt = Annotated[str | None, typer.Option(
    "--target", help="Forecast only: the target column, predicted by S / MS and moved to the last "
    "channel (default OT).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Optimiser steps (overrides the recipe).")]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="Epochs (overrides the recipe).")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Global batch size.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")]
EvalOpt = Annotated[int | None, typer.Option("--eval-interval", help="Steps between evaluations (0: per epoch).")]
CkptOpt = Annotated[int | None, typer.Option("--checkpoint-interval",
                                             help="Steps between checkpoints (0: per epoch).")]
PatienceOpt = Annotated[int | None, typer.Option("--patience", help="Early-stopping patience (evaluations).")]
PrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", help="fp32 (default), bf16 or fp16 (autocast; fp16 with a gradient scaler).")]
ModelOpt = Annotated[list[str] | None, typer.Option(
    "--model", help="Model size override KEY=VALUE (repeatable), e.g. --model n_layer=2.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
FLAG = ""
"""``metavar`` of on/off flags: they take no value (typer would show ``<bool>``)."""
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.",
                                           metavar=FLAG)]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the model's forward pass.",
                                          metavar=FLAG)]
TensorboardOpt = Annotated[bool, typer.Option(
    "--tensorboard", metavar=FLAG, help="Also log to TensorBoard in <run>/tensorboard (pip install "
    "'attnmoe\\[tensorboard]').")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="torch intra-op threads (default: torch's choice). On a shared or small "
    "machine use 1: oversubscribed threads can make small models 10x slower.")]


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (1 <= threads <= the machine's cores: more
    threads than cores only slow compute down, and a typo would start that many threads)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    cores = os.cpu_count() or 1
    if threads > cores:
        raise ValueError(f"--threads {threads} is more than the {cores} cores of this machine")
    import torch

    torch.set_num_threads(threads)


def parse_model_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["dim=64", "dropout=0.1"]`` -> ``{"dim": 64, "dropout": 0.1}`` (JSON values, else strings)."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model expects KEY=VALUE, got {item!r}")
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result


def collect_overrides(
    *, steps: int | None, epochs: float | None, batch_size: int | None, lr: float | None,
    eval_interval: int | None, checkpoint_interval: int | None, patience: int | None,
    precision: str | None, model: list[str] | None,
    features: str | None = None, target: str | None = None,
) -> dict[str, Any]:
    """Spec fields (``features`` and ``target``: forecast only) and model sizes given on the
    command line (``None`` = keep the recipe's)."""
    given = {"steps": steps, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "eval_interval": eval_interval, "checkpoint_interval": checkpoint_interval,
             "patience": patience, "precision": precision, "features": features,
             "target": target}
    return {**{k: v for k, v in given.items() if v is not None}, **parse_model_overrides(model)}


def check_out(out: Path | None) -> Path:
    """``--out`` as given. Missing or empty is refused: typer reads ``--out ''`` as ``.``, the
    current directory, which is never meant as a run directory."""
    if out is None or not str(out).strip() or str(out) == ".":
        raise ValueError("--out must name a run directory (empty or '.' would write into the "
                         "current directory)")
    return out


def base_spec(task: str | None, dataset: str | None, config: Path | None) -> Any:
    """The spec the options override: the recipe of ``task``/``dataset``, or a run's config.json."""
    from attnmoe.tasks import reference_spec
    from attnmoe.tasks.spec import RunSpec

    if config is not None:
        if task is not None or dataset is not None:
            raise ValueError("--task and --dataset come from --config; give one or the other")
        if not config.is_file():
            raise ValueError(f"--config {config}: no such file")
        try:
            record = json.loads(config.read_text())
        except (ValueError, OSError) as err:
            raise ValueError(f"--config {config} is damaged ({err}); give the config.json of "
                             "an intact run") from None
        if not isinstance(record, dict) or "spec" not in record:
            raise ValueError(f"--config {config} records no run spec (not a run's config.json)")
        return RunSpec.from_dict(record["spec"])
    if task is None or dataset is None:
        raise ValueError("give --task and --dataset (or --config RUN/config.json)")
    return reference_spec(task, dataset)


def fail(err: Exception) -> typer.Exit:
    """Print an error line on stderr (rank 0 only under torchrun) and return the exit to raise (code 2)."""
    if distributed.info().is_main:
        typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)


ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, FileNotFoundError, FileExistsError,
                                       RunBusy, TrainingDiverged)
"""What a command turns into a one-line message on stderr and exit code 2."""

INTERRUPTED = 130
"""Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports an interrupted job)."""
WRITE_FAILED = 1
"""Exit code when the run cannot be written (disk full, quota, read-only, I/O error)."""


def require_tensorboard(tensorboard: bool) -> None:
    """Refuse ``--tensorboard`` without the package, before any run folder is created."""
    if not tensorboard:
        return
    try:
        import tensorboard as _  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter as _Writer  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package "
                         "(pip install 'attnmoe[tensorboard]')") from None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _leftovers(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} if out.is_dir() else set()


@contextmanager
def clean_exit(out: Path | None) -> Iterator[None]:
    """End a ``train`` / ``compare`` command in one line whatever stops it, leaving nothing behind
    that blocks the next run.

    * Ctrl-C or SIGTERM: ``interrupted`` on stderr (with the ``--resume`` hint once a run has
      started: the checkpoints are whole), exit :data:`INTERRUPTED`;
    * an ``OSError`` (disk full, quota, read-only, I/O): ``error: <file>: <reason>``, exit
      :data:`WRITE_FAILED`;
    * any failure: a ``checkpoint.tmp`` the save left is removed, and a lock file this command
      created in a folder that holds nothing else is removed with the folder when this command
      created it (validation errors leave no trace). Only rank 0 prints.
    """
    existed = out is not None and out.exists()
    before = _leftovers(out) if out is not None else set()
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers only there
    previous = signal.getsignal(signal.SIGTERM)
    if main_thread:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    except BaseException as err:
        if out is not None:
            _tidy(out, existed, before)
        started = out is not None and any((out / name).exists() for name in ("config.json", "comparison.json"))
        if isinstance(err, KeyboardInterrupt):
            if distributed.info().is_main:
                typer.echo("interrupted" + ("; the checkpoints are whole: rerun with --resume to continue"
                                            if started else ""), err=True)
            raise typer.Exit(code=INTERRUPTED) from None
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | FileExistsError):
            if distributed.info().is_main:
                reason = err.strerror or str(err)
                where = f"{err.filename}: " if getattr(err, "filename", None) else ""
                full = err.errno in (errno.ENOSPC, errno.EDQUOT)
                hint = " (free some space, then rerun with --resume)" if full and started else ""
                typer.echo(f"error: {where}{reason}{hint}", err=True)
            raise typer.Exit(code=WRITE_FAILED) from None
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _tidy(out: Path, existed: bool, before: set[str]) -> None:
    """Remove what a failed command left that holds no run: ``checkpoint.tmp``, and a new ``.lock``
    alone in its folder (with the folder when the command created it) when no process holds it
    (checked with a non-blocking ``flock``: another command may be starting the same run)."""
    from attnmoe.train.lock import LOCK_FILE

    if not distributed.info().is_main:
        return
    for run in [out, *out.glob("*/seed*")]:
        shutil.rmtree(run / "checkpoint.tmp", ignore_errors=True)
    if _leftovers(out) != {LOCK_FILE} or LOCK_FILE in before:
        return
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR)
    except OSError:
        return
    try:  # only a lock nobody holds is removed (another process may be starting this run)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (out / LOCK_FILE).unlink()
        if not existed:
            out.rmdir()
    except OSError:
        pass
    finally:
        os.close(fd)


def train_command(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (created). Required.", show_default=False)] = None,
    task: TaskOpt = None,
    dataset: DatasetOpt = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Rerun the spec of a run's config.json (other options override it).")] = None,
    attention: Annotated[str | None, typer.Option("--attention", help="Attention variant, e.g. softmax "
                                                  "(default), active-gelu, gated-g1, sigmoid, "
                                                  "active-gelu+gated-g1.")] = None,
    data_dir: DataDirOpt = None,
    horizon: HorizonOpt = None,
    features: FeaturesOpt = None,
    target: TargetOpt = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (>= 0, default 0): initialisation, "
                                             "data order, dropout.")] = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    eval_interval: EvalOpt = None,
    checkpoint_interval: CkptOpt = None,
    patience: PatienceOpt = None,
    precision: PrecisionOpt = None,
    model: ModelOpt = None,
    resume: Annotated[bool, typer.Option("--resume", metavar=FLAG,
                                         help="Continue the run in --out (same spec).")] = False,
    device: DeviceOpt = "cpu",
    compile: CompileOpt = False,
    tensorboard: TensorboardOpt = False,
    progress: ProgressOpt = True,
    threads: ThreadsOpt = None,
) -> None:
    """Train one model on one task with one attention variant; write metrics.json, log.jsonl, config.json."""
    with clean_exit(out if out is not None and str(out).strip() and str(out) != "." else None):
        metrics, here = _train(out, task, dataset, config, attention, data_dir, horizon, features, target,
                               steps, epochs, seed, batch_size, lr, eval_interval, checkpoint_interval,
                               patience, precision, model, resume, device, compile, tensorboard, progress,
                               threads)
    if here.is_main:
        json.dump(metrics, sys.stdout, indent=2)
        sys.stdout.write("\n")


def _train(out, task, dataset, config, attention, data_dir, horizon, features, target, steps, epochs,
           seed, batch_size, lr, eval_interval, checkpoint_interval, patience, precision, model, resume,
           device, compile, tensorboard, progress, threads) -> tuple[dict[str, Any], Any]:
    """The body of :func:`train_command` (its options in order): ``(metrics, distributed.info())``."""
    from attnmoe.tasks import apply_overrides
    from attnmoe.train.run import run_one

    here = distributed.info()
    try:
        out = check_out(out)
        overrides = collect_overrides(steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
                                      eval_interval=eval_interval,
                                      checkpoint_interval=checkpoint_interval, patience=patience,
                                      precision=precision, model=model, features=features,
                                      target=target)
        spec = apply_overrides(base_spec(task, dataset, config), attention=attention, seed=seed,
                               horizon=horizon, overrides=overrides)
        set_threads(threads)
        require_tensorboard(tensorboard)
        here, _ = distributed.setup(device)
        if here.is_main:
            check_writable(out)
        metrics = run_one(spec, out, data_dir=data_dir, device=device, resume=resume,
                          progress=progress, compile=compile, tensorboard=tensorboard)
    except ERRORS as err:
        raise fail(err) from None
    finally:
        distributed.cleanup()
    return metrics, here
