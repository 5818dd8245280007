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
  t-test over common seeds and, beside it, the exact paired permutation p (the sign-flip test of
  :func:`attnmoe.claims.stats.sign_flip_p`, the ledger's own definition: all 2^k sign patterns
  of the k per-seed differences), each with Holm's correction over the variants; and the
  diverged and unfinished runs. The headline metric is the task's ``primary_metric``
  (``attnmoe.tasks.task_entry``).
* :func:`reuse_runs` (``attnmoe compare --reuse <summary.json>``) copies the finished runs of a
  committed summary whose recipe is the comparison's own into the run directories that do not
  exist yet, so a comparison is extended to more seeds without retraining the committed ones (a
  record depends only on its key: spec, variant, seed). A summary of another recipe is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from attnmoe.tasks.spec import MAX_SEED, RunSpec
from attnmoe.train import distributed
from attnmoe.train.lock import LOCK_FILE, RunBusy, run_lock
from attnmoe.train.loop import TrainingDiverged, is_diverged, read_json, read_log, read_metrics
from attnmoe.train.rundir import METRICS_FILE
from attnmoe.train.run import run_one
from attnmoe.train.stats import holm, paired, welch
from attnmoe.utils import atomic_write_json, atomic_write_text

BASELINE = "softmax"
COMPARISON_FILE = "comparison.json"
REUSED_FILE = "reused.json"
"""In a run directory filled by :func:`reuse_runs`: where its ``metrics.json`` came from."""
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
    reuse: Path | None = None,
) -> dict[str, Any]:
    """Train every variant x seed of ``base`` (skipping, and naming, runs not to train) and summarise.

    Args:
        base: the run spec shared by every run (its ``attention`` and ``seed`` are replaced).
        variants, seeds: what varies.
        out: the comparison directory.
        report: called with one line per run that is not trained (and why) and per diverged run.
        reuse: a committed ``summary.json`` of the same recipe whose finished runs are taken
            instead of retrained (:func:`reuse_runs`).

    Returns:
        The summary (what ``summary.json`` holds), plus ``"skipped"``: ``{run: reason}`` for the
        runs this call did not train.
    """
    out = Path(out)
    if reuse is not None:
        source = load_reusable(reuse, base)  # refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    say = report or (lambda line: None)
    main = distributed.info().is_main
    _record_comparison(out, base, variants, seeds, command)
    if reuse is not None and main:
        reuse_runs(out, base, variants, seeds, source, reuse)
    skipped: dict[str, str] = {}
    summary: dict[str, Any] = {}
    plan = [(seed, variant) for seed in seeds for variant in variants]
    for k, (seed, variant) in enumerate(plan, start=1):
        where = run_dir(out, variant, seed)
        name = f"{variant}/seed{seed}"
        reason = None
        if read_metrics(where) is not None:
            reused = (where / REUSED_FILE).is_file()
            reason = f"reused ({read_json(where / REUSED_FILE).get('from')})" if reused else "finished earlier"
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


def _summary_spec(summary: dict[str, Any], path: Path) -> RunSpec:
    """The recipe (attention softmax, seed 0) of a comparison's ``summary.json``: its ``spec``, or,
    for a summary written before specs were stored, the reference recipe of its task, data set
    and horizon with its recorded ``overrides``."""
    from attnmoe.tasks import resolve_spec

    if isinstance(summary.get("spec"), dict):
        return RunSpec.from_dict({**summary["spec"], "attention": BASELINE, "seed": 0})
    if not all(k in summary for k in ("task", "dataset", "overrides")):
        raise ValueError(f"{path} records neither a run spec nor task/dataset/overrides, so its "
                         "recipe cannot be checked; it cannot be reused")
    return resolve_spec(summary["task"], summary["dataset"], attention=BASELINE, seed=0,
                        horizon=summary.get("horizon"), overrides=dict(summary["overrides"]))


def load_reusable(path: Path, base: RunSpec) -> dict[str, Any]:
    """A committed ``summary.json`` whose runs may stand for runs of ``base``: the same recipe.

    Raises:
        ValueError: the file is missing or damaged, or its recipe differs from ``base`` (the
            differing fields named).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--reuse {path}: no such file")
    summary = read_json(path, hint="give another --reuse")
    if not isinstance(summary, dict) or not isinstance(summary.get("variants"), dict):
        raise ValueError(f"--reuse {path} is not a comparison summary (no 'variants')")
    diffs = _summary_spec(summary, path).differences(replace(base, attention=BASELINE, seed=0))
    if diffs:
        raise ValueError(f"--reuse {path} holds runs of another recipe ({'; '.join(diffs)}); "
                         "its runs cannot stand for this comparison's")
    return summary


def reuse_runs(out: Path, base: RunSpec, variants: Sequence[str], seeds: Sequence[int],
               summary: dict[str, Any], source: Path) -> list[str]:
    """Fill the run directories of ``out`` that do not exist yet (or are empty) from the finished
    runs of ``summary`` (checked by :func:`load_reusable`); returns the runs filled.

    Each filled directory gets ``reused.json`` (source file, its SHA-256, the run's spec), then
    ``metrics.json`` (the run's record as the summary holds it), both written atomically, under
    the run's lock: a directory another process holds, or one holding anything (a finished,
    diverged or partial run), is left alone.
    """
    import hashlib

    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    filled = []
    for seed in seeds:
        for variant in variants:
            runs = summary["variants"].get(variant, {}).get("runs", [])
            record = next((r for r in runs if r.get("seed") == seed), None)
            where = run_dir(out, variant, seed)
            if record is None or (where.is_dir() and any(p.name != LOCK_FILE for p in where.iterdir())):
                continue
            where.mkdir(parents=True, exist_ok=True)
            try:
                with run_lock(where):
                    if any(p.name != LOCK_FILE for p in where.iterdir()):
                        continue
                    metrics = {k: v for k, v in record.items() if k not in ("seed", "reused_from")}
                    first = record.get("reused_from") or {}  # a run reused twice names its first source
                    atomic_write_json(where / REUSED_FILE, {
                        "from": first.get("file") or str(source), "sha256": first.get("sha256") or digest,
                        "spec": replace(base, attention=variant, seed=seed).to_dict()})
                    atomic_write_json(where / METRICS_FILE, metrics)
            except RunBusy:
                continue
            filled.append(f"{variant}/seed{seed}")
    return filled


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
            if (path / REUSED_FILE).is_file():
                reused = read_json(path / REUSED_FILE)
                metrics = {**metrics, "reused_from": {"file": reused.get("from"), "sha256": reused.get("sha256")}}
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
    for test, key in (("welch_vs_softmax", "p"), ("paired_vs_softmax", "p"),
                      ("paired_vs_softmax", "p_exact")):  # the family: every variant vs softmax
        tests = {v: e["metrics"].get(primary, {}).get(test) for v, e in variants.items() if v != BASELINE}
        adjusted = holm({v: (t[key] if t else None) for v, t in tests.items()})
        for v, t in tests.items():
            if t is not None:
                t[f"{key}_holm"] = adjusted[v]
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
    all_runs = [r for e in summary["variants"].values() for r in e["runs"]]
    # the columns: metrics every finished run has (a diagnostic newer runs add stays in the JSON)
    names = [n for n in summary["metrics"] if not n.startswith("n_") and all(n in r for r in all_runs)]
    horizon = f", horizon {summary['horizon']}" if summary.get("horizon") else ""
    lines = [
        f"# {summary['task']} / {summary['dataset']}{horizon}: attention variants",
        "",
        (f"Seeds requested: {summary['seeds']}. Mean ± sample std (ddof=1) over the finished seeds "
        f"(n); Welch's t-test of each variant against `{BASELINE}` on `{primary}` "
        "(two-sided, scipy `ttest_ind(equal_var=False)`; only when both n ≥ 2). Runs with the "
        "same seed share the initialisation stream and the data order, so the paired tests "
        "on the k per-seed differences are also shown: Δ = variant − "
        f"{BASELINE}, mean over the common seeds; *t p* = paired t-test (scipy `ttest_rel`); "
        "*exact p* = exact paired permutation test (sign flips: |Σ Δ| against all 2^k sign "
        "patterns, `attnmoe.claims.stats.sign_flip_p`, never below 2/2^k); *Holm* = each after "
        f"the Holm-Bonferroni correction over the variants compared with {BASELINE} on `{primary}`."),
        "",
    ]
    if summary.get("command"):
        lines += ["```", summary["command"], "```", ""]
    lines.append("| variant | n | params | " + " | ".join(names)
                 + f" | Welch t ({primary}) | Welch p | paired Δ | t p | Holm (t) | exact p | Holm (exact) "
                   "| wall s/run |")
    lines.append("|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|---|---|---|")

    def num(value: float | None) -> str:
        return f"{value:.3g}" if value is not None and not math.isnan(value) else "-"

    for variant, entry in summary["variants"].items():
        metrics = entry["metrics"]
        test = metrics.get(primary, {}).get("welch_vs_softmax")
        t_text, p_text = (f"{test['t']:.2f}", f"{test['p']:.3g}") if test else ("-", "-")
        pair = metrics.get(primary, {}).get("paired_vs_softmax") or {}
        d_text = f"{pair['mean_diff']:+.4f}" if pair else "-"
        wall = entry.get("wall_time_s_mean")
        wall_text = f"{wall:.0f}" if wall is not None and not math.isnan(wall) else "-"
        cells = " | ".join(_fmt(metrics.get(n)) for n in names)
        lines.append(f"| {variant} | {entry['n']} | {entry.get('n_params') or '-'} | {cells} | "
                     f"{t_text} | {p_text} | {d_text} | {num(pair.get('p'))} | {num(pair.get('p_holm'))} | "
                     f"{num(pair.get('p_exact'))} | {num(pair.get('p_exact_holm'))} | {wall_text} |")
    reused = sorted({r["reused_from"]["file"] for r in all_runs if isinstance(r.get("reused_from"), dict)})
    lines += ["", "Per run" + (" (*reused*: the record of an earlier comparison of the same recipe, "
                               f"`attnmoe compare --reuse`: {', '.join(f'`{f}`' for f in reused)}; its "
                               "wall time is that session's)" if reused else "") + ":", "",
              "| variant | seed | " + " | ".join(names) + " | steps | wall s |",
              "|---|---|" + "---|" * len(names) + "---|---|"]
    for variant, entry in summary["variants"].items():
        for run in entry["runs"]:
            cells = " | ".join(f"{run[n]:.4f}" if n in run else "-" for n in names)
            mark = " *reused*" if run.get("reused_from") else ""
            lines.append(f"| {variant} | {run['seed']}{mark} | {cells} | {run.get('steps', '-')} | "
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
