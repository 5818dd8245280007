"""GPU check of the least-squares engine: R replicates as ONE batched trust-region fit on the GPU
(float64), time per fit, and the records of a subset of seeds against the CPU's.

    python benchmarks/gpu_check.py --out DIR [--setting monomial-sigmoid-exact] [--n 1000]
        [--replicates 4096] [--cpu-replicates 64] [--device cuda]

Prints a table and writes ``DIR/gpu_check.json`` (atomic). The comparison is per record key
(setting, n, seed): both sides fit the same data from the same starts (drawn on the CPU from the
seed alone), so they differ only by the rounding of the fit on each device. Tolerance (stated in
advance, for exact-specified settings whose minimum is well conditioned): the same convergence
flag, every loss within ``--rtol`` (default 1e-6) relative and the training loss within 1e-10
relative; an over-specified setting is reported, not judged (its fits may follow another valley).
``--device cpu`` runs the same script against itself (a smoke test of the script on any machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from attnmoe.estimation.families.least_squares.experiment import fit_and_score
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.families.least_squares.truth import get_setting
from attnmoe.utils import atomic_write_text


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rel(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return 0.0 if a is b else math.inf
    return abs(a - b) / max(abs(b), 1e-300)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--setting", default="monomial-sigmoid-exact")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--replicates", type=int, default=4096)
    p.add_argument("--cpu-replicates", type=int, default=64)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--n-test", type=int, default=2000)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no GPU is visible to torch", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    setting = get_setting(args.setting)
    seeds = list(range(args.replicates))
    gpu_opts = FitOptions(n_test=args.n_test, device=args.device)
    cpu_opts = FitOptions(n_test=args.n_test)
    fit_and_score(setting, args.n, seeds[:2], gpu_opts)  # warm-up (CUDA context, kernels)
    _sync(args.device)
    t0 = time.perf_counter()
    gpu = fit_and_score(setting, args.n, seeds, gpu_opts)
    _sync(args.device)
    t_gpu = time.perf_counter() - t0
    m = min(args.cpu_replicates, args.replicates)
    t0 = time.perf_counter()
    cpu = fit_and_score(setting, args.n, seeds[:m], cpu_opts)
    t_cpu = time.perf_counter() - t0
    worst: dict[str, float] = {}
    flags_equal = iters_diff = 0
    for g, c in zip(gpu[:m], cpu):
        flags_equal += g["converged"] == c["converged"]
        iters_diff = max(iters_diff, abs(g["iterations"] - c["iterations"]))
        for key, value in c["losses"].items():
            worst[key] = max(worst.get(key, 0.0), _rel(g["losses"].get(key), value))
        worst["train_loss"] = max(worst.get("train_loss", 0.0), _rel(g["train_loss"], c["train_loss"]))
    exact = setting.k_fit == setting.k_true
    ok = (flags_equal == m and worst.get("train_loss", 0.0) <= 1e-10
          and all(v <= args.rtol for k, v in worst.items() if k != "train_loss"))
    report = {
        "setting": setting.name, "n": args.n, "device": args.device,
        "gpu_name": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__, "replicates": args.replicates, "cpu_replicates": m,
        "cpu_threads": torch.get_num_threads(),
        "device_seconds": t_gpu, "device_seconds_per_fit": t_gpu / args.replicates,
        "cpu_seconds_per_fit": t_cpu / m, "speedup_per_fit": (t_cpu / m) / (t_gpu / args.replicates),
        "device_converged": sum(r["converged"] for r in gpu) / len(gpu),
        "device_iterations_mean": sum(r["iterations"] for r in gpu) / len(gpu),
        "same_convergence_flag": f"{flags_equal}/{m}", "max_iterations_difference": iters_diff,
        "max_relative_difference": worst, "rtol": args.rtol,
        "verdict": ("match" if ok else "MISMATCH") if exact else "reported (over-specified: not judged)",
    }
    atomic_write_text(os.path.join(args.out, "gpu_check.json"), json.dumps(report, indent=1) + "\n")
    for key, value in report.items():
        print(f"{key:>28}: {value}")
    return 0 if ok or not exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
