"""Speed of the batched least-squares fit, as ratios measured in one run.

    python benchmarks/bench_fit.py [--setting monomial-sigmoid-exact] [--replicates 32]
                                   [--iters 20] [--sizes 1000,10000] [--threads 1] [--clock cpu]

(a) R replicates fitted as ONE batched L-BFGS program vs the same R fits one after another
    (R = 1 each), same data, same initialisations, fixed work: tol = ftol = 0 and a fixed
    iteration cap (the script checks every replicate ran exactly that many iterations).
(b) vs what a researcher would write without attnmoe: ``scipy.optimize.minimize(method=
    "L-BFGS-B", jac=True)`` per fit on a hand-written NumPy objective + gradient
    (``benchmarks/numpy_moe.py``; its gradient is checked against torch autograd first), with
    the same stopping rule (max-abs gradient <= gtol = tol, relative decrease <= ftol) and
    history (10 pairs); total time and final training losses side by side.
(c) achieved GFLOP/s of the batched fit: hand-counted FLOPs of one loss + gradient evaluation
    (``numpy_moe.flops_per_eval``) times the evaluations the optimiser reports, over the wall
    time, against the measured float64 matmul GFLOP/s of this machine at the same thread count.
(d) the closed-form objective (``attnmoe.estimation.objective``, the default) against the autograd
    path it replaces, same fits.

Everything runs on ``--threads`` torch/BLAS threads (default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_THREADS = "1"
for _i, _a in enumerate(sys.argv):  # BLAS threads must be fixed before numpy is imported
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import numpy as np
import scipy.optimize
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from numpy_moe import NumpyMoE, flops_per_eval

from attnmoe.estimation.fit import fit_least_squares, near_truth_init
from attnmoe.estimation.truth import get_setting, sample

_clock = time.perf_counter  # --clock cpu: time.process_time


def _data(setting, n: int, R: int):
    seeds = list(range(R))
    X, y = sample(setting, n, seeds)
    layout = setting.fit_layout
    init = near_truth_init(layout, setting.true_params(1), seeds)
    return layout, X, y, init


def check_numpy_gradient(setting) -> float:
    """Max abs difference between the NumPy gradient and torch autograd at one random point."""
    layout, X, y, init = _data(setting, 200, 1)
    theta = init[0].numpy() + 0.3 * np.random.default_rng(0).standard_normal(layout.n_params)
    obj = NumpyMoE(setting.gate, setting.expert, setting.k_fit, X[0].numpy(), y[0].numpy())
    loss_np, grad_np = obj(theta)
    t = torch.tensor(theta[None], requires_grad=True)
    loss_t = (y - layout.forward(t, X)).square().mean()
    loss_t.backward()
    return max(abs(loss_np - loss_t.item()), float(np.abs(grad_np - t.grad[0].numpy()).max()))


def bench_batched_vs_sequential(setting, n: int, R: int, iters: int) -> dict:
    layout, X, y, init = _data(setting, n, R)
    kw = {"max_iter": iters, "tol": 0.0, "ftol": 0.0}
    fit_least_squares(layout, X[:2], y[:2], init[:2], max_iter=2, tol=0.0, ftol=0.0)  # warm-up
    t0 = _clock()
    batched = fit_least_squares(layout, X, y, init, **kw)
    t_batched = _clock() - t0
    t0 = _clock()
    seq = [fit_least_squares(layout, X[r : r + 1], y[r : r + 1], init[r : r + 1], **kw) for r in range(R)]
    t_seq = _clock() - t0
    seq_iters = torch.cat([s.n_iter for s in seq])
    seq_loss = torch.cat([s.loss for s in seq])
    return {
        "n": n,
        "batched_s": t_batched,
        "sequential_s": t_seq,
        "speedup": t_seq / t_batched,
        "iters_all_equal": bool((batched.n_iter == iters).all() and (seq_iters == iters).all()),
        "max_loss_diff": float((batched.loss - seq_loss).abs().max()),
        "evals": int(batched.n_evals.sum()),
        "batched": batched,
    }


def bench_scipy(setting, n: int, R: int, tol: float, ftol: float, max_iter: int) -> dict:
    layout, X, y, init = _data(setting, n, R)
    fit_least_squares(layout, X, y, init, max_iter=2, tol=tol, ftol=ftol)  # warm-up, as in (a)
    t0 = _clock()
    ours = fit_least_squares(layout, X, y, init, max_iter=max_iter, tol=tol, ftol=ftol)
    t_ours = _clock() - t0
    Xn, yn, x0 = X.numpy(), y.numpy(), init.numpy()
    losses, iters, t0 = [], [], _clock()
    for r in range(R):
        obj = NumpyMoE(setting.gate, setting.expert, setting.k_fit, Xn[r], yn[r])
        res = scipy.optimize.minimize(
            obj, x0[r], jac=True, method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": tol, "ftol": ftol, "maxcor": 10},
        )
        losses.append(res.fun)
        iters.append(res.nit)
    t_scipy = _clock() - t0
    losses = np.array(losses)
    return {
        "n": n,
        "ours_s": t_ours,
        "scipy_s": t_scipy,
        "speedup": t_scipy / t_ours,
        "ours_loss_mean": float(ours.loss.mean()),
        "scipy_loss_mean": float(losses.mean()),
        "max_loss_diff": float(np.abs(ours.loss.numpy() - losses).max()),
        "ours_iters": float(ours.n_iter.double().mean()),
        "scipy_iters": float(np.mean(iters)),
        "ours_converged": float(ours.converged.double().mean()),
    }


def bench_closed_form(setting, n: int, R: int, tol: float, ftol: float, max_iter: int) -> dict:
    """The same batched fits with the closed-form objective and with autograd (the reference)."""
    layout, X, y, init = _data(setting, n, R)
    kw = {"max_iter": max_iter, "tol": tol, "ftol": ftol}
    out = {}
    fit_least_squares(layout, X, y, init, max_iter=2, tol=tol, ftol=ftol)  # warm-up
    for closed in (False, True):
        t0 = _clock()
        res = fit_least_squares(layout, X, y, init, closed_form=closed, **kw)
        out[closed] = (_clock() - t0, res)
    (t_auto, r_auto), (t_closed, r_closed) = out[False], out[True]
    return {"n": n, "autograd_s": t_auto, "closed_s": t_closed, "speedup": t_auto / t_closed,
            "max_loss_diff": float((r_auto.loss - r_closed.loss).abs().max())}


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    a = torch.randn(size, size, dtype=torch.float64)
    b = torch.randn(size, size, dtype=torch.float64)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = _clock()
        a @ b
        best = min(best, _clock() - t0)
    return 2 * size**3 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="monomial-sigmoid-exact")
    p.add_argument("--replicates", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)  # below the ~30 a fit needs: identical work
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--ftol", type=float, default=1e-13)
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared "
                        "machine; equal to wall time on an idle one, everything being 1-threaded)")
    args = p.parse_args()
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    setting = get_setting(args.setting)
    R, d, k = args.replicates, setting.dim, setting.k_fit
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"setting {setting.name} (gate {setting.gate}, expert {setting.expert}, d={d}, k={k}, "
          f"P={setting.n_free_params}), R={R}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {os.cpu_count()} cores, {args.clock} clock")
    print(f"NumPy gradient vs torch autograd, max abs diff: {check_numpy_gradient(setting):.2e}")

    print(f"\n(a) batched R={R} vs {R} sequential fits, {args.iters} L-BFGS iterations each (tol=ftol=0)")
    print(f"{'n':>7} {'batched s':>10} {'sequential s':>13} {'speed-up':>9} {'same iters':>11} {'max |dloss|':>12}")
    flops_rows = []
    for n in sizes:
        r = bench_batched_vs_sequential(setting, n, R, args.iters)
        print(f"{n:>7} {r['batched_s']:>10.3f} {r['sequential_s']:>13.3f} {r['speedup']:>8.1f}x "
              f"{r['iters_all_equal']!s:>11} {r['max_loss_diff']:>12.1e}")
        flops_rows.append((n, r))

    print(f"\n(b) batched (attnmoe) vs scipy L-BFGS-B per fit (NumPy objective+gradient), R={R}, "
          f"gtol={args.tol:g}, ftol={args.ftol:g}, max_iter={args.max_iter}")
    print(f"{'n':>7} {'attnmoe s':>10} {'scipy s':>9} {'speed-up':>9} {'mean loss ours':>15} "
          f"{'mean loss scipy':>16} {'max |dloss|':>12} {'iters ours/scipy':>17}")
    for n in sizes:
        r = bench_scipy(setting, n, R, args.tol, args.ftol, args.max_iter)
        print(f"{n:>7} {r['ours_s']:>10.3f} {r['scipy_s']:>9.3f} {r['speedup']:>8.1f}x "
              f"{r['ours_loss_mean']:>15.8f} {r['scipy_loss_mean']:>16.8f} {r['max_loss_diff']:>12.1e} "
              f"{r['ours_iters']:>8.1f}/{r['scipy_iters']:<8.1f}")

    print("\n(d) closed-form loss/gradient/Jacobian (default) vs autograd, same batched fits as (b)")
    print(f"{'n':>7} {'autograd s':>11} {'closed s':>9} {'speed-up':>9} {'max |dloss|':>12}")
    for n in sizes:
        r = bench_closed_form(setting, n, R, args.tol, args.ftol, args.max_iter)
        print(f"{n:>7} {r['autograd_s']:>11.3f} {r['closed_s']:>9.3f} {r['speedup']:>8.1f}x "
              f"{r['max_loss_diff']:>12.1e}")

    peak = matmul_gflops()
    print(f"\n(c) achieved GFLOP/s of the batched fit (runs of (a)) vs float64 matmul "
          f"(1024x1024, {args.threads} thread(s)): {peak:.2f} GFLOP/s")
    print(f"{'n':>7} {'FLOPs/eval':>11} {'evals':>6} {'GFLOP/s':>8} {'% of matmul':>12}")
    for n, r in flops_rows:
        per = flops_per_eval(setting.gate, setting.expert, n, k, d)
        gflops = per * r["evals"] / r["batched_s"] / 1e9
        print(f"{n:>7} {per:>11,d} {r['evals']:>6} {gflops:>8.3f} {100 * gflops / peak:>11.1f}%")
    print("FLOPs/eval per replicate = numpy_moe.flops_per_eval (hand count, see its docstring); "
          "evals = sum over replicates of objective evaluations (line search included).")


if __name__ == "__main__":
    main()
