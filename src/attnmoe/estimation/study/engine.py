"""The one run / resume / jobs loop of every study preset (least squares, likelihood, hmoe).

A preset turns the run options (:class:`StudyArgs`) into a :class:`StudyPlan`: what
``study.json`` holds, the settings, sample sizes and replicate seeds, the module-level unit of
work ``fit(*job) -> records``, how a ``(setting, n)`` cell's missing seeds are split into jobs,
and how records are summarised. :func:`run_plan` does the rest, the same way for every family:

1. check every input and what ``out`` holds before anything is written: the run options, the
   ``study.json`` on file against the plan's (:func:`check_config`), the records' identity
   (:func:`~attnmoe.estimation.study.records.check_identity`), the plan's own check of its jobs
   (e.g. the memory bound);
2. write ``study.json`` (first run), fit the missing ``(setting, n, seed)``, largest n first, on
   the chosen backend (:func:`~attnmoe.estimation.study.backends.map_jobs`), appending each
   job's records, stamped with the options hash, as soon as it finishes;
3. summarise the study's records and write ``summary.json``, ``summary.md`` and ``rates.png``
   (:func:`~attnmoe.estimation.study.report.write_outputs`).

With ``summary_only`` nothing is fitted: the records on file (every n and seed unless
``n_grid`` / ``replicates`` are given) are summarised, with a warning naming how many were
fitted under other options than ``study.json`` records. An interrupt loses at most the jobs in
flight; the same command resumes.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnmoe.estimation.families.common import check_perturb
from attnmoe.estimation.study.backends import BACKENDS, map_jobs
from attnmoe.estimation.study.plan import (
    MAX_N,
    MAX_REPLICATES,
    check_positive_int,
    default_threads,
    default_workers,
)
from attnmoe.estimation.study.records import (
    RECORDS_FILE,
    STUDY_FILE,
    BadLine,
    Record,
    RecordWriter,
    atomic_write,
    check_identity,
    check_records_file,
    identity_of,
    jsonable,
    read_config,
    read_records,
    record_key,
    stamp,
)
from attnmoe.estimation.study.report import StudySummary, write_outputs
from attnmoe.utils import check_writable

__all__ = ["OUTPUT_FILES", "StudyArgs", "StudyPlan", "StudyResult", "StudySummary", "check_config", "choose_settings",
           "run_plan"]

#: the files every study writes in its folder
OUTPUT_FILES: tuple[str, ...] = (STUDY_FILE, RECORDS_FILE, "summary.json", "summary.md", "rates.png")


def choose_settings(valid: Sequence[str], given: Sequence[str] | None) -> tuple[str, ...]:
    """``--settings`` of a preset: ``given`` (a subset of ``valid``, in ``valid``'s order), or every
    setting when none is given; a one-line error naming the valid ones otherwise."""
    if not given:
        return tuple(valid)
    unknown = [s for s in given if s not in valid]
    if unknown:
        raise ValueError(f"--settings: {', '.join(unknown)} not in this preset; choose among {', '.join(valid)}")
    return tuple(s for s in valid if s in given)


@dataclass(frozen=True)
class StudyArgs:
    """The run options every preset takes (``attnmoe rates``), with their defaults.

    Args:
        out: output directory (created; resumable).
        full: the committed study's size instead of the quick one.
        replicates: replicate seeds per (setting, n); None = the preset's.
        n_grid: sample sizes; None = the preset's.
        seed: seed of the first replicate.
        workers: parallel workers; None = one per core, at most one per job
            (:func:`~attnmoe.estimation.study.plan.default_workers`).
        threads: torch threads per worker; None = :func:`~attnmoe.estimation.study.plan.default_threads`.
        progress: show a progress bar over fits.
        backend: ``"process"`` or ``"ray"`` (:func:`~attnmoe.estimation.study.backends.map_jobs`).
        summary_only: fit nothing; summarise the records on file (every n and seed there unless
            ``n_grid`` / ``replicates`` are given).
        device: ``"cpu"`` or ``"cuda"`` (a preset that cannot run on a GPU refuses it).
        perturb: every start moved by this relative amount, at rounding level
            (:func:`~attnmoe.estimation.families.common.perturb_starts`; 0: off); recorded in
            ``study.json`` when not 0, so a perturbed study is its own study.
        options: the preset's own options, by name (e.g. ``settings``, ``max_iter``); only a
            preset that declares an option receives it (:class:`~attnmoe.estimation.study.registry.StudyPreset`).
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
    perturb: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """One-line errors for run options no preset can take (before any seed list is built)."""
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.summary_only and not Path(self.out).is_dir():
            raise ValueError(f"--summary-only: {self.out} is not a study folder: nothing to summarise")
        if self.replicates is not None:
            check_positive_int(self.replicates, "--replicates", maximum=MAX_REPLICATES)
        for value, option in ((self.workers, "--workers"), (self.threads, "--threads")):
            if value is not None:
                check_positive_int(value, option)  # 0 or less: refused, not read as the default
        if self.n_grid and all(isinstance(n, int) for n in self.n_grid) and max(self.n_grid) > MAX_N:
            raise ValueError(f"--n-grid: every n must be at most {MAX_N}, got {max(self.n_grid)}")
        check_perturb(self.perturb)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            # replicate seeds feed numpy's SeedSequence, which takes non-negative integers only
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed!r}")

    def scope(self, records: Sequence[Record], grid: Sequence[int],
              seeds: Sequence[int]) -> tuple[list[int], list[int]]:
        """The sizes and seeds a study covers: ``grid`` and ``seeds``, or with ``summary_only``
        every n / seed on file unless ``n_grid`` / ``replicates`` were given."""
        if not self.summary_only:
            return [int(n) for n in grid], [int(s) for s in seeds]
        on_file_n = sorted({int(r["n"]) for r in records})
        on_file_seeds = sorted({int(r["seed"]) for r in records})
        return ([int(n) for n in grid] if self.n_grid else on_file_n,
                [int(s) for s in seeds] if self.replicates is not None else on_file_seeds)


@dataclass(frozen=True)
class StudyPlan:
    """What a preset hands to :func:`run_plan`: its identity, grid and the functions only it knows.

    Args:
        name: progress label and the preset's name in messages.
        config: what ``study.json`` holds (fit options, code version, truth); its hash is stamped
            on every record (:func:`~attnmoe.estimation.study.records.identity_of`).
        settings: setting names of the study.
        grid: sample sizes; seeds: replicate seeds (``summary_only`` may widen both to what is
            on file, :meth:`StudyArgs.scope`).
        fit: module-level ``fit(*job) -> records`` (pickled to workers), one record per seed of
            the job, each depending on its ``(setting, n, seed)`` and the options only.
        split: ``(setting, n, seeds still to fit) -> job tuples`` (how a cell is cut in blocks).
        summarize: ``records -> StudySummary`` (summary.json content, summary.md, plotted losses).
        check_jobs: optional ``(jobs, workers) -> None`` run before anything is written (raises
            ``ValueError``, e.g. when the jobs cannot fit in memory).
    """

    name: str
    config: dict[str, Any]
    settings: Sequence[str]
    grid: Sequence[int]
    seeds: Sequence[int]
    fit: Callable[..., list[Record]]
    split: Callable[[str, int, list[int]], list[tuple]]
    summarize: Callable[[list[Record]], StudySummary]
    check_jobs: Callable[[list[tuple], int], None] | None = None


@dataclass
class StudyResult:
    """What :func:`run_plan` did: the study's records, new fits, skipped lines, its summary."""

    out: Path
    records: list[Record]
    fitted: int
    reused: int
    bad_lines: list[BadLine]
    summary: dict[str, Any]
    markdown: str
    seconds: float
    workers: int = 1
    threads: int = 1


def check_config(out: Path, previous: dict[str, Any] | None, want: dict[str, Any], name: str) -> None:
    """Refuse to resume a study whose ``study.json`` (``previous``) differs from this run's
    ``want`` in any key ``want`` has, naming what differs in one line."""
    if previous is None:
        return
    differ = [k for k in want if previous.get(k) != want[k]]
    if not differ:
        return
    if "fit" in differ and isinstance(previous.get("fit"), dict) and isinstance(want["fit"], dict):
        there, here = previous["fit"], want["fit"]
        fields = "; ".join(f"{k}: {there.get(k)!r} there, {here.get(k)!r} here"
                           for k in sorted(set(there) | set(here)) if there.get(k) != here.get(k))
        raise ValueError(f"{out} holds a study fitted with other options ({fields}); resume with the "
                         "same options or use another --out")
    if "version" in differ:
        raise ValueError(
            f"{out} holds a study written by fitting-code version {previous.get('version', 1)}, this "
            f"is version {want['version']}; resume with the version that wrote it or use another --out")
    raise ValueError(f"{out} holds another study ({', '.join(differ)} differ from this run's); resume with "
                     f"the same preset ({name}) and options or use another --out")


def run_plan(args: StudyArgs, plan: StudyPlan) -> StudyResult:
    """Run (or resume) ``plan`` into ``args.out``, or with ``args.summary_only`` re-summarise it
    (the module docstring says in what order).

    Raises:
        ValueError: any invalid input or mismatched resume, before anything is written.
    """
    t0 = time.perf_counter()
    args.check()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write to output directory {out}: it exists and is not a directory")
    records_path = out / RECORDS_FILE
    check_records_file(records_path)
    if args.summary_only:
        return _summarize_only(args, plan, t0)
    want = jsonable(plan.config)
    previous = read_config(out) if out.is_dir() else None
    check_config(out, previous, want, plan.name)
    records, bad = read_records(records_path) if out.is_dir() else ([], [])
    identity = identity_of(want)
    check_identity(records, identity, records_path, config_on_file=previous is not None)
    grid, seeds = args.scope(records, plan.grid, plan.seeds)
    wanted = {(s, n, sd) for s in plan.settings for n in grid for sd in seeds}
    done = {record_key(r) for r in records} & wanted
    jobs: list[tuple] = []
    total = 0
    for n in sorted(grid, reverse=True):  # largest n first: the longest jobs start first
        for name in plan.settings:
            todo = [sd for sd in seeds if (name, n, sd) not in done]
            if todo:
                jobs.extend(plan.split(name, n, todo))
                total += len(todo)
    threads = default_threads() if args.threads is None else args.threads
    workers = max(1, min(args.workers or default_workers(len(jobs), threads), len(jobs) or 1))
    if jobs and plan.check_jobs is not None:
        plan.check_jobs(jobs, workers)
    out = check_writable(out)
    if previous is None:
        atomic_write(out / STUDY_FILE, json.dumps(want, indent=2, sort_keys=True) + "\n")

    writer = RecordWriter(records_path)
    new: list[Record] = []
    if jobs:
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="fit", disable=not args.progress, desc=plan.name) as bar:
            for block in map_jobs(plan.fit, jobs, backend=args.backend, workers=workers, threads=threads):
                block = stamp(block, identity)
                writer.append(block)
                new.extend(block)
                bar.update(len(block))
    study_records = [r for r in records + new if record_key(r) in wanted]
    summary = plan.summarize(study_records)
    write_outputs(out, summary, study_records)
    return StudyResult(out=out, records=study_records, fitted=len(new), reused=len(done), bad_lines=bad,
                       summary=summary.summary, markdown=summary.markdown, seconds=time.perf_counter() - t0,
                       workers=workers, threads=threads)


def _summarize_only(args: StudyArgs, plan: StudyPlan, t0: float) -> StudyResult:
    """``--summary-only``: summarise the records on file of the plan's settings (module docstring)."""
    out = Path(args.out)
    records_path = out / RECORDS_FILE
    if not records_path.exists() and not records_path.with_name(RECORDS_FILE + ".gz").exists():
        raise ValueError(f"{records_path} does not exist: nothing to summarise")
    out = check_writable(out)
    existing, bad = read_records(records_path)
    grid, seeds = args.scope(existing, plan.grid, plan.seeds)
    names, sizes, chosen_seeds = set(plan.settings), set(grid), set(seeds)
    chosen = [r for r in existing
              if r["setting"] in names and int(r["n"]) in sizes and int(r["seed"]) in chosen_seeds]
    if not chosen:
        raise ValueError(f"{records_path} holds no records of the chosen settings / sizes / seeds")
    try:  # a summary fits nothing, but says so when it mixes options
        config = read_config(out)
    except ValueError:  # an unreadable study.json does not stop a summary
        config = None
    other = 0 if config is None else sum(r.get("options_hash") not in (None, identity_of(config)) for r in chosen)
    if other:
        warnings.warn(f"{other} of the {len(chosen)} records summarised were fitted under other options than "
                      f"{out / STUDY_FILE} records (their options_hash differs)", RuntimeWarning, stacklevel=2)
    summary = plan.summarize(chosen)
    write_outputs(out, summary, chosen)
    return StudyResult(out=out, records=chosen, fitted=0, reused=len(chosen), bad_lines=bad,
                       summary=summary.summary, markdown=summary.markdown, seconds=time.perf_counter() - t0)
