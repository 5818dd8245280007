"""Compare two records.jsonl files per (setting, n, seed): convergence flags, iterations, and the
largest relative difference of every loss.  python3 benchmarks/compare_records.py OLD NEW
(either may be a records.jsonl.gz)"""
import gzip, json, sys, math
def load(p): return {(r["setting"], r["n"], r["seed"]): r
                     for r in map(json.loads, (gzip.open(p, "rt") if p.endswith(".gz") else open(p)))}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a.keys() == b.keys()
worst = {}; moved1 = moved10 = 0; conv_diff = 0; iters = []
for k in a:
    ra, rb = a[k], b[k]
    conv_diff += ra["converged"] != rb["converged"]
    iters.append(rb["iterations"] - ra["iterations"])
    m = 0
    for key, v in ra["losses"].items():
        w = rb["losses"].get(key)
        if v is None or w is None: continue
        rel = abs(v - w) / max(abs(v), 1e-300)
        worst[key] = max(worst.get(key, 0), rel); m = max(m, rel)
    moved1 += m > 0.01; moved10 += m > 0.10
print(f"{len(a)} records; converged flag differs in {conv_diff}; iterations new-old: min {min(iters)} max {max(iters)} mean {sum(iters)/len(iters):+.2f}")
print("max relative difference per loss:", {k: f"{v:.1e}" for k, v in worst.items()})
print(f"records whose largest loss moved > 1%: {moved1}, > 10%: {moved10}")
