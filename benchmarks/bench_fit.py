"""Speed of the batched least-squares fit, as ratios measured in one run.

    python benchmarks/bench_fit.py [--setting monomial-sigmoid-exact] [--replicates 32]
                                   [--iters 20] [--sizes 1000,10000] [--threads 1] [--clock cpu]
                                   [--parts a,b,c,d,e] [--e-settings S1,S2] [--json PATH]

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
(d) the closed-form objective (``attnmoe.estimation.families.least_squares.objective``, the default) against the autograd
    path it replaces, same fits.

(h) the closed-form Hessian assembly's FLOP rate against a plain one-thread float64 GEMM measured
    interleaved in the same run (``--e-settings``, ``--sizes``).

(e) the trust-region Newton solver (``method="trust-region"``, the default) run to convergence
    (``--dtol``, default 1e-10) against, per fit on the same data and starts,
    ``scipy.optimize.least_squares(method="trf", jac=...)`` on the residuals f(x_j) - y_j and
    ``scipy.optimize.minimize(method="trust-exact", jac=True, hess=...)`` on the mean squared
    error, both given NumPy callables of the same math (``numpy_moe.NumpyMoE.residuals /
    jacobian / hessian``, checked against attnmoe's closed forms first) and tight tolerances
    (``--scipy-tol``). SciPy's time is reported for its whole run and up to the first
    evaluation whose loss is within ``--target`` * L / n of ours; the loss differences say
    whether all three reached the same minimum. Ratio = faster SciPy method / ours, per fit
    (ours: the batched time over R). Each ``--e-settings`` entry is reported separately. "no
    spec": ours again right after with ``speculate=False`` (no Hessians at trial points; the
    same fits bit for bit, checked).

``--json PATH`` writes every measured number and ratio (atomic: temp file + rename), with the
load average at the start and the end.

Everything runs on ``--threads`` torch/BLAS threads (default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
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

from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.families.least_squares.truth import get_setting, sample

_clock = time.perf_counter  # --clock cpu: time.process_time


def _data(setting, n: int, R: int):
    seeds = list(range(R))
    X, y = sample(setting, n, seeds)
    layout = setting.fit_layout
    init = near_truth_init(layout, setting.true_params(), seeds)
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
    kw = {"method": "lbfgs", "max_iter": iters, "tol": 0.0, "ftol": 0.0}
    fit_least_squares(layout, X[:2], y[:2], init[:2], **{**kw, "max_iter": 2})  # warm-up
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
    kw = {"method": "lbfgs", "tol": tol, "ftol": ftol}
    fit_least_squares(layout, X, y, init, max_iter=2, **kw)  # warm-up, as in (a)
    t0 = _clock()
    ours = fit_least_squares(layout, X, y, init, max_iter=max_iter, **kw)
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
    kw = {"method": "lbfgs", "max_iter": max_iter, "tol": tol, "ftol": ftol}
    out = {}
    fit_least_squares(layout, X, y, init, **{**kw, "max_iter": 2})  # warm-up
    for closed in (False, True):
        t0 = _clock()
        res = fit_least_squares(layout, X, y, init, closed_form=closed, **kw)
        out[closed] = (_clock() - t0, res)
    (t_auto, r_auto), (t_closed, r_closed) = out[False], out[True]
    return {"n": n, "autograd_s": t_auto, "closed_s": t_closed, "speedup": t_auto / t_closed,
            "max_loss_diff": float((r_auto.loss - r_closed.loss).abs().max())}


class _Trace:
    """Wraps a SciPy callable; records (clock, loss) at every evaluation, so the time at which
    SciPy FIRST reached a target loss can be read off afterwards (``time_to``)."""

    def __init__(self, fn, loss_of) -> None:
        self.fn, self.loss_of, self.t, self.loss = fn, loss_of, [], []
        self.t0 = _clock()

    def __call__(self, theta):
        out = self.fn(theta)
        self.t.append(_clock() - self.t0)
        self.loss.append(self.loss_of(out))
        return out

    def time_to(self, target: float) -> float:
        hit = np.flatnonzero(np.asarray(self.loss) <= target)
        return self.t[hit[0]] if hit.size else float("nan")


def check_numpy_second_order(setting) -> float:
    """Max abs difference of the NumPy Jacobian and Hessian against attnmoe's closed forms
    (themselves tested against torch.func) at one perturbed point."""
    layout, X, y, _ = _data(setting, 200, 1)
    theta = near_truth_init(layout, setting.true_params(), [0], 0.3)
    obj = LeastSquaresObjective(layout, X, y)
    _, _, H = obj.hessian(theta)
    J = obj.jacobian(theta)
    np_obj = NumpyMoE(setting.gate, setting.expert, setting.k_fit, X[0].numpy(), y[0].numpy())
    th = theta[0].numpy()
    return max(float(np.abs(np_obj.jacobian(th) - J[0].numpy()).max()),
               float(np.abs(np_obj.hessian(th) - H[0].numpy()).max()))


def bench_second_order(setting, n: int, R: int, dtol: float, max_iter: int, scipy_tol: float,
                       rel_target: float, assembly: str = "torch") -> dict:
    """(e) attnmoe trust-region (batched, R fits in one program) vs SciPy per fit, same starts
    and data: least_squares "trf" (analytic Jacobian) and minimize "trust-exact" (analytic
    gradient and Hessian), both on the NumPy callables of numpy_moe.py.

    Ours runs to convergence (Newton decrement <= dtol * L / n). SciPy runs with tight
    tolerances (``scipy_tol``); its time is reported twice: the whole run, and the time at which
    its loss first came within ``rel_target * L / n`` of ours (a lower bound on what any
    stopping rule reaching our loss could cost it)."""
    layout, X, y, init = _data(setting, n, R)
    kw = {"method": "trust-region", "max_iter": max_iter, "tol": 0.0, "dtol": dtol, "assembly": assembly}
    fit_least_squares(layout, X[:2], y[:2], init[:2], **{**kw, "max_iter": 2})  # warm-up
    t0 = _clock()
    ours = fit_least_squares(layout, X, y, init, **kw)
    t_ours = (_clock() - t0) / R
    t0 = _clock()  # the same fits without the solver's speculative Hessians (bitwise the same result)
    plain = fit_least_squares(layout, X, y, init, speculate=False, **kw)
    t_plain = (_clock() - t0) / R
    assert torch.equal(plain.flat, ours.flat) and torch.equal(plain.n_evals, ours.n_evals)
    Xn, yn, x0 = X.numpy(), y.numpy(), init.numpy()
    target = ours.loss.numpy() * (1.0 + rel_target / n)
    out = {"n": n, "ours_s": t_ours, "ours_nospec_s": t_plain, "ours_iters": float(ours.n_iter.double().mean()),
           "ours_converged": float(ours.converged.double().mean())}
    for name in ("trf", "trust-exact"):
        losses, iters, full, reach = [], [], [], []
        for r in range(R):
            obj = NumpyMoE(setting.gate, setting.expert, setting.k_fit, Xn[r], yn[r])
            if name == "trf":
                fun = _Trace(obj.residuals, lambda res: float(res @ res) / n)
                res = scipy.optimize.least_squares(
                    fun, x0[r], jac=obj.jacobian, method="trf",
                    ftol=scipy_tol, xtol=scipy_tol, gtol=scipy_tol, max_nfev=max_iter)
                loss, it = float(res.fun @ res.fun) / n, res.nfev
            else:
                fun = _Trace(obj, lambda out: out[0])
                res = scipy.optimize.minimize(
                    fun, x0[r], jac=True, hess=obj.hessian, method="trust-exact",
                    options={"gtol": scipy_tol, "maxiter": max_iter})
                loss, it = float(res.fun), res.nit
            full.append(_clock() - fun.t0)
            reach.append(fun.time_to(target[r]))
            losses.append(loss)
            iters.append(it)
        diff = ours.loss.numpy() - np.array(losses)
        reach = np.array(reach)
        out[name] = {
            "full_s": float(np.mean(full)),
            # fits that never reached the target count with their full time
            "reach_s": float(np.mean(np.where(np.isnan(reach), full, reach))),
            "not_reached": int(np.isnan(reach).sum()),
            "iters": float(np.mean(iters)),
            "max_abs_dloss": float(np.abs(diff).max()),
            "max_rel_dloss": float(np.abs(diff / np.array(losses)).max()),
            "max_dloss": float(diff.max()),  # > 0: ours above SciPy
        }
    for kind in ("full", "reach"):
        faster = min(("trf", "trust-exact"), key=lambda m: out[m][f"{kind}_s"])
        out[f"faster_{kind}"] = faster
        out[f"ratio_{kind}"] = out[faster][f"{kind}_s"] / t_ours
    return out


def _write_json(path: str, payload: dict) -> None:
    """Atomic: a temp file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench_fit.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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


def bench_hessian(setting, n: int, R: int, repeats: int, assembly: str = "torch") -> dict:
    """(h) seconds per fit of one closed-form loss + gradient + Hessian call and its FLOP rate,
    interleaved with a 1024^3 float64 GEMM (best of ``repeats`` each)."""
    layout, X, y, init = _data(setting, n, R)
    obj = LeastSquaresObjective(layout, X, y, assembly=assembly)
    theta = near_truth_init(layout, setting.true_params(), list(range(R)), 0.3)
    a = torch.randn(1024, 1024, dtype=torch.float64)
    obj.hessian(theta)
    a @ a  # warm-up
    best_h = best_g = float("inf")
    for _ in range(repeats):
        t0 = _clock()
        obj.hessian(theta)
        best_h = min(best_h, _clock() - t0)
        t0 = _clock()
        a @ a
        best_g = min(best_g, _clock() - t0)
    P, Q, U = layout.n_params, obj.qi.numel(), obj.U
    flops = obj.matmul_flops(R)
    gemm = 2 * 1024**3 / best_g / 1e9
    gflops, gn = flops / best_h / 1e9, 2 * n * P * P * R / best_h / 1e9
    return {"n": n, "P": P, "Q": Q, "U": U, "seconds_per_fit": best_h / R, "gflops": gflops, "gn_gflops": gn,
            "gemm_gflops": gemm, "fraction_of_gemm": gflops / gemm, "gn_fraction_of_gemm": gn / gemm}


PARTS = ("a", "b", "c", "d", "e", "h")


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="monomial-sigmoid-exact", help="setting of (a)-(d)")
    p.add_argument("--replicates", type=int, default=32)
    p.add_argument("--iters", type=int, default=20)  # below the ~30 a fit needs: identical work
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--ftol", type=float, default=1e-13)
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of parts to run (c needs a)")
    p.add_argument("--e-settings", default="monomial-sigmoid-exact",
                   help="settings of part (e), each reported separately (an over-specified one, "
                        "e.g. monomial-sigmoid-over, takes ~10x longer per fit)")
    p.add_argument("--dtol", type=float, default=1e-10,
                   help="(e): our trust-region stops at Newton decrement <= dtol * L / n")
    p.add_argument("--scipy-tol", type=float, default=1e-14,
                   help="(e): ftol = xtol = gtol of least_squares, gtol of trust-exact")
    p.add_argument("--target", type=float, default=1e-9,
                   help="(e): SciPy 'reached' when its loss <= ours * (1 + target / n)")
    p.add_argument("--assembly", choices=("torch", "numba"), default="torch",
                   help="(e), (h): the Hessian assembly of our fits (numba: the opt-in generated kernel)")
    p.add_argument("--json", metavar="PATH", help="write every measured ratio here (atomic)")
    p.add_argument("--repeats", type=int, default=5, help="(h): best of this many interleaved calls")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared "
                        "machine; equal to wall time on an idle one, everything being 1-threaded)")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(v) for v in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes must be a comma list of integers, got {args.sizes!r}")
    if any(v < 50 for v in args.sizes):
        p.error(f"--sizes must be >= 50, got {args.sizes}")
    for name in ("replicates", "iters", "threads", "max_iter"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("tol", "ftol", "dtol", "scipy_tol", "target"):
        if not getattr(args, name) >= 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    args.parts = [v for v in args.parts.split(",") if v]
    bad = [v for v in args.parts if v not in PARTS]
    if bad or not args.parts:
        p.error(f"--parts must be a comma list of {', '.join(PARTS)}; got {bad or 'nothing'}")
    if "c" in args.parts and "a" not in args.parts:
        p.error("--parts: part c uses the runs of part a; add a")
    try:
        args.setting_obj = get_setting(args.setting)
        args.e_settings = [get_setting(v) for v in args.e_settings.split(",") if v]
    except (KeyError, ValueError) as err:
        p.error(f"--setting/--e-settings: {err}")
    if args.json is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json: folder of {args.json!r} does not exist")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    setting = args.setting_obj
    R, d, k = args.replicates, setting.dim, setting.k_fit
    sizes = args.sizes
    load0 = os.getloadavg()
    report: dict = {
        "setting": setting.name, "replicates": R, "threads": args.threads, "clock": args.clock,
        "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
        "cores": os.cpu_count(), "loadavg_start": list(load0), "parts": args.parts, "assembly": args.assembly,
    }
    print(f"setting {setting.name} (gate {setting.gate}, expert {setting.expert}, d={d}, k={k}, "
          f"P={setting.n_free_params}), R={R}, torch {torch.__version__}, scipy {scipy.__version__}, "
          f"{args.threads} thread(s), {os.cpu_count()} cores, {args.clock} clock, assembly {args.assembly}, "
          f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    if "a" in args.parts or "b" in args.parts:
        print(f"NumPy gradient vs torch autograd, max abs diff: {check_numpy_gradient(setting):.2e}")

    flops_rows = []
    if "a" in args.parts:
        print(f"\n(a) batched R={R} vs {R} sequential fits, {args.iters} L-BFGS iterations each (tol=ftol=0)")
        print(f"{'n':>7} {'batched s':>10} {'sequential s':>13} {'speed-up':>9} {'same iters':>11} {'max |dloss|':>12}")
        report["a"] = []
        for n in sizes:
            r = bench_batched_vs_sequential(setting, n, R, args.iters)
            print(f"{n:>7} {r['batched_s']:>10.3f} {r['sequential_s']:>13.3f} {r['speedup']:>8.1f}x "
                  f"{r['iters_all_equal']!s:>11} {r['max_loss_diff']:>12.1e}")
            flops_rows.append((n, r))
            report["a"].append({key: v for key, v in r.items() if key != "batched"})

    if "b" in args.parts:
        print(f"\n(b) batched L-BFGS (attnmoe) vs scipy L-BFGS-B per fit (NumPy objective+gradient), R={R}, "
              f"gtol={args.tol:g}, ftol={args.ftol:g}, max_iter={args.max_iter}")
        print(f"{'n':>7} {'attnmoe s':>10} {'scipy s':>9} {'speed-up':>9} {'mean loss ours':>15} "
              f"{'mean loss scipy':>16} {'max |dloss|':>12} {'iters ours/scipy':>17}")
        report["b"] = []
        for n in sizes:
            r = bench_scipy(setting, n, R, args.tol, args.ftol, args.max_iter)
            print(f"{n:>7} {r['ours_s']:>10.3f} {r['scipy_s']:>9.3f} {r['speedup']:>8.1f}x "
                  f"{r['ours_loss_mean']:>15.8f} {r['scipy_loss_mean']:>16.8f} {r['max_loss_diff']:>12.1e} "
                  f"{r['ours_iters']:>8.1f}/{r['scipy_iters']:<8.1f}")
            report["b"].append(r)

    if "d" in args.parts:
        print("\n(d) closed-form loss/gradient/Jacobian (default) vs autograd, same batched L-BFGS fits as (b)")
        print(f"{'n':>7} {'autograd s':>11} {'closed s':>9} {'speed-up':>9} {'max |dloss|':>12}")
        report["d"] = []
        for n in sizes:
            r = bench_closed_form(setting, n, R, args.tol, args.ftol, args.max_iter)
            print(f"{n:>7} {r['autograd_s']:>11.3f} {r['closed_s']:>9.3f} {r['speedup']:>8.1f}x "
                  f"{r['max_loss_diff']:>12.1e}")
            report["d"].append(r)

    if "c" in args.parts:
        peak = matmul_gflops()
        print(f"\n(c) achieved GFLOP/s of the batched fit (runs of (a)) vs float64 matmul "
              f"(1024x1024, {args.threads} thread(s)): {peak:.2f} GFLOP/s")
        print(f"{'n':>7} {'FLOPs/eval':>11} {'evals':>6} {'GFLOP/s':>8} {'% of matmul':>12}")
        report["c"] = {"matmul_gflops": peak, "rows": []}
        for n, r in flops_rows:
            per = flops_per_eval(setting.gate, setting.expert, n, k, d)
            gflops = per * r["evals"] / r["batched_s"] / 1e9
            print(f"{n:>7} {per:>11,d} {r['evals']:>6} {gflops:>8.3f} {100 * gflops / peak:>11.1f}%")
            report["c"]["rows"].append({"n": n, "gflops": gflops, "fraction_of_matmul": gflops / peak})
        print("FLOPs/eval per replicate = numpy_moe.flops_per_eval (hand count, see its docstring); "
              "evals = sum over replicates of objective evaluations (line search included).")

    if "e" in args.parts:
        print(f"\n(e) trust-region Newton (attnmoe, R={R} fits batched, dtol={args.dtol:g}) vs SciPy per "
              f"fit on NumPy callables: least_squares(method='trf', analytic Jacobian) and "
              f"minimize(method='trust-exact', analytic gradient + Hessian), tol={args.scipy_tol:g}; "
              f"same data and starts (near-truth 0.1); seconds PER FIT; 'full' = SciPy's whole run, "
              f"'reach' = until its loss first <= ours * (1 + {args.target:g} / n)")
        report["e"] = []
        for st in args.e_settings:
            print(f"{st.name} (P={st.n_free_params}); NumPy Jacobian/Hessian vs attnmoe closed form, "
                  f"max abs diff: {check_numpy_second_order(st):.1e}")
            print(f"{'n':>7} {'ours s':>8} {'no spec':>8} {'it':>5} {'conv':>5} | {'trf full':>9} {'reach':>8} {'nfev':>5} | "
                  f"{'t-exact full':>12} {'reach':>8} {'it':>5} | {'ratio full':>10} {'ratio reach':>11} | "
                  f"{'max rel dloss trf/t-exact':>26} {'not reached':>11}")
            for n in sizes:
                r = bench_second_order(st, n, R, args.dtol, args.max_iter, args.scipy_tol, args.target, args.assembly)
                a, b = r["trf"], r["trust-exact"]
                print(f"{n:>7} {r['ours_s']:>8.4f} {r['ours_nospec_s']:>8.4f} {r['ours_iters']:>5.1f} "
                      f"{r['ours_converged']:>5.2f} | "
                      f"{a['full_s']:>9.4f} {a['reach_s']:>8.4f} {a['iters']:>5.1f} | "
                      f"{b['full_s']:>12.4f} {b['reach_s']:>8.4f} {b['iters']:>5.1f} | "
                      f"{r['ratio_full']:>9.1f}x {r['ratio_reach']:>10.1f}x | "
                      f"{a['max_rel_dloss']:>12.1e} /{b['max_rel_dloss']:>12.1e} "
                      f"{a['not_reached']:>5d}/{b['not_reached']:<5d}")
                report["e"].append({"setting": st.name, **r})
        print("no spec = ours with trust_region(speculate=False), run right after (the same fits bit for bit; "
              "with --assembly numba the compiled loop has no such switch: the same code run again, a measure "
              "of the run-to-run noise); "
              "ratio = (faster SciPy method's mean seconds per fit) / (ours: batched seconds / R); "
              "rel dloss = |ours - scipy| / scipy training loss; it = iterations (ours, trust-exact), "
              "nfev = residual evaluations (trf); conv = fraction of our fits converged.")

    if "h" in args.parts:
        print(f"\n(h) closed-form Hessian assembly (LeastSquaresObjective.hessian: loss, gradient and Hessian of "
              f"R={R} replicates at a near-truth point, all rows) vs a plain float64 GEMM (1024^3, "
              f"{args.threads} thread(s)), interleaved, best of {args.repeats}; the clock is {args.clock}")
        print(f"{'setting':>24} {'n':>6} {'P':>3} {'ms/fit':>7} {'GFLOP/s':>8} {'GN-equiv':>9} {'GEMM':>6} "
              f"{'fraction':>9} {'GN fraction':>11}")
        report["h"] = []
        for st in args.e_settings:
            for n in sizes:
                r = bench_hessian(st, n, R, args.repeats, args.assembly)
                print(f"{st.name:>24} {n:>6} {r['P']:>3} {1e3 * r['seconds_per_fit']:>7.3f} {r['gflops']:>8.2f} "
                      f"{r['gn_gflops']:>9.2f} {r['gemm_gflops']:>6.1f} {r['fraction_of_gemm']:>8.1%} "
                      f"{r['gn_fraction_of_gemm']:>10.1%}")
                report["h"].append({"setting": st.name, **r})
        print("GFLOP/s: FLOPs of the call's matrix products (2 n_pad (E + kv F + 2 k F), E = Q U entries on the "
              "torch path, only the entries the Hessian reads with --assembly numba) over the whole call's "
              "time (elementwise work included); GN-equiv: 2 n P^2 (the Gauss-Newton product J^T J alone) over "
              "the same time; fraction: of the same run's GEMM rate.")

    report["loadavg_end"] = list(os.getloadavg())
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in report['loadavg_end'])}")
    if args.json is not None:
        _write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
