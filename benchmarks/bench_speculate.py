"""ms per fit of the trust-region fit: the original code against today's, interleaved in one run.

    python benchmarks/bench_speculate.py [--exact SETTINGS] [--over SETTINGS] [--sizes 1000,10000]
        [--replicates 64] [--over-replicates 16] [--assemblies torch,numba] [--repeats 3]
        [--clock cpu|wall] [--stat median|min] [--kinds original,plain,speculate]

Each (setting, n, assembly) fits the same data from the same starts with every path of
``original_code.py`` (``original``: the code before the speculation / setup / overhead work;
``plain``: today's with ``speculate=False``; ``speculate``: today's default), ``--repeats``
rounds, the order of the paths rotated each round; reported: the median (``--stat min``: the
least, what load from other jobs can only raise) seconds per fit of the
whole ``fit_least_squares`` call (objective setup included) and each path's time over the first
path's (``--kinds``; the original by default). Exact-specified settings as ``bench_fit.py --parts e`` runs them (near-truth 0.1, no
box, dtol 1e-10, R = ``--replicates``), over-specified ones as the paper preset (near-truth 0.1,
box 10, dtol 1e-8, max_iter 5000, n = 1000, R = ``--over-replicates``). Also: the objective's
setup alone (``LeastSquaresObjective(...)``), original against today's.

One torch thread; ``--clock cpu`` (default) is this process's CPU time, steadier than wall time
on a machine shared with other jobs. Compare paths only within one run. The torch path's times
on over-specified fits depend on glibc's dynamic mmap/trim thresholds (1.2-1.5x,
docs/estimation.md); ``main`` fixes them first as a study worker does
(:func:`attnmoe._malloc.fix_malloc_thresholds`, the values of ``MALLOC_MMAP_THRESHOLD_=67108864
MALLOC_TRIM_THRESHOLD_=268435456``; those variables, if set, are left to rule).

Since session 13 ``fit_least_squares(assembly="numba")`` runs the compiled per-replicate loop
(``numba_loop.py``), not ``trust_region``: numba cases (``--assemblies torch,numba``) compare
that loop with itself; the numbers for the batched numba path in docs/ were measured before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases import fit_kwargs, problem
from original_code import BASE, KINDS, fit_path, load_original

from attnmoe._malloc import fix_malloc_thresholds
from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.families.least_squares.truth import get_setting, sample


def _clock_of(name: str):
    return time.process_time if name == "cpu" else time.perf_counter


def bench_fit(name: str, n: int, R: int, assembly: str, kinds: list[str], original, repeats: int, clock,
              over: bool, stat=statistics.median) -> dict[str, float]:
    """Seconds per fit of each path, ``stat`` over the rounds (module docstring)."""
    kw = {**fit_kwargs(over), "tol": 0.0, "assembly": assembly}
    layout, X, y, x0 = problem(name, n, R, kw["bound"])
    fit_least_squares(layout, X[:2], y[:2], x0[:2], **{**kw, "max_iter": 2})  # compile, warm up
    times: dict[str, list[float]] = {k: [] for k in kinds}
    iters = 0.0
    for rep in range(repeats):
        for kind in kinds[rep % len(kinds):] + kinds[: rep % len(kinds)]:
            with fit_path(kind, original):
                t0 = clock()
                res = fit_least_squares(layout, X, y, x0, **kw)
                times[kind].append((clock() - t0) / R)
            iters = float(res.n_iter.double().mean())
    return {"iters": iters, **{k: stat(v) for k, v in times.items()}}


def bench_setup(setting, n: int, R: int, assembly: str, original, repeats: int, clock,
                stat=statistics.median) -> dict[str, float]:
    """Seconds per fit of building the objective (``stat`` over the rounds), original class
    against today's."""
    seeds = list(range(R))
    X, y = sample(setting, n, seeds)
    classes = {"original": original["objective"].LeastSquaresObjective, "today": LeastSquaresObjective}
    for cls in classes.values():
        cls(setting.fit_layout, X, y, assembly=assembly)  # warm up (numba: compile)
    times: dict[str, list[float]] = {k: [] for k in classes}
    for _ in range(repeats):
        for name, cls in classes.items():
            t0 = clock()
            cls(setting.fit_layout, X, y, assembly=assembly)
            times[name].append((clock() - t0) / R)
    return {k: stat(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exact", default="monomial-sigmoid-exact,polynomial-linear-exact")
    p.add_argument("--over", default="monomial-linear-over,polynomial-sigmoid-over")
    p.add_argument("--sizes", default="1000,10000", help="n of the exact-specified fits")
    p.add_argument("--over-n", type=int, default=1000)
    p.add_argument("--replicates", type=int, default=64)
    p.add_argument("--over-replicates", type=int, default=16)
    p.add_argument("--assemblies", default="torch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--ref", default=BASE)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--stat", choices=("median", "min"), default="median")
    p.add_argument("--no-setup", action="store_true", help="skip the objective-setup table")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    fix_malloc_thresholds()
    clock = _clock_of(a.clock)
    stat = {"median": statistics.median, "min": min}[a.stat]
    original = load_original(a.ref)
    kinds = [k for k in a.kinds.split(",") if k]
    sizes = [int(v) for v in a.sizes.split(",") if v]
    print(f"torch {torch.__version__}, 1 thread, {a.clock} clock, reference {a.ref}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {a.stat} of {a.repeats} interleaved rounds")
    head = " ".join(f"{k + ' ms':>13}" for k in kinds) + " " + " ".join(f"{k + '/' + kinds[0][:4]:>14}" for k in kinds[1:])
    print(f"{'setting':>24} {'n':>6} {'R':>3} {'assembly':>8} {'iters':>6} {head}")
    jobs = [(s, n, a.replicates, False) for s in a.exact.split(",") if s for n in sizes]
    jobs += [(s, a.over_n, a.over_replicates, True) for s in a.over.split(",") if s]
    for name, n, R, over in jobs:
        for assembly in a.assemblies.split(","):
            r = bench_fit(name, n, R, assembly, kinds, original, a.repeats, clock, over, stat)
            cells = " ".join(f"{1e3 * r[k]:>13.3f}" for k in kinds)
            ratios = " ".join(f"{r[k] / r[kinds[0]]:>14.3f}" for k in kinds[1:])
            print(f"{name:>24} {n:>6} {R:>3} {assembly:>8} {r['iters']:>6.1f} {cells} {ratios}", flush=True)
    if not a.no_setup:
        print(f"\nobjective setup (LeastSquaresObjective(...)), ms per fit, R={a.replicates}")
        for name in a.exact.split(","):
            for n in sizes:
                for assembly in a.assemblies.split(","):
                    r = bench_setup(get_setting(name), n, a.replicates, assembly, original, max(a.repeats, 5), clock,
                                    stat)
                    print(f"{name:>24} {n:>6} {assembly:>8} original {1e3 * r['original']:7.3f} today "
                          f"{1e3 * r['today']:7.3f} ratio {r['today'] / r['original']:6.3f}", flush=True)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
