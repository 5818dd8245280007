"""The human-readable outputs of a study: ``summary.md`` (a table) and ``rates.png`` (a figure).

Both read the summary of :func:`~attnmoe.estimation.study.summary.summarize_records` and are
generic over loss names and over the convergence information records carry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnmoe.estimation.study.records import (
    FIGURE_FILE,
    SUMMARY_JSON,
    SUMMARY_MD,
    Record,
    atomic_write,
    jsonable,
)
from attnmoe.estimation.study.summary import loss_value

__all__ = ["StudySummary", "plot_rates", "summary_markdown", "write_outputs"]


@dataclass(frozen=True)
class StudySummary:
    """A study's summary as a preset makes it (what :func:`write_outputs` writes).

    Args:
        summary: the content of ``summary.json`` (JSON-ready after
            :func:`~attnmoe.estimation.study.records.jsonable`).
        markdown: the content of ``summary.md``, also what ``attnmoe rates`` prints.
        plotted: the losses ``rates.png`` draws (None: every loss).
        sort_keys: ``summary.json`` with its keys sorted (False: in the summary's own order, as
            the likelihood studies have always written it).
    """

    summary: dict[str, Any]
    markdown: str
    plotted: Callable[[str], bool] | None = None
    sort_keys: bool = True


def write_outputs(out: Path, summary: StudySummary, records: Sequence[Record]) -> None:
    """Write ``summary.json``, ``summary.md`` and ``rates.png`` (each atomically): the one
    writer of every study's summary files."""
    text = json.dumps(jsonable(summary.summary), indent=2, sort_keys=summary.sort_keys) + "\n"
    atomic_write(out / SUMMARY_JSON, text)
    atomic_write(out / SUMMARY_MD, summary.markdown)
    plot_rates(records, summary.summary, out / FIGURE_FILE, keep=summary.plotted)


def _fmt_slope(entry: dict[str, Any]) -> str:
    if entry.get("slope") is None:
        return "n/a"
    return f"{entry['slope']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"


def _fmt_convergence(info: dict[str, Any]) -> str:
    conv = info.get("converged_fraction")
    text = "n/a" if conv is None else f"{conv:.0%}"
    reasons = info.get("reasons")
    if reasons:
        text += " (" + ", ".join(f"{reason} {count}" for reason, count in reasons.items()) + ")"
    return text


#: columns of the Markdown tables, in this order, when present (summary.json has every loss)
TABLE_COLUMNS = ("D1", "D2", "L2", "atom", "gate", "expert", "copy", "split_mass", "width_copy",
                 "D1@near-truth", "copy@near-truth", "D1@displaced", "copy@displaced")


def table_columns(names: set[str]) -> list[str]:
    """The losses a Markdown table shows: :data:`TABLE_COLUMNS` present in ``names``, else all."""
    chosen = [k for k in TABLE_COLUMNS if k in names]
    return chosen or sorted(names)


def summary_markdown(summary: dict[str, Any]) -> str:
    """A Markdown table: one row per setting, convergence, one column per loss (slope [CI])."""
    settings = summary["settings"]
    loss_names = table_columns({k for s in settings.values() for k in s["losses"]})
    level = summary.get("level", 0.95)
    lines = [
        "# Convergence-rate study",
        "",
        f"Slope of log(loss) against log(n): {summary['method']}; {level:.0%} interval, "
        f"{summary['n_boot']} resamples. Converged: fraction of fits the optimiser reported "
        "converged (count per stopping reason when the records carry one). Columns: "
        + ", ".join(TABLE_COLUMNS) + " where present; every loss is in summary.json.",
        "",
        "| setting | n range | reps | converged | " + " | ".join(loss_names) + " |",
        "|---|---|---|---|" + "---|" * len(loss_names),
    ]
    for name, info in settings.items():
        first = next(iter(info["losses"].values()), {})
        cells = [_fmt_slope(info["losses"][k]) if k in info["losses"] else "" for k in loss_names]
        lines.append(
            f"| {name} | {first.get('n_min')}–{first.get('n_max')} | {first.get('replicates')} | "
            f"{_fmt_convergence(info)} | " + " | ".join(cells) + " |"
        )
    dropped = [
        f"{name} {loss}: {entry['dropped']}"
        for name, info in settings.items()
        for loss, entry in info["losses"].items()
        if entry.get("dropped")
    ]
    if dropped:
        lines += ["", "Records left out of a slope (missing, NaN or non-positive loss): " + "; ".join(dropped) + "."]
    sweep = summary.get("sweep", {}).get("settings", {})
    if sweep:
        names = table_columns({k for s in sweep.values() for k in s["losses"]})
        lines += [
            "",
            "## Noise sweep: slope of log(loss) against log(n / sigma^2)",
            "",
            f"{summary['sweep']['method']} (docs/rates.md, \"Noise sweeps\").",
            "",
            "| base setting | cells | fits | converged | " + " | ".join(names) + " |",
            "|---|---|---|---|" + "---|" * len(names),
        ]
        for name, info in sweep.items():
            cells = [_fmt_slope(info["losses"][k]) if k in info["losses"] else "" for k in names]
            lines.append(f"| {name} | {info['cells']} | {info['fits']} | "
                         f"{info['converged_fraction']:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bulk_limits(values: np.ndarray, spread: float = 30.0) -> tuple[float, float]:
    """y-limits of a log panel set by the bulk of the data: the 2nd and 98th percentiles widened
    by ``spread`` on each side (a few diverged fits at 1e157 no longer squash the rest)."""
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return 1e-300, 1e300
    lo, hi = np.percentile(np.log(values), [2, 98])
    return float(np.exp(lo) / spread), float(np.exp(hi) * spread)


def plot_rates(records: Sequence[Record], summary: dict[str, Any], path: Path,
               keep: Callable[[str], bool] | None = None) -> None:
    """Log-log loss against n, one panel per loss (those ``keep`` accepts; all by default), one
    colour per setting, fitted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = summary["settings"]
    loss_names = sorted({k for s in settings.values() for k in s["losses"] if keep is None or keep(k)})
    ncol = min(3, max(1, len(loss_names)))
    nrow = max(1, math.ceil(len(loss_names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4.2 * nrow), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax in axes.flat[len(loss_names) :]:
        ax.set_visible(False)
    for li, loss in enumerate(loss_names):
        ax = axes.flat[li]
        values = np.array([v for r in records if (v := loss_value(r["losses"].get(loss))) is not None])
        low, high = _bulk_limits(np.exp(values)) if values.size else (None, None)
        off = 0
        for si, (name, info) in enumerate(settings.items()):
            entry = info["losses"].get(loss)
            if not entry or not entry["mean_log_loss"]:
                continue
            c = colors(si % 10)
            points = [
                (int(r["n"]), math.exp(v))
                for r in records
                if str(r["setting"]) == name and (v := loss_value(r["losses"].get(loss))) is not None
            ]
            if points:
                xs, ys = np.array(points, dtype=float).T
                inside = (ys >= low) & (ys <= high) if low is not None else np.ones_like(ys, dtype=bool)
                ax.scatter(xs[inside], ys[inside], s=4, alpha=0.25, color=c, linewidths=0)
                if (~inside).any():  # fits far outside the bulk (diverged): marked on the frame
                    off += int((~inside).sum())
                    ax.scatter(xs[~inside], np.clip(ys[~inside], low, high), s=14, marker="x", color=c)
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
        if low is not None:
            ax.set_ylim(low, high)
        ax.set_title(f"{loss} (geometric mean per n, OLS slope)"
                     + (f"\n{off} fit(s) beyond the bulk of the data marked x on the frame" if off else ""),
                     fontsize=9 if off else None)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
