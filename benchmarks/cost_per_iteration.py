"""CPU seconds per trust-region iteration per fit, by setting and n (one thread, R fits batched).

Runs ``max_iter`` iterations of the default solver (paper options: box 10, near-truth:0.1) on R
replicates and divides the process CPU time by (R x mean iterations performed). Used to project
the `paper` preset's run time from measured iteration counts (docs/rates.md).

    python benchmarks/cost_per_iteration.py --sizes 1000,10000,100000 --replicates 8 --iters 10

``--assemblies torch,numba`` times each (setting, n) with each Hessian assembly back to back (same
data and starts; the numba kernels are compiled by a warm-up fit first), one line each.
"""

from __future__ import annotations

import argparse
import time

import torch

from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample

OVER = ("monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over", "polynomial-sigmoid-over")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(OVER))
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--assemblies", default="torch", help="comma list of torch, numba")
    a = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(a.replicates))
    for name in a.settings.split(","):
        st = get_setting(name)
        for n in (int(v) for v in a.sizes.split(",")):
            X, y = sample(st, n, seeds)
            x0 = near_truth_init(st.fit_layout, st.true_params(), seeds, 0.1).clamp(-9.9, 9.9)
            for assembly in a.assemblies.split(","):
                if assembly != "torch":  # compile outside the clock
                    fit_least_squares(st.fit_layout, X[:1], y[:1], x0[:1], max_iter=1, bound=10.0, assembly=assembly)
                t = time.process_time()
                res = fit_least_squares(st.fit_layout, X, y, x0, max_iter=a.iters, bound=10.0, assembly=assembly)
                cpu = time.process_time() - t
                its = float(res.n_iter.double().mean())
                tag = "" if assembly == "torch" else f" assembly={assembly}"
                print(f"{name} n={n} R={a.replicates}{tag} iterations/fit={its:.1f} "
                      f"cpu s per iteration per fit={cpu / (a.replicates * its):.4g}", flush=True)


if __name__ == "__main__":
    main()
