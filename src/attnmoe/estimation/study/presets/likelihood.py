"""Likelihood-MoE rate studies, registered as family presets (``attnmoe rates --preset NAME``).

A preset is a list of :class:`~attnmoe.estimation.families.likelihood.settings.LikSetting` names and a quick and a full size (n grid,
replicates). For each setting and n, the missing replicate seeds are fitted as ONE batched
trust-region program from every start kind (the family's study cell,
:func:`~attnmoe.estimation.families.likelihood.experiment.fit_block`), their losses
computed and appended to ``records.jsonl`` (one record per (setting, n, seed): the key alone fixes
the data, the start and hence the record). ``study.json`` holds the preset and fit options; a
resume with other options is refused. Slopes of log(loss) on log(n) with seed-bootstrap CIs come
from :func:`attnmoe.estimation.study.summary.summarize_records`; ``summary.md`` sets each beside
the theory's slope with a verdict (theory inside the 95 % CI: "agrees").

Each (setting, n) is one job; ``--workers W`` runs the jobs in W processes
(:func:`~attnmoe.estimation.study.engine.run_plan`), with the same records as one process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from attnmoe.estimation.families.likelihood.experiment import FIT_OPTIONS, fit_block
from attnmoe.estimation.families.likelihood.settings import SETTINGS, START_KINDS
from attnmoe.estimation.study.engine import (
    StudyArgs,
    choose_settings,
    StudyPlan,
    StudyResult,
    StudySummary,
    run_plan,
)
from attnmoe.estimation.study.registry import StudyPreset, register_preset
from attnmoe.estimation.study.summary import summarize_records

__all__ = ["LIK_PRESETS", "LikPreset", "lik_plan", "run_lik_study"]


@dataclass(frozen=True)
class LikPreset:
    """A likelihood study: settings, quick and full sizes."""

    name: str
    description: str
    settings: tuple[str, ...]
    quick_grid: tuple[int, ...]
    quick_replicates: int
    full_grid: tuple[int, ...]
    full_replicates: int


def _log_grid(lo: float, hi: float, m: int) -> tuple[int, ...]:
    import numpy as np

    return tuple(int(round(v)) for v in np.geomspace(lo, hi, m))


LIK_PRESETS: dict[str, LikPreset] = {
    p.name: p
    for p in (
        LikPreset("topk-gaussian", "top-K sparse softmax Gaussian MoE, arXiv 2309.13850 (d=1, k*=2)",
                  ("topk-exact", "topk-over-K3", "topk-over-K2"),
                  (500, 1000, 2000, 4000, 8000), 8, _log_grid(1e3, 1e5, 10), 40),
        LikPreset("contaminated", "softmax-contaminated MoE, arXiv 2505.18455 (d=8), cases a, b-i, b-ii",
                  ("contaminated-a", "contaminated-b-i", "contaminated-b-ii"),
                  (1000, 2000, 4000, 8000, 16000), 8, _log_grid(1e3, 1e5, 20), 40),
        LikPreset("temperature-gate", "temperature vs activation dense-to-sparse gate, arXiv 2401.13875 (d=1, k*=2)",
                  ("temp-temperature", "temp-activation"),
                  (500, 1000, 2000, 4000, 8000, 16000), 8, _log_grid(1e3, 1e5, 10), 40),
        LikPreset("temperature-identifiable", "temperature gate, arXiv 2401.13875: our parametrisation (beta1, tau) "
                  "beside the identifiable chart N(beta1) = 1 (d=1, k*=2; temperature-gate's sizes)",
                  ("temp-temperature", "temp-temperature-normalised"),
                  (500, 1000, 2000, 4000, 8000, 16000), 8, _log_grid(1e3, 1e5, 10), 40),
        LikPreset("multinomial-logistic", "softmax vs modified-softmax gated multinomial logistic MoE, "
                  "arXiv 2310.14188 (d=1, S=2, k*=2 fitted with k=3)",
                  ("mlogit-softmax-vanish", "mlogit-modified-vanish", "mlogit-softmax-full"),
                  (500, 1000, 2000, 4000, 8000), 6, _log_grid(1e3, 1e5, 10), 40),
        LikPreset("multinomial-logistic-box", "multinomial-logistic inside the compact parameter box |theta| < 5 "
                  "(the theory's compact parameter space), arXiv 2310.14188",
                  ("mlogit-softmax-vanish-box", "mlogit-modified-vanish-box", "mlogit-softmax-full-box"),
                  (500, 1000, 2000, 4000, 8000), 6, _log_grid(1e3, 1e5, 10), 40),
    )
}

def _config(preset: LikPreset, perturb: float = 0.0) -> dict[str, Any]:
    fit = FIT_OPTIONS | ({"perturb": perturb} if perturb else {})  # recorded only when used
    return {"preset": preset.name, "settings": list(preset.settings), "fit": fit, "version": 2}


def _check_args(preset: LikPreset, args: StudyArgs) -> tuple[tuple[int, ...], int]:
    grid = args.n_grid or (preset.full_grid if args.full else preset.quick_grid)
    reps = args.replicates if args.replicates is not None else (
        preset.full_replicates if args.full else preset.quick_replicates)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 50 for n in grid) or len(set(grid)) < 2:
        raise ValueError(f"--n-grid needs at least two distinct sample sizes >= 50, got {list(grid)}")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 2:
        raise ValueError(f"--replicates must be an integer >= 2, got {reps!r}")
    return tuple(sorted(set(grid))), reps


def lik_plan(preset: LikPreset, args: StudyArgs) -> StudyPlan:
    """The plan of ``preset`` under ``args`` (module docstring); one-line errors on bad input.
    ``--settings`` (``args.options["settings"]``) runs a subset of the preset's settings, e.g. the
    cells one claim reads for its rule-7 refits."""
    grid, reps = _check_args(preset, args)
    preset = replace(preset, settings=choose_settings(preset.settings, args.options.get("settings")))
    if args.device != "cpu":
        raise ValueError(f"--device {args.device}: the likelihood presets run on the CPU only so far; the "
                         "least-squares presets take --device cuda")

    def summarize(wanted: list[dict[str, Any]]) -> StudySummary:
        summary = summarize_records(wanted)
        summary["theory"] = {name: dict(SETTINGS[name].theory) for name in preset.settings}  # width_<loss>: <loss>'s
        summary["starts_converged"] = starts_converged(wanted)
        # the near-truth fits' losses, one panel each (the width columns are in summary.md)
        return StudySummary(summary, summary_markdown(preset, summary),
                            plotted=lambda loss: not loss.startswith("width_"), sort_keys=False)

    return StudyPlan(
        name=preset.name, config=_config(preset, args.perturb), settings=preset.settings, grid=grid,
        seeds=range(args.seed, args.seed + reps), fit=fit_block,
        split=lambda name, n, seeds: [(name, n, seeds, args.perturb)], summarize=summarize)


def run_lik_study(preset: LikPreset, args: StudyArgs) -> StudyResult:
    """Run (or resume) ``preset`` into ``args.out`` through the one loop
    (:func:`~attnmoe.estimation.study.engine.run_plan`)."""
    args.check()
    return run_plan(args, lik_plan(preset, args))


def starts_converged(records: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Per setting and start kind: [converged fits, fits] (records without ``starts``: none)."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in records:
        for kind, info in (r.get("starts") or {}).items():
            cell = out.setdefault(r["setting"], {}).setdefault(kind, [0, 0])
            cell[0] += bool(info.get("converged"))
            cell[1] += 1
    return out


def verdict(theory: float | None, lo: float | None, hi: float | None) -> str:
    """'agrees' when the theory's slope lies in the CI [lo, hi] and 0 does not (with 0 inside too:
    'inconclusive'); 'faster' / 'slower than theory' when the CI lies beside it."""
    if lo is None or hi is None:
        return "no slope"
    if theory is None:
        return "no rate claimed" + (" (CI contains 0)" if lo <= 0 <= hi else "")
    if lo <= theory <= hi:
        return "inconclusive (CI contains 0)" if lo <= 0 <= hi else "agrees"
    return "faster than theory" if hi < theory else "slower than theory"


def _cell(e: dict[str, Any] | None, theory: float | None) -> tuple[str, str]:
    """(slope [CI], verdict) of one loss entry of the summary."""
    if not e or e.get("slope") is None:
        return "—", "no slope"
    lo, hi = e.get("ci_low"), e.get("ci_high")
    return f"{e['slope']:.3f} [{lo:.3f}, {hi:.3f}]", verdict(theory, lo, hi)


def summary_markdown(preset: LikPreset, summary: dict[str, Any]) -> str:
    """One row per (setting, loss): theory, the near-truth fits' slope (local error) and the
    near-best width's slope, each with its CI and verdict, n range, seeds, converged fraction."""
    lines = [f"## {preset.name}: {preset.description}", "",
             "| setting | loss | theory slope | local slope [95% CI] | verdict | width slope [95% CI] | verdict (width) "
             "| n range | replicates | converged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in preset.settings:
        info = summary["settings"].get(name)
        if info is None:
            continue
        theory = SETTINGS[name].theory
        conv = info.get("converged_fraction")
        for loss, e in info["losses"].items():
            if loss.startswith("width_"):
                continue
            th = theory.get(loss)
            local, v_local = _cell(e, th)
            width, v_width = _cell(info["losses"].get(f"width_{loss}"), th)
            lines.append(
                f"| {name} | {loss} | {'—' if th is None else f'{th:.3f}'} | {local} | {v_local} | {width} | {v_width} | "
                f"{e.get('n_min')}–{e.get('n_max')} | {e.get('replicates')} | "
                f"{'—' if conv is None else f'{conv:.2f}'} |")
    lines += ["", "Local: the near-truth start's fit. Width: the largest loss over the near-best set (converged fits "
              f"of the {len(START_KINDS)} starts within {FIT_OPTIONS['near_best']:g}/n of the best mean NLL); "
              "converged: the near-truth fits.", ""]
    for name in preset.settings:
        info = summary["settings"].get(name)
        if info is not None:
            starts = summary.get("starts_converged", {}).get(name, {})
            conv = ", ".join(f"{k} {c}/{t}" for k, (c, t) in starts.items())
            lines.append(f"- {name}: {SETTINGS[name].claim}; stop reasons {info.get('reasons', {})}"
                         + (f"; converged by start: {conv}" if conv else ""))
    return "\n".join(lines) + "\n"


for _p in LIK_PRESETS.values():
    register_preset(StudyPreset(_p.name, _p.description, partial(lik_plan, _p), ("settings",)))
