"""Where the time of a batched least-squares fit goes: the Hessian kernel, the eigendecompositions
and the rest (the trust region's per-iteration tensor calls), and how long a batch runs with few
replicates left.

    python benchmarks/fit_profile.py [--exact SETTINGS] [--over SETTINGS] [--n 1000]
        [--replicates 64,256] [--over-replicates 40] [--assembly numba]

Exact-specified fits as ``bench_fit.py --parts e`` runs them (near-truth 0.1, no box, dtol 1e-10),
R = each of ``--replicates``; over-specified ones as the paper preset (near-truth 0.1, box 10,
dtol 1e-8, max_iter 5000), R = ``--over-replicates`` (the paper preset's seeds per cell). One
torch thread, process CPU time. Each fit runs once under cProfile (the split) after a warm-up;
the shares are of the profiled run. "kernel": the generated numba kernel (``assembly="numba"``)
or ``LeastSquaresObjective.hessian`` and its loss (torch); "eigh": ``torch.linalg.eigh``; "rest":
everything else. For over-specified fits also: the batch's loop iterations (its slowest
replicate's), the row-iterations (the sum over replicates) and how many loop iterations ran with
at most 1 / 2 / 4 replicates still active: each loop iteration costs the same fixed tensor-call
overhead whatever the number of rows.

Its output in docs/ (``docs/rates/solver/fit_profile_n1000.txt``) was measured on the batched
solver, before ``assembly="numba"`` ran the compiled loop of ``numba_loop.py`` (session 13);
with the loop a whole fit is one compiled call and the split reads "kernel 0 %, eigh 0 %".
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import EXACT, OVER, paper_fit

from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample


def _split(prof: cProfile.Profile, assembly: str) -> tuple[float, float, float]:
    """(kernel, eigh, total) seconds of a profiled run (tottime sums)."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    eigh = sum(v[2] for k, v in stats.items() if "linalg_eigh" in k[2])
    if assembly == "numba":
        kernel = sum(v[2] for k, v in stats.items() if k[2] == "kern")
    else:
        kernel = sum(v[3] for k, v in stats.items() if k[0].endswith("objective.py") and k[2] in ("hessian", "__call__"))
    return kernel, eigh, total


def _run(name: str, n: int, R: int, assembly: str, over: bool) -> str:
    setting = get_setting(name)
    seeds = list(range(R))
    X, y = sample(setting, n, seeds)
    layout = setting.fit_layout
    init = near_truth_init(layout, setting.true_params(), seeds)
    kw = dict(assembly=assembly, **paper_fit()) if over else dict(assembly=assembly, dtol=1e-10)
    fit_least_squares(layout, X[:2], y[:2], init[:2], **{**kw, "max_iter": 2})  # warm-up (compiles)
    t = time.process_time()
    res = fit_least_squares(layout, X, y, init, **kw)
    plain = time.process_time() - t
    prof = cProfile.Profile()
    prof.enable()
    fit_least_squares(layout, X, y, init, **kw)
    prof.disable()
    kernel, eigh, total = _split(prof, assembly)
    it = res.n_iter.sort(descending=True).values
    line = (f"{name:>24} n={n} R={R:<4} {plain / R * 1e3:9.3f} ms/fit  kernel {kernel / total:5.1%}  eigh "
            f"{eigh / total:5.1%}  rest {1 - (kernel + eigh) / total:5.1%}  converged {res.converged.float().mean():.3f}")
    if over:
        q = it.float()
        line += (f"\n{'':>24} loop iterations {it[0].item()}, row-iterations {it.sum().item()}, loop iterations "
                 f"with <= 1/2/4 active: {(it[0] - it[1]).item()}/{(it[0] - it[min(2, R - 1)]).item()}/"
                 f"{(it[0] - it[min(4, R - 1)]).item()}; n_iter median/90%/max {q.quantile(0.5):.0f}/"
                 f"{q.quantile(0.9):.0f}/{it[0].item()}")
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exact", default=EXACT)
    p.add_argument("--over", default=OVER)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--replicates", default="64,256")
    p.add_argument("--over-replicates", type=int, default=40)
    p.add_argument("--assembly", choices=("torch", "numba"), default="numba")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, CPU clock, assembly {a.assembly}, load {os.getloadavg()[0]:.2f}")
    for name in filter(None, a.exact.split(",")):
        for R in (int(r) for r in a.replicates.split(",")):
            print(_run(name, a.n, R, a.assembly, over=False), flush=True)
    for name in filter(None, a.over.split(",")):
        print(_run(name, a.n, a.over_replicates, a.assembly, over=True), flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
