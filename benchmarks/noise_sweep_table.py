"""The slope table of docs/rates.md, "The answer", from the committed sweep records.

    python benchmarks/noise_sweep_table.py

Slopes of the mean log loss on log(n / sigma^2) with seed-bootstrap CIs
(:func:`attnmoe.estimation.study.sweep_summary`), and the median split-mass share per sigma.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnmoe.estimation.study import sweep_summary

ROOT = Path(__file__).resolve().parents[1] / "docs" / "rates" / "sweep-n1000"
COLUMNS = ("D1", "D2", "L2", "copy", "expert", "gate")


def _fmt(entry: dict | None) -> str:
    if not entry:
        return "n/a"
    return f"{entry['slope']:+.2f} [{entry['ci_low']:+.2f}, {entry['ci_high']:+.2f}]"


def main() -> None:
    for file, label in (("near-truth.jsonl", "near-truth:0.1"), ("displaced.jsonl", "displaced:0.3")):
        recs = [json.loads(line) for line in (ROOT / file).read_text().splitlines() if line.strip()]
        summary = sweep_summary(recs)
        print(f"\n### start {label}: {len(recs)} fits")
        print("| setting | cells | converged | " + " | ".join(COLUMNS) + " | split_mass (median per σ) |")
        print("|---|---|---|" + "---|" * len(COLUMNS) + "---|")
        for name, info in summary["settings"].items():
            shares = []
            for sd in sorted({float(r["noise"]) for r in recs}, reverse=True):
                v = [r["losses"]["split_mass"] for r in recs if r["setting"] == f"{name}-sd{sd:g}"]
                if v:
                    shares.append(f"{np.median(v):.2f}")
            cells = " | ".join(_fmt(info["losses"].get(k)) for k in COLUMNS)
            print(f"| {name} | {info['cells']} | {info['converged_fraction']:.0%} | {cells} | {' / '.join(shares)} |")


if __name__ == "__main__":
    main()
