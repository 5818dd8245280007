"""Numbers of the result pages recomputed from the committed records (issue 22, items 5 and 6).

    python -m attnmoe.claims.checks          # prints each number beside the page line it corrects

Each function reads the records (or summaries) and returns the number the page should state;
the result pages quote this command beside the corrected numbers.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from attnmoe.claims.ledger import load_records
from attnmoe.claims.stats import per_seed_slopes, t_interval

__all__ = ["ci_width_ratios", "hmoe_spread_range", "identifiability_converged", "smallest_holm",
           "sweep_local_slopes"]


def ci_width_ratios(docs: Path) -> dict[str, tuple[float, float]]:
    """paper-40 on its 7 shared sizes: seed-bootstrap CI width / within-n CI width (the committed
    ``summary.json``), min and max over D1, D2, L2, per specification."""
    from attnmoe.estimation.study import summarize_records

    recs = [r for r in load_records(docs / "rates/paper-40/records.jsonl.gz") if r["n"] <= 31623]
    new = summarize_records(recs)["settings"]
    old = json.loads((docs / "rates/paper-40/summary.json").read_text())["settings"]
    out: dict[str, list[float]] = defaultdict(list)
    for s in new:
        for loss in ("D1", "D2", "L2"):
            o, n = old[s]["losses"][loss], new[s]["losses"][loss]
            out[s.rsplit("-", 1)[1]].append((n["ci_high"] - n["ci_low"]) / (o["ci_high"] - o["ci_low"]))
    return {k: (min(v), max(v)) for k, v in out.items()}


def identifiability_converged(docs: Path) -> tuple[int, int]:
    """Converged records of the committed identifiability preset, and all of them."""
    recs = load_records(docs / "rates/identifiability/records.jsonl")
    return sum(bool(r["converged"]) for r in recs), len(recs)


def hmoe_spread_range(docs: Path, loss: str = "expert_spread") -> tuple[float, float]:
    """Smallest and largest geometric mean over seeds of ``loss``, per (over-specified position, n)."""
    groups: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in load_records(docs / "rates/hmoe-full/records.jsonl"):
        v = r["losses"].get(loss)
        if isinstance(v, (int, float)) and v > 0:
            groups[(r["setting"], r["n"])].append(math.log(v))
    gm = [math.exp(float(np.mean(v))) for v in groups.values()]
    return min(gm), max(gm)


def smallest_holm(docs: Path) -> tuple[float, str, str]:
    """The smallest Holm-adjusted paired p of any committed 3-seed comparison, and where."""
    best = []
    for path in sorted((docs / "results").glob("*/summary.json")):
        d = json.loads(path.read_text())
        for v, vd in d["variants"].items():
            pv = vd.get("metrics", {}).get(d["primary_metric"], {}).get("paired_vs_softmax")
            if pv and pv.get("p_holm") is not None and pv.get("n_pairs") == 3:  # 3-seed comparisons only
                best.append((pv["p_holm"], path.parent.name, v))
    return min(best)


def sweep_local_slopes(docs: Path, setting: str, loss: str = "expert") -> tuple[list[float], tuple[float, float, float]]:
    """Slopes of the mean log loss between successive noise levels of the n = 1000 sweep, and the
    per-seed slope's mean and t-interval without the last (σ = 1e-5) cell."""
    cells: dict[float, list[float]] = defaultdict(list)
    points: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in load_records(docs / "rates/sweep-n1000/near-truth.jsonl"):
        name = str(r["setting"])
        if not name.startswith(setting + "-sd"):
            continue
        x = math.log(r["n"] / float(name.rsplit("-sd", 1)[1]) ** 2)
        y = math.log(r["losses"][loss])
        cells[x].append(y)
        points[int(r["seed"])].append((x, y))
    xs = sorted(cells)
    means = [float(np.mean(cells[x])) for x in xs]
    local = [(means[i + 1] - means[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
    iv = t_interval(list(per_seed_slopes({s: [p for p in v if p[0] < xs[-1]] for s, v in points.items()}).values()))
    return local, (iv.mean, iv.low, iv.high)


def main(docs: Path = Path("docs")) -> None:  # pragma: no cover - a printout
    for spec, (lo, hi) in sorted(ci_width_ratios(docs).items()):
        print(f"rates.md 'Interval method': seed/within-n CI width, {spec} (D1, D2, L2): {lo:.2f}-{hi:.2f}x")
    conv, total = identifiability_converged(docs)
    print(f"rates.md identifiability preset: {conv} of {total} records converged")
    for loss in ("expert_spread", "width_expert_spread"):
        lo, hi = hmoe_spread_range(docs, loss)
        print(f"hmoe.md {loss}: geometric mean per (position, n) {lo:.2f}-{hi:.2f}")
    p, where, variant = smallest_holm(docs)
    print(f"hmoe.md smallest 3-seed Holm p: {p:.4f} ({where}, {variant})")
    for s in ("monomial-sigmoid-over", "polynomial-sigmoid-over"):
        local, (m, lo, hi) = sweep_local_slopes(docs, s)
        print(f"rates.md sweep {s} expert: local slopes {', '.join(f'{x:+.2f}' for x in local)}; "
              f"without sigma = 1e-5: {m:+.2f} [{lo:+.2f}, {hi:+.2f}] (t-interval, 8 seeds)")


if __name__ == "__main__":  # pragma: no cover
    main()
