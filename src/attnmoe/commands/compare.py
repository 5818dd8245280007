"""``attnmoe compare``: every attention variant x seed on one task, mean ± std and t-tests.

    attnmoe compare --task forecast --dataset ETTh1 --horizon 96 \\
        --attention softmax,active-gelu,active-relu,gated-g1,sigmoid --seeds 3 \\
        --data-dir ../shared/data --out runs/cmp-etth1-96

Runs go to ``<out>/<variant>/seed<k>/`` (each a full ``attnmoe train`` run directory);
running the same command again skips finished runs and resumes interrupted ones, and every
run not trained is named on stderr with the reason (finished, diverged, held by another
process). A diverged run is recorded as such and the comparison goes on. Writes
``summary.md``, ``summary.json`` and ``curves.png`` in ``--out`` (after every run, so a
comparison cut short still has a summary of what finished). ``--summary-only`` rewrites the
summary without training. ``--reuse <summary.json>`` takes the finished runs of a committed
comparison of the same recipe (refused otherwise) instead of retraining them, e.g. to extend
a 3-seed comparison to 10 seeds. See ``attnmoe.train.compare``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from attnmoe.commands.train import (
    ERRORS,
    FLAG,
    BatchOpt,
    CkptOpt,
    CompileOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    EpochsOpt,
    EvalOpt,
    FeaturesOpt,
    HorizonOpt,
    LrOpt,
    ModelOpt,
    PatienceOpt,
    PrecisionOpt,
    ProgressOpt,
    StepsOpt,
    TargetOpt,
    TaskOpt,
    TensorboardOpt,
    ThreadsOpt,
    check_out,
    clean_exit,
    collect_overrides,
    fail,
    require_tensorboard,
    set_threads,
)
from attnmoe.train import distributed
from attnmoe.utils import check_writable


def compare_command(
    out: Annotated[Path | None, typer.Option(
        "--out", help="Comparison directory (created; resumable). Required.", show_default=False)] = None,
    task: TaskOpt = None,
    dataset: DatasetOpt = None,
    attention: Annotated[str, typer.Option(
        "--attention", help="Comma-separated variants; softmax is the t-test baseline.")
    ] = "softmax,active-gelu,active-relu,gated-g1,sigmoid",
    seeds: Annotated[str, typer.Option(
        "--seeds", help="Number of seeds (3 -> 0,1,2) or a comma list (0,1,2).")] = "3",
    data_dir: DataDirOpt = None,
    horizon: HorizonOpt = None,
    features: FeaturesOpt = None,
    target: TargetOpt = None,
    steps: StepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    eval_interval: EvalOpt = None,
    checkpoint_interval: CkptOpt = None,
    patience: PatienceOpt = None,
    precision: PrecisionOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "cpu",
    compile: CompileOpt = False,
    tensorboard: TensorboardOpt = False,
    progress: ProgressOpt = True,
    threads: ThreadsOpt = None,
    summary_only: Annotated[bool, typer.Option(
        "--summary-only", metavar=FLAG,
        help="Only rewrite summary.md/json and curves.png from finished runs.")] = False,
    reuse: Annotated[Path | None, typer.Option(
        "--reuse", metavar="<summary.json>",
        help="Take the finished runs of this committed comparison summary (same recipe, else "
             "refused) instead of training them; the others are trained.", show_default=False)] = None,
) -> None:
    """Train every variant x seed (skipping finished runs); write summary.md, summary.json, curves.png."""
    with clean_exit(out if out is not None and str(out).strip() and str(out) != "." else None):
        main, summary = _compare(out, task, dataset, attention, seeds, data_dir, horizon, features, target,
                                 steps, epochs, batch_size, lr, eval_interval, checkpoint_interval,
                                 patience, precision, model, device, compile, tensorboard, progress,
                                 threads, summary_only, reuse)
    if main and summary:
        typer.echo((out / "summary.md").read_text())


def _compare(out, task, dataset, attention, seeds, data_dir, horizon, features, target, steps, epochs,
             batch_size, lr, eval_interval, checkpoint_interval, patience, precision, model, device,
             compile, tensorboard, progress, threads, summary_only, reuse=None) -> tuple[bool, object]:
    """The body of :func:`compare_command` (its options in order): ``(is rank 0, summary)``."""
    from attnmoe.tasks import resolve_spec
    from attnmoe.train.compare import (
        parse_seeds,
        parse_variants,
        run_comparison,
        summarize_comparison,
    )

    main = True
    try:
        out = check_out(out)
        if summary_only:
            summary = summarize_comparison(out)
        else:
            if task is None or dataset is None:
                raise ValueError("give --task and --dataset")
            variants = parse_variants(attention)
            seed_list = parse_seeds(seeds)
            overrides = collect_overrides(steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
                                          eval_interval=eval_interval,
                                          checkpoint_interval=checkpoint_interval,
                                          patience=patience, precision=precision, model=model,
                                          features=features, target=target)
            base = resolve_spec(task, dataset, attention=variants[0], seed=seed_list[0],
                                horizon=horizon, overrides=overrides)
            set_threads(threads)
            require_tensorboard(tensorboard)
            main = distributed.setup(device)[0].is_main
            if main:
                check_writable(out)
            command = "attnmoe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            summary = run_comparison(base, variants, seed_list, out, data_dir=data_dir,
                                     device=device, progress=progress, command=command,
                                     compile=compile, tensorboard=tensorboard, reuse=reuse,
                                     report=(lambda line: typer.echo(line, err=True)) if main else None)
    except ERRORS as err:
        raise fail(err) from None
    finally:
        distributed.cleanup()
    return main, summary
