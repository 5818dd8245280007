"""Convergence-rate study: settings x sample sizes x replicate seeds -> records -> slopes.

The study behind ``attnmoe rates`` (issue 2, arXiv 2410.11222). It measures how fast the
least-squares estimator of a softmax-gated mixture of experts recovers the truth as the sample
size n grows, by fitting many independent replicates on a grid of n and regressing log(loss)
on log(n).

Pieces, from the bottom up:

* **Unit of work.** :func:`fit_block` ``(setting, n, seeds, options) -> records`` is a pure
  function: it calls :func:`attnmoe.estimation.experiment.fit_and_score`, which fits all the
  seeds as ONE batched program and returns one JSON-serialisable record per seed. A record
  depends only on ``(setting, n, seed)`` and the fit options (batched fits equal one-at-a-time
  fits; the estimation tests check that), so how seeds are grouped into blocks never changes a
  number. :func:`fit_one` is the single-seed case.
* **Jobs.** :func:`plan_jobs` lists the ``(setting, n, seed)`` triples still missing from
  ``records.jsonl`` and groups them into blocks of seeds with the same ``(setting, n)``.
* **Backends.** :func:`run_study` runs the blocks in-process (``workers=1``), on a process pool
  (``backend="process"``, spawn context, ``threads`` torch threads per worker) or on a Ray
  cluster (``backend="ray"``; joins a running ``ray.init`` or starts a local one). Records are
  appended and flushed block by block, so an interrupt loses at most the blocks in flight.
* **Resume.** :func:`read_records` reads ``records.jsonl`` back; a line that is not a complete
  JSON record is reported (warning + returned list) and skipped, the rest are kept.
* **Summary.** :func:`summarize` fits, per setting and loss, the OLS slope of the per-n mean of
  log(loss) against log(n), with a 95% percentile-bootstrap CI that resamples replicates within
  each n. With the same number of replicates at every n (the study's design) this slope is
  identical to OLS on all (log n, log loss) points. :func:`plot_rates` draws ``rates.png``
  and :func:`summary_markdown` writes ``summary.md``.

Files written in ``out`` (the output contract): ``study.json`` (the fit options; a resumed
study must use the same ones), ``records.jsonl``, ``summary.json``, ``rates.png``,
``summary.md``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from attnmoe.estimation.options import FitOptions
from attnmoe.utils import check_writable

Backend = Literal["process", "ray"]
BACKENDS: tuple[str, ...] = ("process", "ray")

RECORDS_FILE = "records.jsonl"
STUDY_FILE = "study.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
FIGURE_FILE = "rates.png"

#: Keys every record must carry to be usable (others, e.g. ``train_loss``, are kept as-is).
REQUIRED_KEYS: tuple[str, ...] = ("setting", "n", "seed", "losses", "converged", "iterations")


# --------------------------------------------------------------------------------------------
# Options and presets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named study size. ``settings=None`` means every core setting."""

    n_grid: tuple[int, ...]
    replicates: int
    fit: FitOptions = field(default_factory=FitOptions)
    settings: tuple[str, ...] | None = None


def log_grid(n_min: int, n_max: int, num: int) -> tuple[int, ...]:
    """``num`` log-spaced integer sample sizes from ``n_min`` to ``n_max`` inclusive."""
    if not (1 <= n_min < n_max) or num < 2:
        raise ValueError(f"need 1 <= n_min < n_max and num >= 2, got {n_min}, {n_max}, {num}")
    return tuple(round(v) for v in np.logspace(math.log10(n_min), math.log10(n_max), num))


PRESETS: dict[str, Preset] = {
    # All 8 core settings in under 5 minutes on 2 shared CPU cores (timed: docs/rates.md).
    "quick": Preset(
        n_grid=(1000, 2000, 4000, 8000),
        replicates=4,
        fit=FitOptions(max_iter=150, n_test=4000),
    ),
    # The scale of the simulations in this literature: n up to 1e5, 40 replicates.
    "paper": Preset(
        n_grid=log_grid(1000, 100_000, 9),
        replicates=40,
        fit=FitOptions(max_iter=1000, n_test=20_000, bound=10.0),
    ),
}


# --------------------------------------------------------------------------------------------
# Settings (thin layer over attnmoe.estimation.truth)
# --------------------------------------------------------------------------------------------


def core_setting_names() -> list[str]:
    """Names of the core settings (polynomial/monomial x linear/sigmoid x exact/over)."""
    from attnmoe.estimation.truth import CORE_SETTINGS

    return [s.name for s in _as_setting_list(CORE_SETTINGS)]


def _as_setting_list(settings: Any) -> list[Any]:
    if isinstance(settings, Mapping):
        return list(settings.values())
    return list(settings)


def resolve_settings(
    names: Sequence[str] | None = None,
    *,
    gates: Sequence[str] | None = None,
    experts: Sequence[str] | None = None,
    k_true: Sequence[int] | None = None,
    k_fit: Sequence[int] | None = None,
) -> list[Any]:
    """Turn command-line choices into ``Setting`` objects (validated before any work).

    Either ``names`` (core-setting names) or the product ``gates x experts x k_true x k_fit``
    (missing axes default to the core values: gates polynomial,monomial; experts
    linear,sigmoid; k_true = the core k*; k_fit = k* and k*+1). Neither: all core settings.

    Raises:
        ValueError: unknown name, gate or expert; k < 1; k_fit < k_true; both styles mixed.
    """
    from attnmoe.estimation import truth

    product_given = any(v is not None for v in (gates, experts, k_true, k_fit))
    if names is not None and product_given:
        raise ValueError("use either --settings NAMES or --gates/--experts/--k-true/--k-fit, not both")
    core = _as_setting_list(truth.CORE_SETTINGS)
    if not product_given:
        if names is None:
            return core
        out = []
        for name in names:
            try:
                out.append(truth.get_setting(name))
            except (KeyError, ValueError) as err:
                known = ", ".join(s.name for s in core)
                raise ValueError(f"unknown setting {name!r}; known settings: {known}") from err
        return _dedupe(out)
    core_k = sorted({s.k_true for s in core})
    gates = list(gates) if gates is not None else ["polynomial", "monomial"]
    experts = list(experts) if experts is not None else ["linear", "sigmoid"]
    k_true = list(k_true) if k_true is not None else core_k
    out = []
    for g in gates:
        for e in experts:
            for kt in k_true:
                fits = list(k_fit) if k_fit is not None else [kt, kt + 1]
                for kf in fits:
                    if kt < 1 or kf < 1:
                        raise ValueError(f"number of experts must be >= 1, got k*={kt}, k={kf}")
                    if kf < kt:
                        raise ValueError(
                            f"k={kf} < k*={kt}: the fitted model must have at least as many "
                            "experts as the truth (exact- or over-specified)"
                        )
                    out.append(truth.make_setting(g, e, kt, kf))
    return _dedupe(out)


def _dedupe(settings: list[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for s in settings:
        seen.setdefault(s.name, s)
    return list(seen.values())


def setting_num_params(setting: Any) -> int:
    """Number of free parameters of the fitted model of ``setting`` (from ``truth``)."""
    for attr in ("n_free_params", "num_params", "n_params"):
        if hasattr(setting, attr):
            value = getattr(setting, attr)
            return int(value() if callable(value) else value)
    from attnmoe.estimation import truth

    if hasattr(truth, "num_params"):
        return int(truth.num_params(setting))
    raise AttributeError("attnmoe.estimation.truth exposes no parameter count")


def validate_study(settings: Sequence[Any], n_grid: Sequence[int], replicates: int) -> None:
    """Check a study before anything is written.

    Raises:
        ValueError: empty settings or grid, non-positive replicates, duplicate sizes, k < 1,
            k < k*, or an n smaller than the number of parameters of a fitted model.
    """
    if not settings:
        raise ValueError("no settings to run")
    if not n_grid:
        raise ValueError("the sample-size grid is empty")
    if len(set(n_grid)) != len(n_grid):
        raise ValueError(f"the sample-size grid has duplicates: {list(n_grid)}")
    if not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates!r}")
    for n in n_grid:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"sample sizes must be positive integers, got {n!r}")
    for s in settings:
        if s.k_true < 1 or s.k_fit < 1:
            raise ValueError(f"{s.name}: number of experts must be >= 1 (k*={s.k_true}, k={s.k_fit})")
        if s.k_fit < s.k_true:
            raise ValueError(f"{s.name}: k={s.k_fit} < k*={s.k_true}")
        p = setting_num_params(s)
        if min(n_grid) < p:
            raise ValueError(
                f"n={min(n_grid)} is smaller than the {p} parameters of the fitted model of "
                f"{s.name}; use a grid with every n >= {p}"
            )


# --------------------------------------------------------------------------------------------
# The pure unit of work
# --------------------------------------------------------------------------------------------


def fit_block(
    setting: Any, n: int, seeds: Sequence[int], options: FitOptions, threads: int | None = None
) -> list[dict[str, Any]]:
    """Fit ``seeds`` replicates of ``setting`` at sample size ``n`` as one batched program.

    Pure: the records depend only on ``(setting, n, seed, options)``. ``threads`` (if given)
    sets torch's intra-op thread count first (the caller's choice of parallelism).
    """
    import torch

    from attnmoe.estimation.experiment import fit_and_score

    if threads is not None:
        torch.set_num_threads(threads)
    setting = setting_from_spec(setting)
    records = fit_and_score(setting, int(n), [int(s) for s in seeds], options)
    return [_jsonable(r) for r in records]


def setting_spec(setting: Any) -> Any:
    """A picklable description of ``setting`` for worker processes (``Setting.to_dict()``).

    ``Setting`` holds its true parameters in a read-only mapping, which pickle refuses; workers
    rebuild the identical setting with :func:`setting_from_spec`.
    """
    return setting.to_dict() if hasattr(setting, "to_dict") else setting


def setting_from_spec(spec: Any) -> Any:
    """Inverse of :func:`setting_spec` (objects that are not dicts pass through)."""
    if not isinstance(spec, dict):
        return spec
    from attnmoe.estimation.truth import make_setting

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
    )


def fit_one(setting: Any, n: int, seed: int, options: FitOptions) -> dict[str, Any]:
    """The unit of work ``(setting, n, seed) -> record`` (a block of one seed)."""
    return fit_block(setting, n, [seed], options)[0]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None  # strict JSON has no NaN/inf
    if hasattr(obj, "item"):  # 0-d torch tensor
        return _jsonable(obj.item())
    return obj


# --------------------------------------------------------------------------------------------
# Records file: read (with corrupted-line handling) and append
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadLine:
    """A line of ``records.jsonl`` that was skipped, and why."""

    lineno: int
    reason: str
    text: str


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Read ``records.jsonl``. Corrupted lines are warned about, returned, and skipped.

    A line is corrupted if it is not a JSON object or lacks one of :data:`REQUIRED_KEYS`.
    Duplicate ``(setting, n, seed)`` lines keep the first occurrence.
    """
    path = Path(path)
    if not path.exists():
        return [], []
    records: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    seen: set[tuple[str, int, int]] = set()
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as err:
                bad.append(BadLine(lineno, f"not valid JSON ({err.msg})", text[:120]))
                continue
            if not isinstance(rec, dict):
                bad.append(BadLine(lineno, "not a JSON object", text[:120]))
                continue
            missing = [k for k in REQUIRED_KEYS if k not in rec]
            if missing or not isinstance(rec.get("losses"), dict):
                bad.append(BadLine(lineno, f"missing keys {missing or ['losses']}", text[:120]))
                continue
            key = record_key(rec)
            if key in seen:
                continue
            seen.add(key)
            records.append(rec)
    for b in bad:
        warnings.warn(
            f"{path}: line {b.lineno} skipped, {b.reason}: {b.text!r}", RuntimeWarning, stacklevel=2
        )
    return records, bad


def record_key(rec: dict[str, Any]) -> tuple[str, int, int]:
    return (str(rec["setting"]), int(rec["n"]), int(rec["seed"]))


class RecordWriter:
    """Appends records to ``records.jsonl``, one flush (and fsync) per block."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as fh:  # an interrupted write may have left a partial line
                fh.seek(-1, os.SEEK_END)
                needs_newline = fh.read(1) != b"\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(("\n" if needs_newline else "") + lines)
            fh.flush()
            os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------
# Jobs and backends
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Seeds of one ``(setting, n)`` fitted together as one batched call."""

    setting: Any
    n: int
    seeds: tuple[int, ...]


def replicate_seeds(replicates: int, base_seed: int = 0) -> list[int]:
    """Seeds of the replicates: ``base_seed, base_seed+1, ...`` (the same at every n)."""
    return list(range(base_seed, base_seed + replicates))


def plan_jobs(
    settings: Sequence[Any],
    n_grid: Sequence[int],
    seeds: Sequence[int],
    done: set[tuple[str, int, int]],
    block_size: int,
) -> list[Job]:
    """Blocks of the ``(setting, n, seed)`` not in ``done``; largest n first (load balance)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    jobs = []
    for n in sorted(n_grid, reverse=True):
        for s in settings:
            todo = [sd for sd in seeds if (s.name, int(n), int(sd)) not in done]
            for i in range(0, len(todo), block_size):
                jobs.append(Job(s, int(n), tuple(todo[i : i + block_size])))
    return jobs


def _run_inline(
    jobs: list[Job], options: FitOptions, threads: int | None, fit: Callable[..., Any]
) -> Iterator[list[dict[str, Any]]]:
    for job in jobs:
        yield fit(job.setting, job.n, job.seeds, options, threads)


def _run_pool(
    jobs: list[Job], options: FitOptions, workers: int, threads: int, fit: Callable[..., Any]
) -> Iterator[list[dict[str, Any]]]:
    import multiprocessing as mp

    # spawn, not fork: forking a process whose torch thread pool is live can deadlock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {
            pool.submit(fit, setting_spec(j.setting), j.n, j.seeds, options, threads) for j in jobs
        }
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()


def _run_ray(
    jobs: list[Job], options: FitOptions, workers: int, threads: int, fit: Callable[..., Any]
) -> Iterator[list[dict[str, Any]]]:
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
        remote_fit = ray.remote(num_cpus=cpus)(fit)
        pending = [
            remote_fit.remote(setting_spec(j.setting), j.n, j.seeds, options, threads) for j in jobs
        ]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])
    finally:
        if started_here:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


@dataclass
class StudyResult:
    """What :func:`run_study` did: records of the study, new fits, skipped lines, summary."""

    out: Path
    records: list[dict[str, Any]]
    fitted: int
    reused: int
    bad_lines: list[BadLine]
    summary: dict[str, Any]
    seconds: float


def _study_config(options: FitOptions) -> dict[str, Any]:
    return {"fit": options.to_dict(), "version": 1}


def _check_or_write_config(out: Path, options: FitOptions) -> None:
    path = out / STUDY_FILE
    config = _study_config(options)
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous is not None and previous.get("fit") != config["fit"]:
            raise ValueError(
                f"{out} holds a study fitted with options {previous.get('fit')}, this run asks for "
                f"{config['fit']}; resume with the same options or use another --out"
            )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def run_study(
    settings: Sequence[Any],
    n_grid: Sequence[int],
    replicates: int,
    out: Path | str,
    *,
    options: FitOptions | None = None,
    backend: str = "process",
    workers: int = 1,
    threads: int | None = None,
    block_size: int | None = None,
    base_seed: int = 0,
    progress: bool = True,
    fit: Callable[..., list[dict[str, Any]]] = fit_block,
    n_boot: int = 2000,
) -> StudyResult:
    """Run (or resume) a convergence-rate study and write every output file in ``out``.

    Args:
        settings: ``Setting`` objects (see :func:`resolve_settings`).
        n_grid: sample sizes.
        replicates: replicate seeds per ``(setting, n)``: ``base_seed .. base_seed+R-1``.
        out: output directory (created; must be writable).
        options: fit options (must match those of a study being resumed).
        backend: ``"process"`` (``workers=1`` runs in this process) or ``"ray"``.
        workers: parallel workers (processes or Ray tasks).
        threads: torch threads per worker; default ``max(1, cpu_count // workers)``.
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
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    n_grid = [int(n) for n in n_grid]
    validate_study(settings, n_grid, replicates)
    threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // workers)
    out = check_writable(Path(out))
    _check_or_write_config(out, options)

    records_path = out / RECORDS_FILE
    existing, bad = read_records(records_path)
    seeds = replicate_seeds(replicates, base_seed)
    wanted = {(s.name, n, sd) for s in settings for n in n_grid for sd in seeds}
    done = {record_key(r) for r in existing} & wanted
    jobs = plan_jobs(settings, n_grid, seeds, done, block_size or replicates)
    total = sum(len(j.seeds) for j in jobs)

    writer = RecordWriter(records_path)
    new: list[dict[str, Any]] = []
    if jobs:
        if backend == "ray":
            stream = _run_ray(jobs, options, workers, threads, fit)
        elif workers == 1:
            stream = _run_inline(jobs, options, threads, fit)
        else:
            stream = _run_pool(jobs, options, workers, threads, fit)
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="fit", disable=not progress, desc="rates") as bar:
            for block in stream:
                writer.append(block)
                new.extend(block)
                bar.update(len(block))
    study_records = [r for r in existing + new if record_key(r) in wanted]
    summary = summarize(study_records, n_boot=n_boot, settings=settings)
    write_outputs(out, summary, study_records)
    return StudyResult(
        out=out,
        records=study_records,
        fitted=len(new),
        reused=len(done),
        bad_lines=bad,
        summary=summary,
        seconds=time.perf_counter() - t0,
    )


def resummarize(
    out: Path | str,
    settings: Sequence[Any],
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
    if not records_path.exists():
        raise ValueError(f"{records_path} does not exist: nothing to summarise")
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
    summary = summarize(chosen, n_boot=n_boot, settings=settings)
    write_outputs(out, summary, chosen)
    return StudyResult(
        out=out, records=chosen, fitted=0, reused=len(chosen), bad_lines=bad, summary=summary,
        seconds=time.perf_counter() - t0,
    )


def write_outputs(out: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write ``summary.json``, ``summary.md`` and ``rates.png`` (atomically: tmp then rename)."""
    _atomic_write(out / SUMMARY_JSON, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _atomic_write(out / SUMMARY_MD, summary_markdown(summary))
    plot_rates(records, summary, out / FIGURE_FILE)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# Summary: slopes and bootstrap CIs
# --------------------------------------------------------------------------------------------


def ols_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slope of ``y`` on ``x`` along the last axis (``y``: (..., m), ``x``: (m,))."""
    xc = x - x.mean()
    return (y * xc).sum(axis=-1) / (xc * xc).sum()


def slope_with_ci(
    log_n: np.ndarray,
    log_loss: list[np.ndarray],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Slope of mean log-loss per n against log n, with a percentile-bootstrap CI.

    ``log_loss[i]`` holds the replicates' log losses at ``log_n[i]``. The bootstrap resamples
    replicates with replacement independently within each n, ``n_boot`` times.
    """
    if len(log_n) < 2:
        raise ValueError("a slope needs at least two sample sizes")
    rng = rng if rng is not None else np.random.default_rng(0)
    means = np.array([v.mean() for v in log_loss])
    slope = float(ols_slope(log_n, means))
    intercept = float(means.mean() - slope * log_n.mean())
    boot_means = np.stack(
        [v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1) for v in log_loss], axis=1
    )  # (n_boot, m)
    boot = ols_slope(log_n, boot_means)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return {"slope": slope, "intercept": intercept, "ci_low": float(lo), "ci_high": float(hi)}


def summarize(
    records: Sequence[dict[str, Any]],
    *,
    n_boot: int = 2000,
    settings: Sequence[Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Per setting and loss: slope, 95% bootstrap CI, n range, replicates (JSON-ready).

    Losses that are missing, zero, negative or non-finite in a record are left out of that
    loss's fit (counted in ``dropped``). Every fit enters the slope whether or not the optimiser
    reported convergence; ``converged_fraction`` says how many did.
    """
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_setting.setdefault(str(r["setting"]), []).append(r)
    meta = {s.name: s for s in settings} if settings is not None else {}
    out: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for name in sorted(by_setting):
        recs = by_setting[name]
        loss_names = sorted({k for r in recs for k in r["losses"]})
        losses: dict[str, Any] = {}
        for loss in loss_names:
            per_n: dict[int, list[float]] = {}
            dropped = 0
            for r in recs:
                v = r["losses"].get(loss)
                if v is None or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
                    dropped += 1
                    continue
                per_n.setdefault(int(r["n"]), []).append(math.log(v))
            ns = sorted(per_n)
            entry: dict[str, Any] = {
                "n_min": ns[0] if ns else None,
                "n_max": ns[-1] if ns else None,
                "sizes": len(ns),
                "replicates": min((len(per_n[n]) for n in ns), default=0),
                "points": sum(len(v) for v in per_n.values()),
                "dropped": dropped,
                "mean_log_loss": {str(n): float(np.mean(per_n[n])) for n in ns},
            }
            if len(ns) >= 2:
                entry.update(
                    slope_with_ci(
                        np.log(np.array(ns, dtype=float)),
                        [np.array(per_n[n]) for n in ns],
                        n_boot=n_boot,
                        rng=rng,
                    )
                )
            else:
                entry.update(slope=None, intercept=None, ci_low=None, ci_high=None)
            losses[loss] = entry
        conv = [bool(r["converged"]) for r in recs]
        info: dict[str, Any] = {
            "fits": len(recs),
            "converged_fraction": float(np.mean(conv)) if conv else None,
            "mean_iterations": float(np.mean([r["iterations"] for r in recs])),
            "losses": losses,
        }
        if name in meta:
            info["setting"] = _setting_dict(meta[name])
        out[name] = info
    return {
        "method": (
            "OLS slope of the per-n mean of log(loss) on log(n) (= OLS on all points for a "
            "balanced design); 95% percentile bootstrap CI resampling replicates within each n"
        ),
        "n_boot": n_boot,
        "settings": out,
    }


def _setting_dict(setting: Any) -> dict[str, Any]:
    if hasattr(setting, "to_dict"):
        d = setting.to_dict()
    else:
        keys = ("name", "gate", "expert", "k_true", "k_fit", "dim")
        d = {k: getattr(setting, k) for k in keys if hasattr(setting, k)}
    return {k: v for k, v in _jsonable(d).items() if isinstance(v, (str, int, float, bool))}


# --------------------------------------------------------------------------------------------
# Report: markdown table and figure
# --------------------------------------------------------------------------------------------


def _fmt_slope(entry: dict[str, Any]) -> str:
    if entry.get("slope") is None:
        return "n/a"
    return f"{entry['slope']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"


def summary_markdown(summary: dict[str, Any]) -> str:
    """A Markdown table: one row per setting, one column per loss (slope [95% CI])."""
    settings = summary["settings"]
    loss_names = sorted({k for s in settings.values() for k in s["losses"]})
    lines = [
        "# Convergence-rate study",
        "",
        f"Slope of log(loss) against log(n): {summary['method']}; {summary['n_boot']} resamples.",
        "",
        "| setting | n range | reps | converged | " + " | ".join(loss_names) + " |",
        "|---|---|---|---|" + "---|" * len(loss_names),
    ]
    for name, info in settings.items():
        first = next(iter(info["losses"].values()), {})
        cells = [_fmt_slope(info["losses"][k]) if k in info["losses"] else "" for k in loss_names]
        conv = info["converged_fraction"]
        lines.append(
            f"| {name} | {first.get('n_min')}–{first.get('n_max')} | {first.get('replicates')} | "
            f"{conv:.0%} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_rates(records: Sequence[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    """Log-log loss against n, one panel per loss, one colour per setting, fitted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = summary["settings"]
    loss_names = sorted({k for s in settings.values() for k in s["losses"]})
    ncol = min(3, max(1, len(loss_names)))
    nrow = max(1, math.ceil(len(loss_names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.2 * nrow), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax in axes.flat[len(loss_names) :]:
        ax.set_visible(False)
    for li, loss in enumerate(loss_names):
        ax = axes.flat[li]
        for si, (name, info) in enumerate(settings.items()):
            entry = info["losses"].get(loss)
            if not entry or not entry["mean_log_loss"]:
                continue
            c = colors(si % 10)
            vals = [
                (int(r["n"]), r["losses"].get(loss))
                for r in records
                if str(r["setting"]) == name
                and isinstance(r["losses"].get(loss), (int, float))
                and r["losses"][loss] > 0
            ]
            if vals:
                xs, ys = zip(*vals)
                ax.scatter(xs, ys, s=4, alpha=0.25, color=c, linewidths=0)
            ns = np.array([int(k) for k in entry["mean_log_loss"]], dtype=float)
            gm = np.exp(np.array(list(entry["mean_log_loss"].values())))
            ax.plot(ns, gm, "o", color=c, ms=4)
            label = name
            if entry["slope"] is not None:
                grid = np.geomspace(ns.min(), ns.max(), 50)
                ax.plot(grid, np.exp(entry["intercept"]) * grid ** entry["slope"], "-", color=c, lw=1.2)
                label = f"{name}: {entry['slope']:+.2f}"
            ax.plot([], [], "-o", color=c, ms=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n")
        ax.set_ylabel(loss)
        ax.set_title(f"{loss} (geometric mean per n, OLS slope)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
