"""The closed-form least-squares Hessian of this tree against another tree's, one run, interleaved.

    git worktree add /tmp/old_main 556b91c     # the version-2 engine
    python benchmarks/hessian_ab.py /tmp/old_main/src [--settings S1,S2] [--sizes 1000,10000] [--replicates 32]

Per setting and n: CPU seconds per fit of one ``LeastSquaresObjective.hessian`` call on 3/4 of
the replicates (a subset, as the trust region calls it), best of 5 interleaved rounds, old / new,
and the largest relative difference of the two Hessians.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from attnmoe.estimation.families.least_squares import objective as new_objective
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old_src", type=Path)
    p.add_argument("--settings", default="monomial-sigmoid-exact,monomial-linear-over,polynomial-sigmoid-over")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--replicates", type=int, default=32)
    a = p.parse_args()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("old_objective", a.old_src / "attnmoe/estimation/objective.py")
    old_objective = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_objective)
    R = a.replicates
    print(f"{'setting':>24} {'n':>6} {'old ms/fit':>10} {'new ms/fit':>10} {'speed-up':>8} {'max rel diff':>12}")
    for name in a.settings.split(","):
        s = get_setting(name)
        for n in (int(v) for v in a.sizes.split(",")):
            X, y = sample(s, n, list(range(R)))
            theta = near_truth_init(s.fit_layout, s.true_params(), list(range(R)), 0.3)
            idx = torch.randperm(R, generator=torch.Generator().manual_seed(0))[: 3 * R // 4].sort().values
            objs = {"old": old_objective.LeastSquaresObjective(s.fit_layout, X, y),
                    "new": new_objective.LeastSquaresObjective(s.fit_layout, X, y)}
            H = {k: o.hessian(theta[idx], idx)[2] for k, o in objs.items()}
            best = {k: float("inf") for k in objs}
            for _ in range(5):
                for k, o in objs.items():
                    t0 = time.process_time()
                    o.hessian(theta[idx], idx)
                    best[k] = min(best[k], (time.process_time() - t0) / len(idx))
            diff = float(((H["new"] - H["old"]).abs().max() / H["old"].abs().max()))
            print(f"{name:>24} {n:>6} {1e3 * best['old']:>10.3f} {1e3 * best['new']:>10.3f} "
                  f"{best['old'] / best['new']:>7.1f}x {diff:>12.1e}", flush=True)


if __name__ == "__main__":
    main()
