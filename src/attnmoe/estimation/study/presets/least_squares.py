"""The least-squares presets: settings x sample sizes x replicate seeds through the one loop.

:data:`LEAST_SQUARES_PRESETS` is the table of the least-squares presets (a :class:`Preset` each:
grid, replicates, :class:`FitOptions`, settings, description; the options' defaults are
:data:`attnmoe.estimation.families.options.FIT_DEFAULTS`). :func:`least_squares_plan` turns
settings, a grid, replicates and :class:`FitOptions` into a
:class:`~attnmoe.estimation.study.engine.StudyPlan` whose unit of work is :func:`fit_block`
(all the seeds of a block fitted as ONE batched program); :func:`run_study` and
:func:`resummarize` are the programmatic entries, and every preset of
:data:`LEAST_SQUARES_PRESETS` is registered in the one preset table with the options of its own
that ``attnmoe rates`` takes (:data:`OPTIONS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from attnmoe.estimation.families.least_squares.gating_truths import (
    COSINE_ROUTER_SETTINGS,
    SIGMOID_ATTENTION_SETTINGS,
    SIGMOID_GATING_NATURAL_SETTINGS,
    SIGMOID_GATING_SETTINGS,
)
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.study.engine import StudyArgs, StudyPlan, StudyResult, run_plan
from attnmoe.estimation.study.plan import (
    check_block_memory,
    check_positive_int,
    log_grid,
    replicate_seeds,
    resolve_settings,
    validate_study,
    with_noise_grid,
)
from attnmoe.estimation.study.records import STUDY_VERSION, Record, jsonable
from attnmoe.estimation.study.registry import StudyPreset, register_preset
from attnmoe.estimation.study.report import StudySummary, summary_markdown
from attnmoe.estimation.study.summary import summarize_records
from attnmoe.estimation.study.sweep import sweep_summary
from attnmoe.estimation.families.least_squares.truth import Setting, setting_from_dict

__all__ = ["LEAST_SQUARES_PRESETS", "OPTIONS", "Preset", "fit_block", "fit_one", "least_squares_plan", "resummarize",
           "run_study", "study_config"]

#: the options of its own a least-squares preset takes (``attnmoe rates --NAME``): the settings
#: (names, or a product of gates x experts x k), the noise sweep, every field of FitOptions but
#: the device (a run option), and the block size
OPTIONS: tuple[str, ...] = ("settings", "gates", "experts", "normalizer", "k_true", "k_fit", "noise",
                            "max_iter", "bound", "method", "init", "starts", "near_best", "dtol", "assembly",
                            "block_size")

#: the options of :data:`OPTIONS` that are :class:`FitOptions` fields
_FIT_FIELDS = ("max_iter", "bound", "method", "init", "starts", "near_best", "dtol", "assembly")


@dataclass(frozen=True)
class Preset:
    """A least-squares study: its size, fit options and settings (``settings=None``: every core
    setting); ``description`` is what ``attnmoe rates --help`` says of it."""

    n_grid: tuple[int, ...]
    replicates: int
    fit: FitOptions = field(default_factory=FitOptions)
    settings: tuple[str, ...] | None = None
    noise: tuple[float, ...] | None = None  # a noise sweep (settings renamed <name>-sd<sigma>)
    full: Preset | None = None  # the committed study's size (``attnmoe rates --full``)
    description: str = ""


def _gating_preset(settings: Sequence[str], max_iter: int, description: str) -> Preset:
    """A gating-family preset (docs/gating.md): quick n = 10^3..1.6 10^4, 4 replicates; full
    (``--full``) 7 sizes to 10^5, 40 replicates, a 5,000-iteration cap. Each replicate is fitted
    from a near-truth and a displaced start (the split copies moved +-0.3 apart along their flat
    direction): the near-truth fit's local error and the near-best width (session 7; before,
    near-truth only)."""
    start = "near-truth:0.1+displaced:0.3"
    return Preset(
        n_grid=(1000, 4000, 16000),
        replicates=4,
        fit=FitOptions(max_iter=max_iter, n_test=4000, bound=10.0, init=start),
        settings=tuple(settings),
        description=description,
        full=Preset(
            n_grid=log_grid(1000, 100_000, 7),
            replicates=40,
            fit=FitOptions(max_iter=5000, n_test=20_000, bound=10.0, init=start),
            settings=tuple(settings),
        ),
    )


LEAST_SQUARES_PRESETS: dict[str, Preset] = {
    # All 8 core settings in under 5 minutes on 2 shared CPU cores (timed: docs/rates.md).
    # (the cap keeps it short: over-specified fits are reported unconverged, not hidden)
    "quick": Preset(
        n_grid=(1000, 2000, 4000, 8000),
        replicates=4,
        fit=FitOptions(max_iter=150, n_test=4000),
        description="the 8 core settings, n = 1e3..8e3, 4 replicates (arXiv 2410.11222)",
    ),
    # The scale of the simulations in this literature: n up to 1e5, 40 replicates; a cap high
    # enough for the over-specified fits to converge (docs/rates.md, "Protocol").
    "paper": Preset(
        n_grid=log_grid(1000, 100_000, 9),
        replicates=40,
        fit=FitOptions(max_iter=5000, n_test=20_000, bound=10.0),
        description="the 8 core settings at the literature's scale: n to 1e5, 40 replicates",
    ),
    # The over-specified settings at n = 1000 over four decades of noise (sigma^2/n is what
    # matters, docs/rates.md), each replicate from a near-truth AND a displaced start: the
    # near-truth start's local error and the near-best width, as slopes on log(n / sigma^2).
    "identifiability": Preset(
        n_grid=(1000,),
        replicates=4,
        fit=FitOptions(max_iter=5000, n_test=4000, bound=10.0, init="near-truth:0.1+displaced:0.3"),
        settings=("monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over",
                  "polynomial-sigmoid-over"),
        noise=(1e-2, 1e-3, 1e-4, 1e-5),
        description="over-specified settings at n = 1e3 over four decades of noise, near-truth and displaced starts",
    ),
    # Sigmoid vs softmax gating (arXiv 2405.13997) on the same f* and data, regimes r1 (slope
    # != 0) and r2 (slope = 0), linear and GELU experts (estimation/families/least_squares/gating_truths.py,
    # docs/gating.md). Quick: wall time measured in docs/gating.md.
    "sigmoid-gating": _gating_preset(SIGMOID_GATING_SETTINGS, max_iter=1000,
                                     description="sigmoid vs softmax gating on the same truth (arXiv 2405.13997)"),
    # The same contrast with each gate on its own natural k* = 2 truth (the paper's comparison).
    "sigmoid-gating-natural": _gating_preset(SIGMOID_GATING_NATURAL_SETTINGS, max_iter=1000,
                                             description="sigmoid vs softmax gating, each on its own truth"),
    # Cosine vs perturbed-cosine router, softmax (arXiv 2405.14131; the autograd objective).
    "cosine-router": _gating_preset(COSINE_ROUTER_SETTINGS, max_iter=500,
                                    description="cosine vs perturbed-cosine router (arXiv 2405.14131)"),
    # Sigmoid vs softmax weights on the quadratic polynomial gate (arXiv 2502.00281).
    "sigmoid-attention": _gating_preset(SIGMOID_ATTENTION_SETTINGS, max_iter=500,
                                        description="sigmoid vs softmax weights on the quadratic gate (arXiv 2502.00281)"),
}


def fit_block(
    setting: Setting | dict[str, Any],
    n: int,
    seeds: Sequence[int],
    options: FitOptions,
    threads: int | None = None,
) -> list[Record]:
    """Fit ``seeds`` replicates of ``setting`` at sample size ``n`` as one batched program.

    Pure: the records depend only on ``(setting, n, seed, options)``. ``threads`` (if given)
    sets torch's intra-op thread count first; ``setting`` may be its ``to_dict()``.
    """
    import torch

    from attnmoe.estimation.families.least_squares.experiment import fit_and_score

    if threads is not None:
        torch.set_num_threads(threads)
    setting = setting if isinstance(setting, Setting) else setting_from_dict(setting)
    records = fit_and_score(setting, int(n), [int(s) for s in seeds], options)
    return [jsonable(r) for r in records]


def fit_one(setting: Setting, n: int, seed: int, options: FitOptions) -> Record:
    """The unit of work ``(setting, n, seed) -> record`` (a block of one seed)."""
    return fit_block(setting, n, [seed], options)[0]


def study_config(options: FitOptions) -> dict[str, Any]:
    """What ``study.json`` of a least-squares study holds: the fit options and the code version."""
    return {"fit": options.to_dict(), "version": STUDY_VERSION}


def least_squares_plan(
    settings: Sequence[Setting],
    n_grid: Sequence[int],
    replicates: int | None,
    options: FitOptions,
    *,
    base_seed: int = 0,
    block_size: int | None = None,
    backend: str = "process",
    fit: Callable[..., list[Record]] = fit_block,
    n_boot: int = 2000,
    name: str = "rates",
    summary_only: bool = False,
) -> StudyPlan:
    """The plan of a least-squares study (validated before anything is written).

    Args:
        settings: ``Setting`` objects (see :func:`~attnmoe.estimation.study.plan.resolve_settings`).
        n_grid: sample sizes (each in 1 .. :data:`~attnmoe.estimation.study.plan.MAX_N`).
        replicates: replicate seeds per ``(setting, n)``: ``base_seed .. base_seed+R-1``.
        options: fit options (must match those of a study being resumed).
        base_seed: seed of the first replicate.
        block_size: seeds per batched call; default all the replicates of one ``(setting, n)``.
        backend: where the jobs run (``"cuda"`` needs a GPU visible here unless on Ray).
        fit: the unit of work (:func:`fit_block`'s signature); tests pass a fake.
        n_boot: bootstrap resamples for the slope CIs.
        name: the progress bar's label.
        summary_only: only summarise (no fit, so neither the grid nor the device is checked).

    Raises:
        TypeError: ``options`` is not a FitOptions, or a setting is not a Setting.
        ValueError: any invalid input.
    """
    if not isinstance(options, FitOptions):
        raise TypeError(f"options must be a FitOptions, got {type(options).__name__}")
    check_positive_int(n_boot, "n_boot")
    settings = list(settings)
    if summary_only:
        if any(not isinstance(s, Setting) for s in settings):
            raise TypeError("settings must be attnmoe.estimation.families.least_squares.truth.Setting")
    else:
        if options.device == "cuda" and backend == "process" and not _cuda_available():
            raise ValueError("--device cuda: no GPU is visible to torch here (torch.cuda.is_available() is False)")
        validate_study(settings, n_grid, replicates)
    if block_size is not None:
        check_positive_int(block_size, "--block-size")
    by_name = {s.name: s for s in settings}

    def split(setting: str, n: int, todo: list[int]) -> list[tuple]:
        size = block_size or len(todo)
        return [(by_name[setting], n, tuple(todo[i : i + size]), options) for i in range(0, len(todo), size)]

    def check_jobs(jobs: list[tuple], workers: int) -> None:
        starts = options.starts * len(options.init.split("+"))
        check_block_memory(max(len(j[2]) for j in jobs), starts, max(j[1] for j in jobs), workers,
                           max(s.fit_layout.n_params for s in settings))

    def summarize(records: list[Record]) -> StudySummary:
        summary = summarize_records(records, n_boot=n_boot, settings=settings)
        sweep = sweep_summary(records, n_boot=n_boot)
        if sweep["settings"]:
            summary["sweep"] = sweep
        return StudySummary(summary, summary_markdown(summary))

    return StudyPlan(
        name=name, config=study_config(options), settings=list(by_name), grid=[int(n) for n in n_grid],
        seeds=replicate_seeds(replicates, base_seed) if replicates is not None else [], fit=fit, split=split,
        summarize=summarize, check_jobs=check_jobs)


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
    fit: Callable[..., list[Record]] = fit_block,
    n_boot: int = 2000,
) -> StudyResult:
    """Run (or resume) a least-squares study and write every output file in ``out`` (the
    arguments are those of :func:`least_squares_plan` and of
    :class:`~attnmoe.estimation.study.engine.StudyArgs`).

    Raises:
        ValueError: any invalid input, before anything is written.
    """
    options = options if options is not None else FitOptions()
    args = StudyArgs(out=Path(out), replicates=replicates, n_grid=tuple(n_grid), seed=base_seed, workers=workers,
                     threads=threads, progress=progress, backend=backend, device=options.device)
    args.check()  # before any seed list is built
    plan = least_squares_plan(settings, n_grid, replicates, options, base_seed=base_seed, block_size=block_size,
                              backend=backend, fit=fit, n_boot=n_boot)
    return run_plan(args, plan)


def resummarize(
    out: Path | str,
    settings: Sequence[Setting],
    n_grid: Sequence[int] | None = None,
    replicates: int | None = None,
    *,
    base_seed: int = 0,
    n_boot: int = 2000,
) -> StudyResult:
    """Rewrite the summary files of ``out`` from its records without fitting anything.

    Uses every record of the given settings, restricted to ``n_grid`` and to the first
    ``replicates`` seeds when those are given (else every sample size and seed on file), so a
    study whose settings were run on different grids can be summarised as it stands.
    """
    grid = tuple(int(n) for n in n_grid) if n_grid else None
    args = StudyArgs(out=Path(out), replicates=replicates, n_grid=grid, seed=base_seed, progress=False,
                     summary_only=True)
    args.check()
    plan = least_squares_plan(settings, grid or (), replicates, FitOptions(), base_seed=base_seed, n_boot=n_boot,
                              summary_only=True)
    return run_plan(args, plan)


def preset_plan(name: str, preset: Preset, args: StudyArgs) -> StudyPlan:
    """The plan of the least-squares preset ``name`` under ``args`` (its own options in
    ``args.options``: :data:`OPTIONS`; each given one overrides the preset's value)."""
    given = dict(args.options)
    if args.full:
        if preset.full is None:
            raise ValueError(f"--full: preset {name!r} has no full size")
        preset = preset.full
    chosen = resolve_settings(
        given.get("settings") or (list(preset.settings) if preset.settings else None),
        gates=given.get("gates"), experts=given.get("experts"), k_true=given.get("k_true"),
        k_fit=given.get("k_fit"), normalizers=given.get("normalizer"),
    )
    chosen = with_noise_grid(chosen, given["noise"] if "noise" in given else preset.noise)
    overrides = {k: given[k] for k in _FIT_FIELDS if k in given}
    if args.device != "cpu":
        overrides["device"] = args.device
    if args.perturb:
        overrides["perturb"] = args.perturb
    try:
        options = replace(preset.fit, **overrides)
    except ValueError as err:  # name the option, not the field
        if str(err).startswith("--"):
            raise
        field = str(err).split()[0]
        raise ValueError(f"--{field.replace('_', '-')}: {err}") from err
    replicates = args.replicates if args.replicates is not None else preset.replicates
    return least_squares_plan(
        chosen, args.n_grid or preset.n_grid, replicates, options, base_seed=args.seed,
        block_size=given.get("block_size"), backend=args.backend, name=name, summary_only=args.summary_only)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


for _name, _preset in LEAST_SQUARES_PRESETS.items():
    register_preset(StudyPreset(_name, _preset.description, partial(preset_plan, _name, _preset), OPTIONS))
