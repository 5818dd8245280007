"""Over-specified fits of the paper preset (max_iter 5000, box 10, near-truth:0.1) at one n: per
setting, wall time, converged count, iterations and stopping reasons; records to a JSON file.

    python benchmarks/fit_overspecified.py N SEEDS OUT.json [SETTINGS] [MAX_ITER]
"""
import sys, time, json, torch
torch.set_num_threads(1)
from attnmoe.estimation.families.least_squares.truth import get_setting
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.families.least_squares.experiment import fit_and_score
n = int(sys.argv[1]); seeds = list(range(int(sys.argv[2]))); out = sys.argv[3]
settings = sys.argv[4].split(",") if len(sys.argv) > 4 else ["monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over", "polynomial-sigmoid-over"]
maxit = int(sys.argv[5]) if len(sys.argv) > 5 else 5000
o = FitOptions(max_iter=maxit, n_test=2000, bound=10.0)
res = []
for name in settings:
    t = time.time()
    recs = fit_and_score(get_setting(name), n, seeds, o)
    dt = time.time() - t
    its = [r["iterations"] for r in recs]
    print(name, n, "wall %.1fs" % dt, "conv %d/%d" % (sum(r["converged"] for r in recs), len(recs)),
          "iters", its, "reasons", [r["reason"][:3] for r in recs], flush=True)
    res.append({"setting": name, "n": n, "wall": dt, "records": recs})
json.dump(res, open(out, "w"))
