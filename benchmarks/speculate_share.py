"""Whole trust-region fits with the numba assembly at three speculation shares, interleaved, best
of three (CPU clock, one thread, R = 64, near-truth:0.1 starts as bench_fit.py part (e)):

    NUMBA_NUM_THREADS=1 python benchmarks/speculate_share.py monomial-sigmoid-exact,monomial-linear-over

The share is ``trust_region``'s ``speculate_share`` (an iteration evaluates the Hessian at the trial
points when at least that share of its steps are likely accepted); every share gives the same
fits bit for bit, only the time differs.
Historical (session 12): since session 13 ``fit_least_squares(assembly="numba")`` runs the
compiled loop of ``numba_loop.py``, which takes ``speculate_share`` and ignores it; this script's
output in docs/ was measured on the batched solver.
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_fit  # noqa: E402

from attnmoe.estimation.families.least_squares.fit import fit_least_squares  # noqa: E402
from attnmoe.estimation.families.least_squares.truth import get_setting  # noqa: E402

SHARES = (0.5, 0.2, 0.0)


def main() -> None:
    torch.set_num_threads(1)
    names = (sys.argv[1] if len(sys.argv) > 1 else "monomial-sigmoid-exact").split(",")
    for name in names:
        for n in (1000, 10000):
            R = 64
            layout, X, y, init = bench_fit._data(get_setting(name), n, R)
            kw = {"method": "trust-region", "max_iter": 500, "tol": 0.0, "dtol": 1e-10, "assembly": "numba"}
            fit_least_squares(layout, X[:2], y[:2], init[:2], **{**kw, "max_iter": 2})  # compile
            best: dict[float, float] = {}
            for _ in range(3):
                for share in SHARES:
                    t0 = time.process_time()
                    fit_least_squares(layout, X, y, init, speculate_share=share, **kw)
                    best[share] = min(best.get(share, float("inf")), time.process_time() - t0)
            print(f"{name} n={n}: " + "  ".join(f"share {s}: {1e3 * t / R:.3f} ms/fit" for s, t in best.items()),
                  flush=True)


if __name__ == "__main__":
    main()
