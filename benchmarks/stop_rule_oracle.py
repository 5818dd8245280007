"""How much a loss-based stop rule could save on traced over-specified fits (benchmarks/trace_losses.py):
the oracle (first iteration within 0.01 sigma^2/n of the final loss) and windowed rules
(stop when the loss fell by <= eps sigma^2/n over the last W iterations).

    python benchmarks/stop_rule_oracle.py TRACE.json
"""
import json, numpy as np, sys
import gzip
rows = json.load(gzip.open(sys.argv[1]) if sys.argv[1].endswith(".gz") else open(sys.argv[1]))
def at(h, t):  # loss at iteration t (last accepted with iteration <= t)
    best = h[0][1]
    for it, f in h:
        if it <= t: best = f
        else: break
    return best
tot_it = sum(r["iterations"] for r in rows)
print("fits", len(rows), "total iterations", tot_it)
# oracle: first iteration with loss - final <= 0.01 sigma2/n
oracle = []
for r in rows:
    u = r["sigma2"] / r["n"]; fin = r["final"]
    t = next(it for it, f in r["history"] if f - fin <= 0.01 * u)
    oracle.append(t)
print("oracle iterations total", sum(oracle), f"({sum(oracle)/tot_it:.1%})")
def rule(r, W, eps):
    u = r["sigma2"] / r["n"]; h = r["history"]
    for it, f in h:
        if it >= W and at(h, it - W) - f <= eps * u:
            return it, f
    return r["iterations"], r["final"]
for W in (20, 50, 100, 200):
    for eps in (1e-4, 1e-3, 1e-2):
        stops = [rule(r, W, eps) for r in rows]
        gaps = [(f - r["final"]) / (r["sigma2"] / r["n"]) for (it, f), r in zip(stops, rows)]
        its = sum(it for it, f in stops)
        print(f"W={W:4d} eps={eps:.0e}: iterations {its} ({its/tot_it:.1%}), max gap {max(gaps):.4f} sigma2/n, over 0.01: {sum(g > 0.01 for g in gaps)}")
