"""``attnmoe rates``: the convergence-rate study of gating MoE estimators (issue 2).

Runs (or resumes) a study preset (:func:`attnmoe.estimation.study.run_preset`: every family's
presets through the one loop) over settings x sample sizes x replicate seeds and writes
``study.json``, ``records.jsonl``, ``summary.json``, ``rates.png`` and ``summary.md`` in
``--out``. Presets fix the grid, replicates and fit options; every option given on the command
line overrides its preset value, and an option a preset does not take is refused. See
``docs/rates.md``.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from attnmoe.estimation import study
from attnmoe.moe import GATES, NORMALIZATIONS
from attnmoe.moe.experts import EXPERTS


def _split(value: str | None, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"{what} is empty")
    return items


def _ints(value: str | None, what: str) -> list[int] | None:
    items = _split(value, what)
    if items is None:
        return None
    out = []
    for v in items:
        try:
            number = float(v) if "e" in v.lower() else int(v)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or number != int(number):
            raise typer.BadParameter(f"{what} must be comma-separated integers, got {value!r}")
        out.append(int(number))
    return out


def _floats(value: str, what: str) -> list[float]:
    items = _split(value, what) or []
    try:
        return [float(v) for v in items]
    except ValueError as err:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {value!r}") from err


def rates(
    out: Annotated[Path, typer.Option("--out", help="Output directory (created; resumable).")],
    preset: Annotated[
        str, typer.Option(
            "--preset",
            help=f"A study preset: {', '.join(study.preset_table())}; an unknown name lists them all.",
        )
    ] = "quick",
    settings: Annotated[
        str | None, typer.Option("--settings", help="Comma-separated core setting names.")
    ] = None,
    gates: Annotated[
        str | None, typer.Option(
            "--gates",
            help=f"Comma-separated: {','.join(GATES)}.",
        )
    ] = None,
    experts: Annotated[
        str | None,
        typer.Option("--experts", help=f"Comma-separated: {','.join(EXPERTS)}."),
    ] = None,
    normalizer: Annotated[
        str | None,
        typer.Option("--normalizer", help=f"Comma-separated gating normalisers: {','.join(NORMALIZATIONS)} "
                     "(each setting once per normaliser; sigmoid settings are named -sig)."),
    ] = None,
    k_true: Annotated[
        str | None, typer.Option("--k-true", help="Comma-separated true numbers of experts k*.")
    ] = None,
    k_fit: Annotated[
        str | None,
        typer.Option("--k-fit", help="Comma-separated fitted k (default: k* and k*+1)."),
    ] = None,
    n_grid: Annotated[
        str | None, typer.Option("--n-grid", help="Comma-separated sample sizes, e.g. 1000,3000.")
    ] = None,
    replicates: Annotated[
        int | None, typer.Option("--replicates", help="Replicate seeds per (setting, n).")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="process or ray.")] = "process",
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Parallel workers (default: one per core, at most one per job)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Torch threads per worker (default: OMP_NUM_THREADS, else 1)."),
    ] = None,
    max_iter: Annotated[
        int | None, typer.Option("--max-iter", help="Optimiser iteration cap per fit.")
    ] = None,
    bound: Annotated[
        float | None,
        typer.Option("--bound", help="Fit every parameter inside [-B, B] (paper preset: 10)."),
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="trust-region (default), lbfgs or adam.")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option("--init", help="Start: near-truth[:SCALE], displaced:DELTA, displaced-gate:DELTA, "
                     "group, random; several joined by '+'."),
    ] = None,
    starts: Annotated[
        int | None, typer.Option("--starts", help="Starts per replicate (and kind of start).")
    ] = None,
    near_best: Annotated[
        float | None,
        typer.Option("--near-best", help="c of the near-best window c*sigma^2/n (default 1)."),
    ] = None,
    dtol: Annotated[
        float | None,
        typer.Option("--dtol", help="Converged when the Newton decrement <= dtol*L/n (trust-region)."),
    ] = None,
    noise: Annotated[
        str | None,
        typer.Option("--noise", "--noise-grid",
                     help="Noise level(s) sigma, comma-separated: a sweep; settings renamed <name>-sd<sigma>."),
    ] = None,
    block_size: Annotated[
        int | None, typer.Option("--block-size", help="Seeds fitted per batched call.")
    ] = None,
    assembly: Annotated[
        str | None,
        typer.Option("--assembly", help="torch (default) or numba: the generated kernel for the trust region's "
                     "Hessian, the iteration compiled per replicate around it (least-squares presets; "
                     "softmax, linear/sigmoid experts, CPU; needs numba)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first replicate.")] = 0,
    device: Annotated[
        str, typer.Option("--device", help="cpu, or cuda (float64 on a GPU; least-squares presets).")
    ] = "cpu",
    perturb: Annotated[
        float,
        typer.Option("--perturb", help="Move every start by this relative amount (e.g. 1e-9, at most 1e-6): the "
                     "solver-path robustness refit of the claims ledger, into its own folder (<study>-perturbed)."),
    ] = 0.0,
    full: Annotated[
        bool, typer.Option("--full", help="The preset's committed-study size instead of its quick one.")
    ] = False,
    summary_only: Annotated[
        bool,
        typer.Option(
            "--summary-only",
            help="Fit nothing: rewrite the summary from records.jsonl (every n and seed on "
            "file unless --n-grid / --replicates are given).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Convergence-rate study: fit replicates on a grid of n, report log-log slopes."""
    if not str(out).strip() or str(out) == ".":  # typer reads --out '' as '.'
        typer.echo("error: --out must name a study folder (empty or '.' would write into the current "
                   "directory)", err=True)
        raise typer.Exit(code=2)
    if out.is_dir() and _not_a_study(out):
        typer.echo(f"error: --out {out} is a non-empty folder that holds no study (no {study.STUDY_FILE} or "
                   f"{study.RECORDS_FILE}); name a new or empty folder", err=True)
        raise typer.Exit(code=2)
    existed = out.exists()
    try:
        with _interrupts_as_exit(out), _locked(out, existed, create=not summary_only):
            _rates(out, preset, settings, gates, experts, normalizer, k_true, k_fit, n_grid, replicates, backend,
                   workers, threads, max_iter, bound, method, init, starts, near_best, dtol, noise, block_size,
                   assembly, seed, device, perturb, full, summary_only, progress)
    except OSError as err:  # a full disk, a folder that vanished: what is on file stays resumable
        typer.echo(f"error: cannot write to {out}: {err.strerror or err} (records written so far are kept; "
                   "the same command resumes)", err=True)
        raise typer.Exit(code=1) from None


def _not_a_study(out: Path) -> bool:
    """``out`` holds files but none of a study's own (its options or records): not ours to write in."""
    from attnmoe.train.lock import LOCK_FILE

    names = {p.name for p in out.iterdir()} - {LOCK_FILE}
    return bool(names) and not names & {study.STUDY_FILE, study.RECORDS_FILE, study.RECORDS_FILE + ".gz"}


@contextmanager
def _interrupts_as_exit(out: Path) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM end the study in one line, exit 130 / 143; the records
    appended so far are whole lines, and the same command resumes from them."""
    def on_term(signum: int, frame: object) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(f"interrupted: the records written so far are in {out}; the same command resumes", err=True)
        raise typer.Exit(code=130) from None
    except _Terminated:
        typer.echo(f"terminated: the records written so far are in {out}; the same command resumes", err=True)
        raise typer.Exit(code=143) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM, raised where the study happens to be (so every finally block runs)."""


@contextmanager
def _locked(out: Path, existed: bool, create: bool) -> Iterator[None]:
    """One ``attnmoe rates`` per study folder (the lock of ``attnmoe train``); a folder this run
    created and left holding nothing but the lock (a refused input) is removed again, with the
    missing parents it created. Where the folder cannot or should not be made here (an existing
    ancestor is not a folder, or a summary of a folder that does not exist) no lock is taken:
    the study's own checks name the problem in one line."""
    from attnmoe.train.lock import LOCK_FILE, RunBusy, run_lock

    top = out  # the highest folder this run creates (missing parents included), removed if left empty
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    if not out.is_dir() and (out.exists() or not create or not top.parent.is_dir()):
        yield
        return
    try:
        with run_lock(out):
            yield
    except RunBusy as err:
        typer.echo(f"error: {str(err).replace('is being trained by', 'is in use by')}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        if not existed and out.is_dir() and [p.name for p in out.iterdir()] == [LOCK_FILE]:
            shutil.rmtree(top, ignore_errors=True)


def _rates(
    out: Path, preset: str, settings: str | None, gates: str | None, experts: str | None,
    normalizer: str | None, k_true: str | None, k_fit: str | None, n_grid: str | None,
    replicates: int | None, backend: str, workers: int | None, threads: int | None, max_iter: int | None,
    bound: float | None, method: str | None, init: str | None, starts: int | None, near_best: float | None,
    dtol: float | None, noise: str | None, block_size: int | None, assembly: str | None, seed: int, device: str,
    perturb: float, full: bool, summary_only: bool, progress: bool,
) -> None:
    """The body of :func:`rates` (inside its lock and interrupt handling): the options -> one
    :class:`~attnmoe.estimation.study.StudyArgs` -> the preset's plan -> the one loop."""
    # the options a preset may take of its own (StudyPreset.options), parsed; a preset refuses
    # every given one it does not declare
    own = {"settings": _split(settings, "--settings"), "gates": _split(gates, "--gates"),
           "experts": _split(experts, "--experts"), "normalizer": _split(normalizer, "--normalizer"),
           "k_true": _ints(k_true, "--k-true"), "k_fit": _ints(k_fit, "--k-fit"),
           "noise": _floats(noise, "--noise") if noise is not None else None, "max_iter": max_iter,
           "bound": bound, "method": method, "init": init, "starts": starts, "near_best": near_best,
           "dtol": dtol, "block_size": block_size, "assembly": assembly}
    grid = _ints(n_grid, "--n-grid")
    args = study.StudyArgs(
        out=out, full=full, replicates=replicates, n_grid=tuple(grid) if grid else None, seed=seed,
        workers=workers, threads=threads, progress=progress, backend=backend, summary_only=summary_only,
        device=device, perturb=perturb, options={k: v for k, v in own.items() if v is not None})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            result = study.run_preset(preset, args)
        except (ValueError, ImportError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from err
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    if summary_only:
        typer.echo(f"summarised {len(result.records)} records from {out / study.RECORDS_FILE}")
    else:
        typer.echo(
            f"{result.fitted} fits run, {result.reused} reused from {out / study.RECORDS_FILE}"
            + (f", {len(result.bad_lines)} corrupted line(s) skipped" if result.bad_lines else "")
            + f" ({result.seconds:.1f} s, {result.workers} worker(s) x {result.threads} thread(s), "
            f"{os.cpu_count()} cores)"
        )
    typer.echo(result.markdown.rstrip("\n"))
    if not summary_only:
        typer.echo(f"wrote {', '.join(str(out / f) for f in study.OUTPUT_FILES)}")
