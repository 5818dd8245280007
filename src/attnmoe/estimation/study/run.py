"""Run (or resume) a study, or re-summarise one, and write every output file.

Order of work in :func:`run_study`: validate every input (settings, grid, replicates, backend,
workers, threads, block size, the existing ``study.json`` and ``records.jsonl``) -> create the
output directory and record the fit options -> plan the missing ``(setting, n, seed)`` blocks
-> run them on a backend, appending each finished block to ``records.jsonl`` -> summarise ->
write ``summary.json``, ``summary.md`` and ``rates.png``. Nothing is written before every check
has passed; an interrupt loses at most the blocks in flight.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnmoe.estimation.options import FitOptions
from attnmoe.estimation.study.backends import BACKENDS, FitFn, fit_block, run_blocks
from attnmoe.estimation.study.plan import (
    check_block_memory,
    check_positive_int,
    default_threads,
    default_workers,
    plan_jobs,
    replicate_seeds,
    validate_study,
)
from attnmoe.estimation.study.records import (
    RECORDS_FILE,
    BadLine,
    Record,
    RecordWriter,
    check_identity,
    check_or_write_config,
    check_records_file,
    identity_of,
    read_config,
    read_records,
    record_key,
    stamp,
    study_config,
)
from attnmoe.estimation.study.report import write_outputs
from attnmoe.estimation.study.summary import summarize_records
from attnmoe.estimation.study.sweep import sweep_summary
from attnmoe.estimation.truth import Setting
from attnmoe.utils import check_writable

__all__ = ["StudyResult", "resummarize", "run_study"]


@dataclass
class StudyResult:
    """What :func:`run_study` did: records of the study, new fits, skipped lines, summary."""

    out: Path
    records: list[Record]
    fitted: int
    reused: int
    bad_lines: list[BadLine]
    summary: dict
    seconds: float
    workers: int = 1
    threads: int = 1


def _summarize_and_write(
    out: Path, records: Sequence[Record], settings: Sequence[Setting], n_boot: int
) -> dict[str, Any]:
    """Slopes on n, the noise-sweep slopes when the records hold a sweep, and the output files."""
    summary = summarize_records(records, n_boot=n_boot, settings=settings)
    sweep = sweep_summary(records, n_boot=n_boot)
    if sweep["settings"]:
        summary["sweep"] = sweep
    write_outputs(out, summary, records)
    return summary


def run_study(
    settings: Sequence[Setting],
    n_grid: Sequence[int],
    replicates: int,
    out: Path | str,
    *,
    options: FitOptions | None = None,
    backend: str = "process",
    workers: int | None = None,
    threads: int | None = None,
    block_size: int | None = None,
    base_seed: int = 0,
    progress: bool = True,
    fit: FitFn = fit_block,
    n_boot: int = 2000,
) -> StudyResult:
    """Run (or resume) a convergence-rate study and write every output file in ``out``.

    Args:
        settings: ``Setting`` objects (see :func:`~attnmoe.estimation.study.plan.resolve_settings`).
        n_grid: sample sizes (each in 1 .. :data:`~attnmoe.estimation.study.plan.MAX_N`).
        replicates: replicate seeds per ``(setting, n)``: ``base_seed .. base_seed+R-1``.
        out: output directory (created; must be writable).
        options: fit options (must match those of a study being resumed).
        backend: ``"process"`` (``workers=1`` runs in this process) or ``"ray"``.
        workers: parallel workers; default :func:`~attnmoe.estimation.study.plan.default_workers`
            (one per core, at most one per job).
        threads: torch threads per worker; default
            :func:`~attnmoe.estimation.study.plan.default_threads` (``OMP_NUM_THREADS`` or 1).
        block_size: seeds per batched call; default all the replicates of one ``(setting, n)``.
        base_seed: seed of the first replicate.
        progress: show a tqdm bar over fits.
        fit: the unit of work (``fit_block``'s signature); tests pass a fake.
        n_boot: bootstrap resamples for the slope CIs.

    Raises:
        ValueError: any invalid input, before anything is written.
    """
    t0 = time.perf_counter()
    options = options if options is not None else FitOptions()
    if not isinstance(options, FitOptions):
        raise TypeError(f"options must be a FitOptions, got {type(options).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if options.device == "cuda" and backend == "process" and not _cuda_available():
        raise ValueError("--device cuda: no GPU is visible to torch here (torch.cuda.is_available() is False)")
    if workers is not None:
        check_positive_int(workers, "--workers")
    threads = default_threads() if threads is None else check_positive_int(threads, "--threads")
    block_size = replicates if block_size is None else check_positive_int(block_size, "--block-size")
    check_positive_int(n_boot, "n_boot")
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or base_seed < 0:
        # replicate seeds feed numpy's SeedSequence, which takes non-negative integers only
        raise ValueError(f"--seed must be a non-negative integer, got {base_seed!r}")
    validate_study(settings, n_grid, replicates)
    n_grid = [int(n) for n in n_grid]
    out = Path(out)
    records_path = out / RECORDS_FILE
    config_on_file = False
    existing, bad = [], []
    if out.is_dir():  # checks on what a resumed study holds, still before any write
        check_records_file(records_path)
        check_or_write_config(out, options, write=False)
        config_on_file = read_config(out) is not None
        existing, bad = read_records(records_path)
    identity = identity_of(study_config(options))
    check_identity(existing, identity, records_path, config_on_file=config_on_file)
    seeds = replicate_seeds(replicates, base_seed)
    wanted = {(s.name, n, sd) for s in settings for n in n_grid for sd in seeds}
    done = {record_key(r) for r in existing} & wanted
    jobs = plan_jobs(settings, n_grid, seeds, done, block_size)
    workers = workers if workers is not None else default_workers(len(jobs), threads)
    total = sum(len(j.seeds) for j in jobs)
    if jobs:
        starts = options.starts * len(options.init.split("+"))
        check_block_memory(max(len(j.seeds) for j in jobs), starts, max(j.n for j in jobs), min(workers, len(jobs)),
                           max(s.fit_layout.n_params for s in settings))
    out = check_writable(out)
    check_or_write_config(out, options)

    writer = RecordWriter(records_path)
    new: list[Record] = []
    if jobs:
        from tqdm.auto import tqdm

        stream = run_blocks(jobs, options, backend=backend, workers=workers, threads=threads, fit=fit)
        with tqdm(total=total, unit="fit", disable=not progress, desc="rates") as bar:
            for block in stream:
                block = stamp(block, identity)
                writer.append(block)
                new.extend(block)
                bar.update(len(block))
    study_records = [r for r in existing + new if record_key(r) in wanted]
    summary = _summarize_and_write(out, study_records, settings, n_boot)
    return StudyResult(
        out=out,
        records=study_records,
        fitted=len(new),
        reused=len(done),
        bad_lines=bad,
        summary=summary,
        seconds=time.perf_counter() - t0,
        workers=workers,
        threads=threads,
    )


def resummarize(
    out: Path | str,
    settings: Sequence[Setting],
    n_grid: Sequence[int] | None = None,
    replicates: int | None = None,
    *,
    base_seed: int = 0,
    n_boot: int = 2000,
) -> StudyResult:
    """Rewrite the summary files of ``out`` from its ``records.jsonl`` without fitting anything.

    Uses every record of the given settings, restricted to ``n_grid`` and to the first
    ``replicates`` seeds when those are given (else every sample size and seed on file), so a
    study whose settings were run on different grids can be summarised as it stands.
    """
    t0 = time.perf_counter()
    out = Path(out)
    records_path = out / RECORDS_FILE
    if not records_path.exists() and not records_path.with_name(RECORDS_FILE + ".gz").exists():
        raise ValueError(f"{records_path} does not exist: nothing to summarise")
    check_records_file(records_path)
    if replicates is not None:
        check_positive_int(replicates, "--replicates")
    check_positive_int(n_boot, "n_boot")
    out = check_writable(out)
    existing, bad = read_records(records_path)
    names = {s.name for s in settings}
    grid = None if n_grid is None else {int(n) for n in n_grid}
    seeds = None if replicates is None else set(replicate_seeds(replicates, base_seed))
    chosen = [
        r for r in existing
        if r["setting"] in names
        and (grid is None or int(r["n"]) in grid)
        and (seeds is None or int(r["seed"]) in seeds)
    ]
    if not chosen:
        raise ValueError(f"{records_path} holds no records of the chosen settings / sizes / seeds")
    try:  # a summary fits nothing, but says so when it mixes options
        config = read_config(out)
    except ValueError:  # an unreadable study.json does not stop a summary
        config = None
    other = 0 if config is None else sum(r.get("options_hash") not in (None, identity_of(config)) for r in chosen)
    if other:
        warnings.warn(f"{other} of the {len(chosen)} records summarised were fitted under other options than "
                      f"{out / 'study.json'} records (their options_hash differs)", RuntimeWarning, stacklevel=2)
    summary = _summarize_and_write(out, chosen, settings, n_boot)
    return StudyResult(
        out=out, records=chosen, fitted=0, reused=len(chosen), bad_lines=bad, summary=summary,
        seconds=time.perf_counter() - t0,
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
