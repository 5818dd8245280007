"""The numba assembly (``assembly="numba"``) against the torch path, as ratios measured in one run.

    NUMBA_NUM_THREADS=1 python benchmarks/bench_assembly.py [--settings monomial-sigmoid-exact,polynomial-linear-exact]
        [--sizes 1000,10000] [--replicates 64] [--repeats 7] [--fit-iters 500]

(1) One loss + gradient + Hessian evaluation (``LeastSquaresObjective.hessian``) of R replicates,
    torch vs numba, interleaved with a 1024^3 float64 GEMM (one thread) in every round; best of
    ``--repeats``. FLOPs per evaluation as in ``bench_fit.py`` part (h): 2 n_pad (E + kv F + 2 k F)
    per replicate (E: the (pair, product) entries each path forms, LeastSquaresObjective.matmul_flops);
    reported as ms per fit, GFLOP/s and % of the GEMM's rate. The kernel's compile
    time (first call) and its largest relative difference to the torch path are printed too.
(2) One whole fit, ``fit_least_squares`` (trust region, near-truth:0.1 start, exact-specified),
    torch vs numba on the same data and starts (after a warm-up fit of each), with the
    iterations and the largest relative difference of the final losses.
One torch thread; the machine's load is printed at the start and the end (compare ratios).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import torch  # noqa: E402

from attnmoe.estimation.families.least_squares.fit import fit_least_squares  # noqa: E402
from attnmoe.estimation.families.least_squares.init import near_truth_init  # noqa: E402
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective  # noqa: E402
from attnmoe.estimation.families.least_squares.truth import get_setting, sample  # noqa: E402


def _load() -> list[str]:
    with open("/proc/loadavg") as fh:
        return fh.read().split()[:3]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def assembly(name: str, n: int, R: int, repeats: int) -> None:
    """Part (1) for one setting and n."""
    s = get_setting(name)
    seeds = list(range(R))
    X, y = sample(s, n, seeds)
    flat = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.3)
    ref = LeastSquaresObjective(s.fit_layout, X, y)
    t0 = time.perf_counter()
    fast = LeastSquaresObjective(s.fit_layout, X, y, assembly="numba")
    out = fast.hessian(flat)
    fast(flat)
    first = time.perf_counter() - t0
    err = max(_rel(a, b) for a, b in zip(out, ref.hessian(flat)))
    A = torch.randn(1024, 1024, dtype=torch.float64)
    fns = {"torch": lambda: ref.hessian(flat), "numba": lambda: fast.hessian(flat), "gemm": lambda: A @ A}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t)
    xi = ref.xi
    Q, U, F = ref.qi.numel(), ref.U, xi.shape[-1]
    flops = {"torch": ref.matmul_flops(R), "numba": fast.matmul_flops(R)}  # numba forms fewer entries
    gemm = 2 * 1024**3 / best["gemm"] / 1e9
    print(f"{name} n={n} R={R} Q={Q} U={U} F={F}: GEMM {gemm:.1f} GFLOP/s; numba compile + first calls "
          f"{first:.1f} s (0 when cached), max rel. diff to torch {err:.1e}", flush=True)
    for key in ("torch", "numba"):
        t = best[key]
        print(f"   {key:6s} {1e3 * t / R:7.3f} ms/fit  {flops[key] / t / 1e9:6.2f} GFLOP/s  "
              f"{100 * flops[key] / t / 1e9 / gemm:5.1f} % GEMM", flush=True)
    print(f"   speed-up {best['torch'] / best['numba']:.2f}x", flush=True)


def whole_fit(name: str, n: int, R: int, max_iter: int) -> None:
    """Part (2) for one setting and n."""
    s = get_setting(name)
    seeds = list(range(R))
    X, y = sample(s, n, seeds)
    init = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.1)
    res, sec = {}, {}
    for assembly_ in ("torch", "numba"):
        fit_least_squares(s.fit_layout, X[:2], y[:2], init[:2], max_iter=3, assembly=assembly_)  # warm-up
    for assembly_ in ("torch", "numba"):
        t = time.perf_counter()
        res[assembly_] = fit_least_squares(s.fit_layout, X, y, init, max_iter=max_iter, assembly=assembly_)
        sec[assembly_] = time.perf_counter() - t
    it = {a: float(r.n_iter.double().mean()) for a, r in res.items()}
    conv = {a: int(r.converged.sum()) for a, r in res.items()}
    print(f"fit {name} n={n} R={R}: torch {1e3 * sec['torch'] / R:.2f} ms/fit ({it['torch']:.1f} it, "
          f"{conv['torch']} conv.), numba {1e3 * sec['numba'] / R:.2f} ms/fit ({it['numba']:.1f} it, "
          f"{conv['numba']} conv.), speed-up {sec['torch'] / sec['numba']:.2f}x, max rel. loss diff "
          f"{_rel(res['numba'].loss, res['torch'].loss):.1e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="monomial-sigmoid-exact,polynomial-linear-exact")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--replicates", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--fit-iters", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"loadavg start {_load()}, {os.cpu_count()} cores, torch {torch.__version__}", flush=True)
    names, sizes = args.settings.split(","), [int(v) for v in args.sizes.split(",")]
    for name in names:
        for n in sizes:
            assembly(name, n, args.replicates, args.repeats)
    for name in names:
        for n in sizes:
            whole_fit(name, n, args.replicates, args.fit_iters)
    print(f"loadavg end {_load()}", flush=True)


if __name__ == "__main__":
    main()
