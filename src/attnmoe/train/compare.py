"""Comparisons: attention variants x seeds of one run spec, and their summary.

* :func:`run_comparison` trains every variant x seed of a base :class:`RunSpec` (the spec with
  ``attention`` and ``seed`` replaced) into ``<out>/<variant>/seed<k>/`` with
  :func:`attnmoe.train.run.run_one`, seed-major (all variants for the first seed, then the next
  seed), so a comparison cut short is balanced across variants. Every run that is not trained
  is named (``report``) with the reason: finished earlier, diverged earlier, or held by another
  process (each run directory has a lock, ``attnmoe.train.lock``, so several ``compare``
  processes can share a comparison). Interrupted runs resume from their checkpoint. A run
  whose loss diverges is recorded as diverged and the comparison goes on.
  ``summary.md``/``summary.json`` are rewritten (atomically) after every run, ``curves.png``
  at the end (or with ``attnmoe compare --summary-only``).
* :func:`summarize_comparison` reads the run directories and writes ``summary.json``,
  ``summary.md`` and ``curves.png``: per variant ``n`` (finished seeds), mean and sample
  standard deviation (``ddof=1``) of each final metric, parameter count, wall time, Welch's
  unequal-variance t-test against ``softmax`` (``scipy.stats.ttest_ind(..., equal_var=False)``):
  ``t = (m_a - m_b) / sqrt(s_a^2/n_a + s_b^2/n_b)`` with Welch-Satterthwaite degrees of
  freedom, two-sided p-value; reported only when both groups have ``n >= 2``; the paired
  t-test over common seeds with Holm's correction; and the diverged and unfinished runs.
  The headline metric is the task's ``primary_metric`` (``attnmoe.tasks.task_entry``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from attnmoe.tasks.spec import MAX_SEED, RunSpec
from attnmoe.train import distributed
from attnmoe.train.lock import RunBusy
from attnmoe.train.loop import TrainingDiverged, is_diverged, read_json, read_log, read_metrics
from attnmoe.train.run import run_one
from attnmoe.utils import atomic_write_json, atomic_write_text

BASELINE = "softmax"
COMPARISON_FILE = "comparison.json"
MAX_SEEDS = 1000
"""The most seeds a comparison may list: each is a full training run per variant, so more is a typo
(``--seeds 1000000000`` once built a billion-entry list before anything ran)."""
PER_RUN = ("attention", "seed")
"""Spec fields that vary inside a comparison; every other field is the comparison's identity."""


def parse_seeds(seeds: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"5,7"`` -> ``[5, 7]`` (explicit list when a comma is present);
    at most :data:`MAX_SEEDS` seeds."""
    text = seeds.strip()
    try:
        if "," in text:
            values = [int(s) for s in text.split(",") if s.strip()]
        else:
            count = int(text)
            if count > MAX_SEEDS:
                raise OverflowError
            values = list(range(count))
    except OverflowError:
        raise ValueError(f"--seeds {seeds} is more than {MAX_SEEDS} seeds (each is a training run "
                         "per variant)") from None
    except ValueError:
        raise ValueError(f"--seeds must be a count (e.g. 3) or a comma list (e.g. 0,1,2), "
                         f"got {seeds!r}") from None
    if len(values) > MAX_SEEDS:
        raise ValueError(f"--seeds lists {len(values)} seeds, more than {MAX_SEEDS} (each is a training "
                         "run per variant)")
    if values and max(values) > MAX_SEED:  # checked here, not per run: no run starts before the refusal
        raise ValueError(f"--seeds: every seed must be at most {MAX_SEED} (2^32 - 1), got {max(values)}")
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"--seeds must give at least one distinct non-negative seed, got {seeds!r}")
    return values


def parse_variants(attention: str) -> list[str]:
    """``"softmax,active-gelu"`` -> names, validated with ``attention_kwargs``."""
    from attnmoe.attention.variants import attention_kwargs

    names = [a.strip() for a in attention.split(",") if a.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"--attention must list distinct variant names, got {attention!r}")
    for name in names:
        attention_kwargs(name)  # raises ValueError naming the valid variants
    return names


def run_dir(out: Path, variant: str, seed: int) -> Path:
    """``<out>/<variant>/seed<k>`` (``+`` in combined names kept: it is a valid file name)."""
    return Path(out) / variant / f"seed{seed}"


def _identity(spec: RunSpec) -> dict[str, Any]:
    return {k: v for k, v in spec.to_dict().items() if k not in PER_RUN}


def _record_comparison(out: Path, base: RunSpec, variants: Sequence[str], seeds: Sequence[int],
                       command: str | None) -> None:
    """Write (or extend) ``comparison.json``; refuse a directory holding another comparison."""
    record = {"spec": _identity(base), "variants": list(variants), "seeds": list(seeds),
              "command": command}
    path = out / COMPARISON_FILE
    if path.is_file():
        before = read_json(path)
        if not isinstance(before, dict) or "spec" not in before:
            raise ValueError(f"{path} records no run spec (an older attnmoe wrote it); use another --out")
        diffs = RunSpec.from_dict({**before["spec"], "attention": BASELINE, "seed": 0}).differences(
            replace(base, attention=BASELINE, seed=0))
        if diffs:
            raise ValueError(f"{out} holds a comparison with another spec ({'; '.join(diffs)}); "
                             "use another --out")
        record["variants"] = list(dict.fromkeys([*before["variants"], *variants]))
        record["seeds"] = sorted(set(before["seeds"]) | set(seeds))
        record["command"] = before.get("command") or command  # the command that started it
    if distributed.info().is_main:
        atomic_write_json(path, record)


def run_comparison(
    base: RunSpec,
    variants: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    data_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str | None = None,
    report: Callable[[str], None] | None = None,
    compile: bool = False,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Train every variant x seed of ``base`` (skipping, and naming, runs not to train) and summarise.

    Args:
        base: the run spec shared by every run (its ``attention`` and ``seed`` are replaced).
        variants, seeds: what varies.
        out: the comparison directory.
        report: called with one line per run that is not trained (and why) and per diverged run.

    Returns:
        The summary (what ``summary.json`` holds), plus ``"skipped"``: ``{run: reason}`` for the
        runs this call did not train.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = report or (lambda line: None)
    _record_comparison(out, base, variants, seeds, command)
    main = distributed.info().is_main
    skipped: dict[str, str] = {}
    summary: dict[str, Any] = {}
    plan = [(seed, variant) for seed in seeds for variant in variants]
    for k, (seed, variant) in enumerate(plan, start=1):
        where = run_dir(out, variant, seed)
        name = f"{variant}/seed{seed}"
        reason = None
        if read_metrics(where) is not None:
            reason = "finished earlier"
        elif (record := is_diverged(where)) is not None:
            reason = f"diverged earlier (step {record.get('step')}); remove {where} to retry"
        if reason is None:
            try:
                run_one(replace(base, attention=variant, seed=seed), where, data_dir=data_dir,
                        device=device, resume=True, progress=progress,
                        label=f"run {k}/{len(plan)} {variant} seed {seed}", compile=compile,
                        tensorboard=tensorboard)
            except RunBusy as err:
                reason = f"skipped: {err}"
            except TrainingDiverged as err:
                reason = f"diverged: {err}"
            if main:
                summary = summarize_comparison(out, plot=False)
        if reason is not None:
            skipped[name] = reason
            say(f"{name}: {reason}")
    if main:
        summary = summarize_comparison(out)
    return {**summary, "skipped": skipped}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float] | None:
    """Welch's t-test of ``a`` against ``b`` (two-sided); ``None`` when a group has n < 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():  # identical values: scipy warns, returns nan
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False)
    return {"t": float(result.statistic), "p": float(result.pvalue), "df": float(result.df)}


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, float] | None:
    """Paired t-test of ``a - b`` over the seeds both have (same seed = same initialisation
    stream and data order); ``None`` with fewer than 2 pairs."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    x = np.asarray([a[s] for s in common], float)
    y = np.asarray([b[s] for s in common], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(x, y)
    return {"mean_diff": float(np.mean(x - y)), "t": float(result.statistic),
            "p": float(result.pvalue), "n_pairs": len(common)}


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values (Holm 1979, step-down) of a family of tests.

    p_(1) <= ... <= p_(m) sorted; adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    ``None`` (a test that could not be run) stays ``None`` and does not count in m.
    """
    present = sorted(((p, key) for key, p in pvalues.items() if p is not None and not math.isnan(p)))
    m, running, out = len(present), 0.0, dict.fromkeys(pvalues)
    for i, (p, key) in enumerate(present):
        running = max(running, min(1.0, (m - i) * p))
        out[key] = running
    return out


def _seed_dirs(out: Path, variant: str) -> list[tuple[int, Path]]:
    found = []
    for path in (out / variant).glob("seed*"):
        if path.is_dir() and path.name[4:].isdigit():
            found.append((int(path.name[4:]), path))
    return sorted(found)


def _finished_runs(out: Path, variant: str) -> list[tuple[int, dict[str, Any]]]:
    runs = []
    for seed, path in _seed_dirs(out, variant):
        metrics = read_metrics(path)
        if metrics is not None:
            runs.append((seed, metrics))
    return runs


def _diverged_runs(out: Path, variant: str) -> dict[int, Any]:
    return {seed: record.get("step") for seed, path in _seed_dirs(out, variant)
            if read_metrics(path) is None and (record := is_diverged(path)) is not None}


def _metric_names(runs: list[dict[str, Any]], primary: str) -> list[str]:
    names = {k for r in runs for k, v in r.items()
             if (k.startswith(("test_", "val_"))) and isinstance(v, (int, float))}
    return sorted(names, key=lambda k: (k != primary, k))


def summarize_comparison(out: Path, *, plot: bool = True) -> dict[str, Any]:
    """Aggregate the finished runs under ``out`` into ``summary.json``, ``summary.md`` and (with
    ``plot``) ``curves.png``.

    Raises:
        ValueError: ``out`` holds no readable ``comparison.json``.
    """
    from attnmoe.tasks import task_entry

    out = Path(out)
    path = out / COMPARISON_FILE
    if not path.is_file():
        raise ValueError(f"{out} holds no comparison ({COMPARISON_FILE} missing)")
    record = read_json(path)
    if not isinstance(record, dict) or "spec" not in record:
        raise ValueError(f"{path} records no run spec (an older attnmoe wrote it)")
    spec = {**record, **{k: record["spec"][k] for k in ("task", "dataset", "horizon")}}
    primary = task_entry(spec["task"]).primary_metric
    per_variant = {v: _finished_runs(out, v) for v in spec["variants"]}
    all_runs = [m for runs in per_variant.values() for _, m in runs]
    names = _metric_names(all_runs, primary)
    baseline = {name: {s: m[name] for s, m in per_variant.get(BASELINE, []) if name in m}
                for name in names}

    variants: dict[str, Any] = {}
    for variant, runs in per_variant.items():
        entry: dict[str, Any] = {"n": len(runs), "seeds": [s for s, _ in runs], "metrics": {},
                                 "runs": [{"seed": s, **m} for s, m in runs],
                                 "diverged": _diverged_runs(out, variant)}
        if runs:
            entry["n_params"] = runs[0][1].get("n_params")
            entry["wall_time_s_mean"] = float(np.mean([m.get("wall_time_s", math.nan) for _, m in runs]))
        for name in names:
            by_seed = {s: m[name] for s, m in runs if name in m}
            values = list(by_seed.values())
            if not values:
                continue
            item: dict[str, Any] = {
                "values": values, "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            }
            if variant != BASELINE and not name.startswith("n_"):
                item["welch_vs_softmax"] = welch(values, list(baseline.get(name, {}).values()))
                item["paired_vs_softmax"] = paired(by_seed, baseline.get(name, {}))
            entry["metrics"][name] = item
        variants[variant] = entry
    for test in ("welch_vs_softmax", "paired_vs_softmax"):  # the family: every variant vs softmax
        tests = {v: e["metrics"].get(primary, {}).get(test) for v, e in variants.items() if v != BASELINE}
        adjusted = holm({v: (t["p"] if t else None) for v, t in tests.items()})
        for v, t in tests.items():
            if t is not None:
                t["p_holm"] = adjusted[v]
    summary = {**spec, "primary_metric": primary, "metrics": names, "variants": variants}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", _markdown(summary))
    if plot:
        _plot_curves(out, spec["variants"])
    return summary


def _fmt(item: dict[str, Any] | None, digits: int = 4) -> str:
    if item is None:
        return "-"
    std = item.get("std")
    return f"{item['mean']:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{item['mean']:.{digits}f}"


def _markdown(summary: dict[str, Any]) -> str:
    primary = summary["primary_metric"]
    names = [n for n in summary["metrics"] if not n.startswith("n_")]
    horizon = f", horizon {summary['horizon']}" if summary.get("horizon") else ""
    lines = [
        f"# {summary['task']} / {summary['dataset']}{horizon}: attention variants",
        "",
        (f"Seeds requested: {summary['seeds']}. Mean ± sample std (ddof=1) over the finished seeds "
        f"(n); Welch's t-test of each variant against `{BASELINE}` on `{primary}` "
        "(two-sided, scipy `ttest_ind(equal_var=False)`; only when both n ≥ 2). Runs with the "
        "same seed share the initialisation stream and the data order, so the paired t-test "
        "on the per-seed differences (scipy `ttest_rel`) is also shown: Δ = variant − "
        f"{BASELINE}, mean over the common seeds. *Holm* = the paired p-value after the "
        f"Holm-Bonferroni correction over the variants compared with {BASELINE} on `{primary}`."),
        "",
    ]
    if summary.get("command"):
        lines += ["```", summary["command"], "```", ""]
    lines.append("| variant | n | params | " + " | ".join(names)
                 + f" | Welch t ({primary}) | Welch p | paired Δ | paired p | Holm | wall s/run |")
    lines.append("|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|---|")
    for variant, entry in summary["variants"].items():
        metrics = entry["metrics"]
        test = metrics.get(primary, {}).get("welch_vs_softmax")
        t_text, p_text = (f"{test['t']:.2f}", f"{test['p']:.3g}") if test else ("-", "-")
        pair = metrics.get(primary, {}).get("paired_vs_softmax")
        d_text, pp_text = (f"{pair['mean_diff']:+.4f}", f"{pair['p']:.3g}") if pair else ("-", "-")
        holm_p = pair.get("p_holm") if pair else None
        h_text = f"{holm_p:.3g}" if holm_p is not None and not math.isnan(holm_p) else "-"
        wall = entry.get("wall_time_s_mean")
        wall_text = f"{wall:.0f}" if wall is not None and not math.isnan(wall) else "-"
        cells = " | ".join(_fmt(metrics.get(n)) for n in names)
        lines.append(f"| {variant} | {entry['n']} | {entry.get('n_params') or '-'} | {cells} | "
                     f"{t_text} | {p_text} | {d_text} | {pp_text} | {h_text} | {wall_text} |")
    lines += ["", "Per run:", "", "| variant | seed | " + " | ".join(names) + " | steps | wall s |",
              "|---|---|" + "---|" * len(names) + "---|---|"]
    for variant, entry in summary["variants"].items():
        for run in entry["runs"]:
            cells = " | ".join(f"{run[n]:.4f}" if n in run else "-" for n in names)
            lines.append(f"| {variant} | {run['seed']} | {cells} | {run.get('steps', '-')} | "
                         f"{run.get('wall_time_s', math.nan):.0f} |")
    diverged = [f"{v}/seed{s} (step {step})" for v, e in summary["variants"].items()
                for s, step in sorted(e.get("diverged", {}).items())]
    missing = [f"{v}/seed{s}" for v, e in summary["variants"].items()
               for s in summary["seeds"] if s not in e["seeds"] and s not in e.get("diverged", {})]
    lines += ["", f"Diverged (training loss NaN/inf; not in the statistics): "
              f"{', '.join(diverged) if diverged else 'none'}.", "",
              f"Not finished: {', '.join(missing) if missing else 'none'}.", "",
              "Training curves: `curves.png`.", ""]
    return "\n".join(lines)


def _plot_curves(out: Path, variants: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    monitor = None
    for i, variant in enumerate(variants):
        colour = colours[i % len(colours)]
        for k, (_, path) in enumerate(_seed_dirs(out, variant)):
            records = read_log(path)
            try:
                monitor = json.loads((path / "config.json").read_text()).get("monitor", monitor)
            except (OSError, ValueError, AttributeError):
                pass
            train_pts = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
            val_pts = [(r["step"], r[monitor]) for r in records if monitor and monitor in r]
            label = variant if k == 0 else None
            if train_pts:
                steps, values = zip(*train_pts)
                ax_train.plot(steps, values, color=colour, alpha=0.6, lw=0.8, label=label)
            if val_pts:
                steps, values = zip(*val_pts)
                ax_val.plot(steps, values, color=colour, alpha=0.8, marker=".", label=label)
    ax_train.set(xlabel="step", ylabel="training loss (running mean)", title="training")
    ax_val.set(xlabel="step", ylabel=monitor or "validation", title=f"validation ({monitor})")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out / ".curves.tmp.png"
    fig.savefig(tmp, dpi=110)
    tmp.replace(out / "curves.png")
    plt.close(fig)
