"""Project the `paper` preset's over-specified run time from measured iterations and costs.

Reads ``docs/rates/solver``: the records of ``fit_overspecified.py`` (iterations per fit at
n = 10^3, 8 seeds, before/after; at n = 10^4, 4 seeds, after) and ``cost_per_iteration.txt``
(CPU s per iteration per fit at n = 10^3, 10^4, 10^5). Projection per setting and n of the
paper grid (9 sizes, 40 seeds): mean iterations (the n = 10^3 mean for n < 10^4, the n = 10^4
mean for n >= 10^4 -- an assumption: n > 10^4 was not run) x cost per iteration (log-log
interpolated in n) x 40, summed; divided by 2 for two cores.

    python benchmarks/project_paper.py [COSTS]   # COSTS: default docs/rates/solver/cost_per_iteration.txt

With ``--records RECORDS`` (the finished run's records, e.g. docs/rates/paper-over-v3/records.jsonl.gz)
the iterations are every record's own instead of the traced means, and each assembly found in
COSTS (lines tagged ``assembly=NAME`` by ``cost_per_iteration.py --assemblies``) is projected:
sum over records of iterations x cost per iteration (log-log interpolated in n), beside the
records' own CPU seconds (their ``seconds``, a block's time shared by its fits).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from attnmoe.estimation.study.presets.least_squares import LEAST_SQUARES_PRESETS as PRESETS

ROOT = Path(__file__).resolve().parent.parent / "docs" / "rates" / "solver"
OVER = ("monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over", "polynomial-sigmoid-over")


def iterations(path: Path, setting: str) -> list[int]:
    for block in json.loads(path.read_text()):
        if block["setting"] == setting:
            return [r["iterations"] for r in block["records"]]
    raise KeyError(setting)


def from_records(costs: Path, records: Path) -> None:
    import gzip

    cost: dict[tuple[str, str], dict[int, float]] = {}
    for line in costs.read_text().splitlines():
        m = re.match(r"(\S+) n=(\d+) R=\d+(?: assembly=(\S+))? .*per fit=([\d.e-]+)", line)
        if m:
            cost.setdefault((m[3] or "torch", m[1]), {})[int(m[2])] = float(m[4])
    opener = gzip.open if records.suffix == ".gz" else open
    with opener(records, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    print(f"{len(rows)} records, their own CPU seconds: {sum(r['seconds'] for r in rows) / 3600:.2f} CPU h")
    for assembly in sorted({a for a, _ in cost}):
        total = 0.0
        for r in rows:
            c = cost[(assembly, r["setting"])]
            ns = np.array(sorted(c), dtype=float)
            cs = np.array([c[int(v)] for v in ns])
            total += r["iterations"] * float(np.exp(np.interp(np.log(r["n"]), np.log(ns), np.log(cs))))
        print(f"assembly {assembly}: sum of iterations x cost per iteration = {total / 3600:.2f} CPU h = "
              f"{total / 7200:.2f} h on 2 cores")


def main() -> None:
    if "--records" in sys.argv:
        i = sys.argv.index("--records")
        rest = sys.argv[1:i] + sys.argv[i + 2 :]
        from_records(Path(rest[0]) if rest else ROOT / "cost_per_iteration.txt", Path(sys.argv[i + 1]))
        return
    cost: dict[str, dict[int, float]] = {}
    costs = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "cost_per_iteration.txt"
    for line in costs.read_text().splitlines():
        m = re.match(r"(\S+) n=(\d+) .*per fit=([\d.e-]+)", line)
        if m:
            cost.setdefault(m[1], {})[int(m[2])] = float(m[3])
    grid, seeds = PRESETS["paper"].n_grid, PRESETS["paper"].replicates
    total = {"before": 0.0, "after": 0.0}
    for s in OVER:
        ns = np.array(sorted(cost[s]), dtype=float)
        cs = np.array([cost[s][int(v)] for v in ns])
        c = lambda n: float(np.exp(np.interp(np.log(n), np.log(ns), np.log(cs))))  # noqa: E731
        it_lo = {k: iterations(ROOT / f"{k}_1000_{s}.json", s) for k in ("before", "after")}
        it_hi = iterations(ROOT / "after_10000.json", s)
        row = []
        for k in ("before", "after"):
            # 'before' at n >= 1e4: its n = 1e3 ratio to 'after' carried over (not measured)
            hi = np.mean(it_hi) * (np.mean(it_lo["before"]) / np.mean(it_lo["after"]) if k == "before" else 1.0)
            secs = sum(seeds * (np.mean(it_lo[k]) if n < 10_000 else hi) * c(n) for n in grid)
            total[k] += secs
            row.append(f"{k}: mean it {np.mean(it_lo[k]):.0f} (n=1e3) / {hi:.0f} (n>=1e4), {secs / 3600:.2f} CPU h")
        print(f"{s}: " + "; ".join(row))
    for k, v in total.items():
        print(f"{k}: all 4 over-specified settings x 9 n x {seeds} seeds: {v / 3600:.1f} CPU h = "
              f"{v / 7200:.1f} h on 2 cores (target: the WHOLE paper preset in 0.75 h)")


if __name__ == "__main__":
    main()
