"""Where the blocks of a study run: in this process, on a process pool, or on a Ray cluster.

The unit of work is :func:`fit_block` ``(setting, n, seeds, options) -> records``: it calls
:func:`attnmoe.estimation.experiment.fit_and_score`, which fits all the seeds as ONE batched
program and returns one JSON-serialisable record per seed. A record depends only on
``(setting, n, seed)`` and the options, so how seeds are grouped into blocks, and which worker
runs a block, never changes a number. Every backend yields blocks of records as they finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from attnmoe.estimation.options import FitOptions
from attnmoe.estimation.study.plan import Job
from attnmoe.estimation.study.records import Record, jsonable
from attnmoe.estimation.truth import Setting, make_setting

__all__ = ["BACKENDS", "call_with_threads", "fit_block", "fit_one", "map_jobs", "run_blocks", "setting_from_spec",
           "setting_spec"]

BACKENDS: tuple[str, ...] = ("process", "ray")

FitFn = Callable[..., list[Record]]


def fit_block(
    setting: Setting | dict[str, Any],
    n: int,
    seeds: Sequence[int],
    options: FitOptions,
    threads: int | None = None,
) -> list[Record]:
    """Fit ``seeds`` replicates of ``setting`` at sample size ``n`` as one batched program.

    Pure: the records depend only on ``(setting, n, seed, options)``. ``threads`` (if given)
    sets torch's intra-op thread count first (the caller's choice of parallelism); ``setting``
    may be the picklable :func:`setting_spec` of a setting.
    """
    import torch

    from attnmoe.estimation.experiment import fit_and_score

    if threads is not None:
        torch.set_num_threads(threads)
    records = fit_and_score(setting_from_spec(setting), int(n), [int(s) for s in seeds], options)
    return [jsonable(r) for r in records]


def fit_one(setting: Setting, n: int, seed: int, options: FitOptions) -> Record:
    """The unit of work ``(setting, n, seed) -> record`` (a block of one seed)."""
    return fit_block(setting, n, [seed], options)[0]


def setting_spec(setting: Setting) -> dict[str, Any]:
    """A picklable description of ``setting`` for worker processes (``Setting.to_dict()``).

    ``Setting`` holds its true parameters in a read-only mapping, which pickle refuses; workers
    rebuild the identical setting with :func:`setting_from_spec`.
    """
    return setting.to_dict()


def setting_from_spec(spec: Setting | dict[str, Any]) -> Setting:
    """Inverse of :func:`setting_spec` (a ``Setting`` passes through)."""
    if isinstance(spec, Setting):
        return spec
    return make_setting(
        spec["gate"],
        spec["expert"],
        spec["k_true"],
        spec["k_fit"],
        spec["dim"],
        params=spec["params"],
        input_distribution=spec["input_distribution"],
        input_scale=spec["input_scale"],
        noise_std=spec["noise_std"],
        name=spec["name"],
        normalization=spec.get("normalization", "softmax"),
    )


def call_with_threads(fn: Callable[..., Any], threads: int | None, job: tuple) -> Any:
    """``fn(*job)`` with torch's intra-op thread count set first (when given): the one unit of
    work every backend runs (module-level, so it pickles to worker processes)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return fn(*job)


def map_jobs(
    fn: Callable[..., Any], jobs: Sequence[tuple], *, backend: str, workers: int, threads: int
) -> Iterator[Any]:
    """``fn(*job)`` for every job, on ``backend`` (``"process"`` with ``workers == 1``: in this
    process), yielding each result as it finishes (in order of completion). The one job runner of
    every study (least squares, likelihood, hmoe); ``fn`` must be module-level (it is pickled)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ray":
        return _run_ray(fn, jobs, workers, threads)
    if workers == 1:
        return _run_inline(fn, jobs, threads)
    return _run_pool(fn, jobs, workers, threads)


def run_blocks(
    jobs: list[Job], options: FitOptions, *, backend: str, workers: int, threads: int, fit: FitFn
) -> Iterator[list[Record]]:
    """Run the least-squares ``jobs`` on ``backend`` and yield their records (:func:`map_jobs`)."""
    inline = backend == "process" and workers == 1  # no pickling: the settings themselves
    args = [(j.setting if inline else setting_spec(j.setting), j.n, j.seeds, options) for j in jobs]
    return map_jobs(fit, args, backend=backend, workers=workers, threads=threads)


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
