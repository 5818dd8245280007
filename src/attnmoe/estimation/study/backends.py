"""Where the blocks of a study run: in this process, on a process pool, or on a Ray cluster.

The unit of work is a preset's module-level ``fit(*job) -> records`` (e.g. the least-squares
:func:`~attnmoe.estimation.study.presets.least_squares.fit_block`, which fits all the seeds of a job as ONE batched
program). A record depends only on ``(setting, n, seed)`` and the options, so how seeds are
grouped into jobs, and which worker runs a job, never changes a number. Every backend yields
the jobs' results as they finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

__all__ = ["BACKENDS", "call_with_threads", "map_jobs"]

BACKENDS: tuple[str, ...] = ("process", "ray")


def call_with_threads(fn: Callable[..., Any], threads: int | None, job: tuple) -> Any:
    """``fn(*job)`` with torch's intra-op thread count set first (when given): the one unit of
    work every backend runs (module-level, so it pickles to worker processes). It also fixes
    glibc's malloc thresholds for the process, once (:func:`attnmoe._malloc.fix_malloc_thresholds`:
    the torch assembly's fit times no longer depend on the process's allocation history; the
    records are bitwise the same)."""
    import torch

    from attnmoe._malloc import fix_malloc_thresholds

    fix_malloc_thresholds()
    if threads is not None:
        torch.set_num_threads(threads)
    return fn(*job)


def map_jobs(
    fn: Callable[..., Any], jobs: Sequence[tuple], *, backend: str, workers: int, threads: int
) -> Iterator[Any]:
    """``fn(*job)`` for every job, on ``backend`` (``"process"`` with ``workers == 1``: in this
    process), yielding each result as it finishes (in order of completion). The one job runner of
    every study (:func:`~attnmoe.estimation.study.engine.run_plan`); ``fn`` must be module-level (it is pickled)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ray":
        return _run_ray(fn, jobs, workers, threads)
    if workers == 1:
        return _run_inline(fn, jobs, threads)
    return _run_pool(fn, jobs, workers, threads)


def _run_inline(fn: Callable[..., Any], jobs: Sequence[tuple], threads: int) -> Iterator[Any]:
    import torch

    before = torch.get_num_threads()
    try:
        for job in jobs:
            yield call_with_threads(fn, threads, job)
    finally:
        torch.set_num_threads(before)  # the caller's process keeps its own setting


def _run_pool(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, threads: int) -> Iterator[Any]:
    import multiprocessing as mp
    import signal

    # spawn, not fork: forking a process whose torch thread pool is live can deadlock. The
    # workers start with SIGINT ignored (an ignored signal stays ignored across exec, and Python
    # then installs no KeyboardInterrupt handler): a Ctrl-C reaches this process alone, which
    # stops them below, instead of every worker printing its own traceback.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pending = {pool.submit(call_with_threads, fn, threads, job) for job in jobs}
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):  # interrupted: stop the fits
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)  # joins its manager thread: no atexit noise
        raise
    pool.shutdown()


def _run_ray(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int, threads: int) -> Iterator[Any]:
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "--backend ray needs the optional extra: pip install -c constraints.txt 'attnmoe[ray]'"
        ) from err
    started_here = not ray.is_initialized()
    if started_here:  # a local cluster; connect to a real one with ray.init(address=...) first
        ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False)
    try:
        # never ask for more CPUs per task than the cluster has: such a task would wait forever
        cpus = max(1, min(threads, int(ray.cluster_resources().get("CPU", 1))))
        remote = ray.remote(num_cpus=cpus)(call_with_threads)
        pending = [remote.remote(fn, threads, job) for job in jobs]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(finished[0])
            except ray.exceptions.RayTaskError as err:  # the task's own error, as the process backend raises it
                if isinstance(err.cause, Exception):
                    raise err.cause from None
                raise
            yield result
    finally:
        if started_here:
            ray.shutdown()
