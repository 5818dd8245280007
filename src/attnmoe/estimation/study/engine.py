"""Study presets of model families that are not the core least-squares grid of :mod:`.plan`.

A likelihood mixture (issue 12) or a hierarchical, attention-shaped mixture (issue 13) has its
own truths, fits and losses, so its study cannot be a list of :class:`~attnmoe.estimation.truth.Setting`.
Such a family registers a :class:`FamilyPreset` here, by name, and ``attnmoe rates --preset NAME``
runs it: a new paper is a new module that calls :func:`register_family_preset`, plus one line in
:data:`_PLUGINS` so that the registry finds it without the CLI importing every family.

Contract of ``FamilyPreset.run``: fit into ``args.out`` (resumable: records already there are
reused, a mismatched resume is refused), write every file atomically, and return a
:class:`FamilyResult` whose ``markdown`` is what the CLI prints.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from attnmoe.estimation.study.plan import default_threads, default_workers

__all__ = ["FAMILY_PRESETS", "FamilyArgs", "FamilyPlan", "FamilyPreset", "FamilyResult", "family_presets",
           "near_best_set", "register_family_preset", "run_family_study", "run_jobs"]


@dataclass(frozen=True)
class FamilyArgs:
    """What ``attnmoe rates`` passes to a family preset.

    Args:
        out: output directory (created; resumable).
        full: the committed study's size instead of the quick one.
        replicates: replicate seeds per (setting, n); None = the preset's.
        n_grid: sample sizes; None = the preset's.
        seed: seed of the first replicate.
        workers: parallel worker processes; None = one per core, at most one per job
            (:func:`~attnmoe.estimation.study.plan.default_workers`, as the least-squares studies).
        threads: torch threads per worker; None = the project default.
        progress: show progress bars.
        backend: ``"process"`` or ``"ray"`` (:func:`~attnmoe.estimation.study.backends.map_jobs`).
        summary_only: fit nothing; summarise the records on file (every n and seed there unless
            ``n_grid`` / ``replicates`` are given).
        device: ``"cpu"`` (the family presets do not run on a GPU yet: ``"cuda"`` is refused).
    """

    out: Path
    full: bool = False
    replicates: int | None = None
    n_grid: tuple[int, ...] | None = None
    seed: int = 0
    workers: int | None = None
    threads: int | None = None
    progress: bool = True
    backend: str = "process"
    summary_only: bool = False
    device: str = "cpu"

    def check(self) -> None:
        """One-line errors for what no family preset can do."""
        from attnmoe.estimation.study.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.device != "cpu":
            raise ValueError(f"--device {self.device}: the family presets (likelihood, hmoe) run on the CPU only "
                             "so far; the least-squares presets take --device cuda")
        if self.summary_only and not self.out.is_dir():
            raise ValueError(f"--summary-only: {self.out} is not a study folder")
        # the least-squares presets' bounds (plan.py), before any seed list or job is built
        from attnmoe.estimation.study.plan import MAX_N, MAX_REPLICATES, check_positive_int

        if self.replicates is not None:
            check_positive_int(self.replicates, "--replicates", maximum=MAX_REPLICATES)
        for value, option in ((self.workers, "--workers"), (self.threads, "--threads")):
            if value is not None:
                check_positive_int(value, option)  # 0 or less: refused, not read as the default
        if self.n_grid and max(self.n_grid) > MAX_N:
            raise ValueError(f"--n-grid: every n must be at most {MAX_N}, got {max(self.n_grid)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}")

    def scope(self, records: Sequence[dict[str, Any]], grid: Sequence[int],
              seeds: Sequence[int]) -> tuple[tuple[int, ...], list[int]]:
        """The sizes and seeds a summary covers: ``grid`` and ``seeds``, or with ``summary_only``
        every n / seed on file unless ``n_grid`` / ``replicates`` were given."""
        if not self.summary_only:
            return tuple(grid), list(seeds)
        on_file_n = sorted({int(r["n"]) for r in records})
        on_file_seeds = sorted({int(r["seed"]) for r in records})
        return (tuple(grid) if self.n_grid else tuple(on_file_n),
                list(seeds) if self.replicates is not None else on_file_seeds)


@dataclass(frozen=True)
class FamilyResult:
    """Outcome of a family preset: counts, the printed summary and the files written."""

    fitted: int
    reused: int
    seconds: float
    markdown: str
    files: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class FamilyPreset:
    """A named study of one model family (``run`` implements it; see the module docstring)."""

    name: str
    description: str
    run: Callable[[FamilyArgs], FamilyResult]


FAMILY_PRESETS: dict[str, FamilyPreset] = {}

#: modules that register family presets when imported (one line per family)
_PLUGINS: tuple[str, ...] = (
    "attnmoe.estimation.likelihood.study",
    "attnmoe.estimation.hmoe",
)


def near_best_set(fits: Sequence[int], loss: Tensor, converged: Tensor, window: float) -> list[int]:
    """The near-best set of one replicate's fits ``fits`` (indices into ``loss`` / ``converged``):
    the converged ones whose training loss is within ``window`` of the best converged one
    (empty when none converged). The width of a study is the largest loss over this set."""
    ok = [i for i in fits if bool(converged[i])]
    best = min((float(loss[i]) for i in ok), default=math.nan)
    return [i for i in ok if float(loss[i]) <= best + window]


def register_family_preset(preset: FamilyPreset) -> FamilyPreset:
    """Add ``preset`` to :data:`FAMILY_PRESETS` (a name may be registered once)."""
    if preset.name in FAMILY_PRESETS and FAMILY_PRESETS[preset.name] is not preset:
        raise ValueError(f"family preset {preset.name!r} is already registered")
    FAMILY_PRESETS[preset.name] = preset
    return preset


def family_presets() -> dict[str, FamilyPreset]:
    """Every registered family preset (imports the modules of :data:`_PLUGINS` first)."""
    for module in _PLUGINS:
        importlib.import_module(module)
    return FAMILY_PRESETS


def run_jobs(
    jobs: Sequence[tuple],
    fit: Callable[..., list[dict[str, Any]]],
    append: Callable[[list[dict[str, Any]]], None],
    *,
    workers: int | None,
    threads: int | None,
    desc: str,
    progress: bool,
    backend: str = "process",
) -> int:
    """Run ``fit(*job)`` for every job (each returns its records) on ``backend``
    (:func:`~attnmoe.estimation.study.backends.map_jobs`: this process, ``workers`` spawned
    processes, or Ray) with ``threads`` torch threads each (default ``OMP_NUM_THREADS`` or 1),
    handing each job's records to ``append`` as soon as it finishes; returns the number of
    records; ``workers`` None: one per core, at most one per job. ``fit`` must be a module-level
    function (it is pickled to the workers). A record depends only on its job, not on the worker
    that fitted it or the order of completion."""
    from attnmoe.estimation.study.backends import map_jobs

    n_threads = int(threads or default_threads())
    n_workers = max(1, min(workers or default_workers(len(jobs), n_threads), len(jobs) or 1))
    if not jobs:
        return 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=desc)
    count = 0
    try:
        for records in map_jobs(fit, jobs, backend=backend, workers=n_workers, threads=n_threads):
            append(records)
            count += len(records)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return count


@dataclass(frozen=True)
class FamilyPlan:
    """What a family preset hands to :func:`run_family_study`: its identity, grid and the three
    functions only it knows.

    Args:
        name: progress label and the preset's name in messages.
        config: what ``study.json`` holds (fit options, code version, truth); its hash is stamped
            on every record (:func:`~attnmoe.estimation.study.records.identity_of`).
        settings: setting names of the study.
        grid: sample sizes; seeds: replicate seeds (before ``--summary-only`` widens them).
        fit: module-level ``fit(*job) -> records`` (pickled to workers).
        jobs: ``(setting, n, seeds still to fit) -> job tuples`` (how a cell is split in blocks).
        summarize: ``(out, records) -> markdown``: writes the summary files, returns what is printed.
        files: the files the study writes (reported by the CLI).
    """

    name: str
    config: dict[str, Any]
    settings: Sequence[str]
    grid: Sequence[int]
    seeds: Sequence[int]
    fit: Callable[..., list[dict[str, Any]]]
    jobs: Callable[[str, int, list[int]], list[tuple]]
    summarize: Callable[[Path, list[dict[str, Any]]], str]
    files: tuple[str, ...]


def run_family_study(args: FamilyArgs, plan: FamilyPlan) -> FamilyResult:
    """The one run / resume loop of the family presets: check everything before writing (the
    arguments, ``study.json`` against ``plan.config``, the records' identity), write
    ``study.json``, fit the missing (setting, n, seed) on ``args.backend`` appending each job's
    records as it finishes, then summarise. With ``args.summary_only`` nothing is fitted or
    written but the summary."""
    import json
    import time

    from attnmoe.estimation.study.records import (
        RECORDS_FILE,
        STUDY_FILE,
        RecordWriter,
        atomic_write,
        check_identity,
        identity_of,
        jsonable,
        read_config,
        read_records,
        record_key,
        stamp,
    )
    from attnmoe.utils import check_writable

    args.check()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write to output directory {out}: it exists and is not a directory")
    want = jsonable(plan.config)
    previous = read_config(out) if out.is_dir() else None
    if previous is not None and {k: previous.get(k) for k in want} != want:
        raise ValueError(f"{out} holds a study with other options or truth ({previous.get('fit')}); resume with "
                         f"the same preset ({plan.name}) and options or use another --out")
    if args.summary_only and previous is None:
        raise ValueError(f"--summary-only: {out} holds no {STUDY_FILE}: no {plan.name} study to summarise")
    records, _bad = read_records(out / RECORDS_FILE)
    identity = identity_of(want)
    grid, seeds = args.scope(records, plan.grid, plan.seeds)
    jobs: list[tuple] = []
    if not args.summary_only:
        check_identity(records, identity, out / RECORDS_FILE, config_on_file=previous is not None)
        done = {record_key(r) for r in records}
        for name in plan.settings:
            for n in grid:
                todo = [sd for sd in seeds if (name, n, sd) not in done]
                if todo:
                    jobs.extend(plan.jobs(name, n, todo))
        out = check_writable(out)
        if previous is None:
            atomic_write(out / STUDY_FILE, json.dumps(want, indent=2, sort_keys=True) + "\n")
    writer = RecordWriter(out / RECORDS_FILE)
    start = time.perf_counter()

    def append(new: list[dict[str, Any]]) -> None:
        new = stamp(new, identity)
        writer.append(new)
        records.extend(new)

    fitted = run_jobs(jobs, plan.fit, append, workers=args.workers, threads=args.threads, desc=plan.name,
                      progress=args.progress, backend=args.backend)
    keep = [r for r in records if r["setting"] in set(plan.settings) and int(r["n"]) in set(grid)
            and int(r["seed"]) in set(seeds)]
    markdown = plan.summarize(out, keep)
    return FamilyResult(fitted=fitted, reused=len(keep) - fitted, seconds=time.perf_counter() - start,
                        markdown=markdown, files=plan.files)
