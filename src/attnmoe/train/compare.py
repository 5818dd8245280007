"""Runs and comparisons: one training run by name, variants x seeds, and their summary.

* :func:`run_one` builds a task by name (``attnmoe.tasks.build_task``), makes a
  :class:`~attnmoe.train.loop.TrainConfig` from the task's reference recipe plus overrides, and
  trains into a run directory (resuming when asked). ``attnmoe train`` is a thin wrapper.
* :func:`run_comparison` runs every variant x seed into ``<out>/<variant>/seed<k>/``, seed-major
  (all variants for the first seed, then the next seed), so a comparison cut short is balanced
  across variants. Finished runs (``metrics.json`` present) are skipped; interrupted ones
  resume from their checkpoint. ``summary.md``/``summary.json`` are rewritten after every run,
  ``curves.png`` at the end (or with ``attnmoe compare --summary-only``). A run being trained
  holds ``<run>/.running`` (the pid), so two ``compare`` processes with different ``--seeds``
  lists (or the same) can work on one comparison without training the same run twice.
* :func:`summarize` reads the run directories and writes ``summary.json``, ``summary.md`` and
  ``curves.png``: per variant ``n`` (finished seeds), mean and sample standard deviation
  (``ddof=1``) of each final metric, parameter count, wall time, and Welch's unequal-variance
  t-test against ``softmax`` (``scipy.stats.ttest_ind(..., equal_var=False)``):
  ``t = (m_a - m_b) / sqrt(s_a^2/n_a + s_b^2/n_b)`` with Welch-Satterthwaite degrees of
  freedom, two-sided p-value; reported only when both groups have ``n >= 2``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from attnmoe.train import distributed
from attnmoe.train.checkpoint import checkpoint_path
from attnmoe.train.loop import METRICS_FILE, TrainConfig, is_finished, read_log, train

BASELINE = "softmax"
TRAIN_ONLY = ("seed", "device", "log_interval", "warmup_frac")
"""``TrainConfig`` fields that are not recipe fields (the loop's business only)."""


def run_one(
    task: str,
    dataset: str,
    attention: str,
    out_dir: Path,
    *,
    seed: int = 0,
    data_dir: Path | None = None,
    horizon: int | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Build ``task``/``dataset`` with ``attention`` and train it into ``out_dir``.

    Args:
        task: ``vision``, ``lm`` or ``forecast``.
        dataset: a data set name or file path (see ``attnmoe.tasks.build_task``).
        attention: attention variant name.
        out_dir: the run directory.
        seed: model initialisation, data order and dropout seed.
        data_dir: folder of the named data sets (else ``$ATTNMOE_DATA_DIR``).
        horizon: forecast horizon.
        overrides: recipe fields (``steps``, ``epochs``, ``batch_size``, ``lr``, ...) and model
            sizes (the keys of the task's ``recipe.model``); ``None`` values are ignored.
        device: ``cpu`` or ``cuda``.
        resume: continue from a checkpoint in ``out_dir``.
        progress: show a progress bar.

    Returns:
        The final metrics.
    """
    from attnmoe.tasks import build_task  # the tasks layer is only needed to run

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    built = build_task(task, dataset, data_dir=data_dir, attention=attention, seed=seed,
                       horizon=horizon, overrides=overrides)
    config = TrainConfig.from_recipe(built.recipe, seed=seed, device=device)
    run_info = {"task": task, "dataset": dataset, "attention": attention, "seed": seed,
                "horizon": horizon, "overrides": overrides, "model": dict(built.recipe.model),
                "task_info": getattr(built, "info", {})}
    return train(built, config, Path(out_dir), resume=resume, progress=progress, run_info=run_info)


def parse_seeds(seeds: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"5,7"`` -> ``[5, 7]`` (explicit list when a comma is present)."""
    text = seeds.strip()
    try:
        if "," in text:
            values = [int(s) for s in text.split(",") if s.strip()]
        else:
            values = list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds must be a count (e.g. 3) or a comma list (e.g. 0,1,2), "
                         f"got {seeds!r}") from None
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


def run_comparison(
    task: str,
    dataset: str,
    variants: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    *,
    data_dir: Path | None = None,
    horizon: int | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train every variant x seed (skipping finished runs) and summarise.

    Returns:
        The summary (what ``summary.json`` holds).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"task": task, "dataset": dataset, "variants": list(variants), "seeds": list(seeds),
            "horizon": horizon, "overrides": overrides or {}, "command": command}
    spec_path = out / "comparison.json"
    if spec_path.is_file():
        before = json.loads(spec_path.read_text())
        for key in ("task", "dataset", "horizon", "overrides"):
            if before.get(key) != spec[key]:
                raise ValueError(f"{out} holds a comparison with {key}={before.get(key)!r}, not "
                                 f"{spec[key]!r}; use another --out")
        spec["variants"] = list(dict.fromkeys([*before["variants"], *variants]))
        spec["seeds"] = sorted(set(before["seeds"]) | set(seeds))
        spec["command"] = before.get("command") or command  # the command that started it
    if distributed.info().is_main:
        spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    summary: dict[str, Any] = {}
    for seed in seeds:
        for variant in variants:
            where = run_dir(out, variant, seed)
            if is_finished(where) or not _claim(where):
                continue
            try:
                run_one(task, dataset, variant, where, seed=seed, data_dir=data_dir,
                        horizon=horizon, overrides=overrides, device=device, progress=progress,
                        resume=checkpoint_path(where) is not None)
            finally:
                _release(where)
            if distributed.info().is_main:
                summary = summarize(out, plot=False)
    if distributed.info().is_main:
        summary = summarize(out)
    return summary


LOCK_FILE = ".running"


def _claim(where: Path) -> bool:
    """Mark a run as taken by this process (``<run>/.running`` holds the pid), so that several
    ``attnmoe compare`` processes on one machine can share a comparison (e.g. one per seed list).
    A lock left by a process that no longer exists is taken over. Rank 0 decides under DDP."""
    if not distributed.info().is_main:
        return bool(distributed.broadcast_object(None))
    where.mkdir(parents=True, exist_ok=True)
    lock = where / LOCK_FILE
    claimed = False
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or "0"), 0)  # owner alive: leave the run to it
                break
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # stale lock
                continue
            except PermissionError:
                break
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            claimed = True
            break
    return bool(distributed.broadcast_object(claimed))


def _release(where: Path) -> None:
    if distributed.info().is_main:
        (where / LOCK_FILE).unlink(missing_ok=True)


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


def _finished_runs(out: Path, variant: str) -> list[tuple[int, dict[str, Any]]]:
    runs = []
    for path in sorted((out / variant).glob("seed*")):
        if (path / METRICS_FILE).is_file():
            runs.append((int(path.name[4:]), json.loads((path / METRICS_FILE).read_text())))
    return sorted(runs)


def _metric_names(runs: list[dict[str, Any]], primary: str) -> list[str]:
    names = {k for r in runs for k, v in r.items()
             if (k.startswith(("test_", "val_"))) and isinstance(v, (int, float))}
    return sorted(names, key=lambda k: (k != primary, k))


def summarize(out: Path, *, plot: bool = True) -> dict[str, Any]:
    """Aggregate the finished runs under ``out`` into ``summary.json``, ``summary.md`` and (with
    ``plot``) ``curves.png``."""
    out = Path(out)
    spec = json.loads((out / "comparison.json").read_text())
    primary = {"vision": "test_accuracy", "lm": "val_loss", "forecast": "test_mse"}.get(
        spec["task"], "val_loss")
    per_variant = {v: _finished_runs(out, v) for v in spec["variants"]}
    all_runs = [m for runs in per_variant.values() for _, m in runs]
    names = _metric_names(all_runs, primary)
    baseline = {name: {s: m[name] for s, m in per_variant.get(BASELINE, []) if name in m}
                for name in names}

    variants: dict[str, Any] = {}
    for variant, runs in per_variant.items():
        entry: dict[str, Any] = {"n": len(runs), "seeds": [s for s, _ in runs], "metrics": {},
                                 "runs": [{"seed": s, **m} for s, m in runs]}
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
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(_markdown(summary))
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
    missing = [f"{v}/seed{s}" for v, e in summary["variants"].items()
               for s in summary["seeds"] if s not in e["seeds"]]
    lines += ["", f"Not finished: {', '.join(missing) if missing else 'none'}.", "",
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
        for k, path in enumerate(sorted((out / variant).glob("seed*"))):
            records = read_log(path)
            config_path = path / "config.json"
            if config_path.is_file():
                monitor = json.loads(config_path.read_text()).get("monitor", monitor)
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
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
