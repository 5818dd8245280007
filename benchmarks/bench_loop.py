"""The compiled per-replicate trust region against the batched one, in one run.

    python benchmarks/bench_loop.py [--exact SETTINGS] [--over SETTINGS] [--n 1000]
        [--replicates 64] [--over-replicates 16] [--repeats 3]

Three paths fit the same data from the same starts: ``loop`` (``fit_least_squares(assembly=
"numba")``: :mod:`attnmoe.estimation.families.least_squares.numba_loop`), ``batched numba``
(:func:`~attnmoe.estimation.solvers.newton.trust_region` on the numba assembly's Hessian, what
``assembly="numba"`` ran before session 13, with its speculation share 0) and ``batched torch``
(``fit_least_squares(assembly="torch")``, the default). Exact-specified fits as ``bench_fit.py
--parts e`` runs them (near-truth 0.1, no box, dtol 1e-10, R = ``--replicates``); over-specified
ones with the paper preset's options (near-truth 0.1, box 10, dtol 1e-8, max_iter 5000, R =
``--over-replicates``). Reported: CPU ms per fit (the least of ``--repeats`` rounds, the paths'
order rotated each round; one torch thread), the ratios to the loop, mean iterations, and the
loop's agreement with batched torch: replicates with the same iteration count and stop reason,
the largest relative loss difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import EXACT, OVER, paper_fit

from attnmoe.estimation.families.least_squares import fit as fit_module
from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample
from attnmoe.estimation.solvers.newton import trust_region

PATHS = ("loop", "batched numba", "batched torch")


def _batched_numba(layout, X, y, init, bound, dtol, max_iter):
    """trust_region on the numba assembly, as fit_least_squares ran it before the loop."""
    base = fit_module.LeastSquaresObjective(layout, X, y, assembly="numba")
    box = None if bound is None else fit_module._Box(bound)
    obj = base if box is None else box.wrap(base)
    x0 = init if box is None else box.to_free(init)
    res = trust_region(obj.hessian, obj, x0, max_iter=max_iter, gtol=0.0, dtol=dtol / X.shape[1],
                       speculate=True, speculate_share=0.0)
    return res.loss, res.n_iter, res.reasons()


def _run(path, layout, X, y, init, bound, dtol, max_iter):
    if path == "batched numba":
        return _batched_numba(layout, X, y, init, bound, dtol, max_iter)
    fit = fit_least_squares(layout, X, y, init, assembly="numba" if path == "loop" else "torch", bound=bound,
                            dtol=dtol, max_iter=max_iter)
    return fit.loss, fit.n_iter, fit.reason


def _case(name: str, n: int, R: int, over: bool, repeats: int) -> None:
    s = get_setting(name)
    seeds = list(range(R))
    X, y = sample(s, n, seeds)
    layout = s.fit_layout
    init = near_truth_init(layout, s.true_params(), seeds, 0.1)
    paper = paper_fit()
    bound, dtol, max_iter = (paper["bound"], paper["dtol"], paper["max_iter"]) if over else (None, 1e-10, 500)
    for path in PATHS:  # warm-up: compiles the kernel and the loop
        _run(path, layout, X[:1], y[:1], init[:1], bound, dtol, 2)
    best = {p: float("inf") for p in PATHS}
    out = {}
    for rnd in range(repeats):
        for path in PATHS[rnd % 3:] + PATHS[: rnd % 3]:
            t = time.process_time()
            out[path] = _run(path, layout, X, y, init, bound, dtol, max_iter)
            best[path] = min(best[path], (time.process_time() - t) / R * 1e3)
    loop, ref = out["loop"], out["batched torch"]
    same = sum(int(a == b and c == d) for a, b, c, d in zip(loop[1].tolist(), ref[1].tolist(), loop[2], ref[2]))
    dloss = float(((loop[0] - ref[0]).abs() / ref[0]).max())
    cells = "  ".join(f"{best[p]:9.3f} ({best[p] / best['loop']:4.1f}x)" for p in PATHS)
    print(f"{name:>24} n={n:<6} R={R:<4} {cells}   it {float(loop[1].float().mean()):7.1f}  same it+reason "
          f"{same}/{R}  max rel dloss {dloss:.1e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exact", default=EXACT)
    p.add_argument("--over", default=OVER)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--replicates", type=int, default=64)
    p.add_argument("--over-replicates", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU clock, least of {a.repeats}; load {os.getloadavg()[0]:.2f}")
    print(f"{'':>24} {'':<8} {'':<6} " + "  ".join(f"{p + ' ms/fit':>16}" for p in PATHS))
    for name in filter(None, a.exact.split(",")):
        _case(name, a.n, a.replicates, False, a.repeats)
    for name in filter(None, a.over.split(",")):
        _case(name, a.n, a.over_replicates, True, a.repeats)
    print(f"ratios: each path's time over the loop's; same it+reason and dloss: the loop against batched "
          f"torch; load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
