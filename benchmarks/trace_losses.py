"""Loss histories of over-specified trust-region fits, for choosing a stop rule: per fit, the
training loss after every accepted step and the iteration it was accepted at.

    python benchmarks/trace_losses.py OUT.json --n 1000 --seeds 0:16 [--settings ...] [--max-iter 5000]

Same options as the paper preset (box 10, near-truth:0.1, dtol 1e-8); the fits are batched as in
a study (one program per setting). Histories come from wrapping the Hessian callback that the
solver calls at every accepted iterate.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.families.least_squares.truth import get_setting, sample

OVER = ("monomial-linear-over", "monomial-sigmoid-over", "polynomial-linear-over", "polynomial-sigmoid-over")


def trace(name: str, n: int, seeds: list[int], max_iter: int) -> list[dict]:
    s = get_setting(name)
    X, y = sample(s, n, seeds)
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.1)
    history: list[list[tuple[int, float]]] = [[] for _ in seeds]
    calls = torch.zeros(len(seeds), dtype=torch.long)  # objective evaluations per replicate so far
    original_hessian, original_call = LeastSquaresObjective.hessian, LeastSquaresObjective.__call__

    def hessian(self, flat, idx=None):
        f, g, H = original_hessian(self, flat, idx)
        rows = range(len(seeds)) if idx is None else idx.tolist()
        for j, r in enumerate(rows):
            history[r].append((int(calls[r]), float(f[j])))
        return f, g, H

    def call(self, flat, idx=None):
        rows = torch.arange(len(seeds)) if idx is None else idx
        calls[rows] += 1
        return original_call(self, flat, idx)

    LeastSquaresObjective.hessian, LeastSquaresObjective.__call__ = hessian, call
    try:
        t0 = time.perf_counter()
        res = fit_least_squares(s.fit_layout, X, y, x0, max_iter=max_iter, bound=10.0, dtol=1e-8)
        seconds = time.perf_counter() - t0
    finally:
        LeastSquaresObjective.hessian, LeastSquaresObjective.__call__ = original_hessian, original_call
    return [{"setting": name, "n": n, "seed": sd, "sigma2": s.noise_std**2, "iterations": int(res.n_iter[r]),
             "reason": res.reason[r], "final": float(res.loss[r]), "history": history[r],
             "seconds_batch": seconds} for r, sd in enumerate(seeds)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", default="0:16")
    p.add_argument("--settings", default=",".join(OVER))
    p.add_argument("--max-iter", type=int, default=5000)
    a = p.parse_args()
    torch.set_num_threads(1)
    lo, hi = (int(v) for v in a.seeds.split(":"))
    rows = []
    for name in a.settings.split(","):
        rows += trace(name, a.n, list(range(lo, hi)), a.max_iter)
        print(name, a.n, "iterations", [r["iterations"] for r in rows[-(hi - lo):]], flush=True)
    with open(a.out, "w") as fh:
        json.dump(rows, fh)


if __name__ == "__main__":
    main()
