"""Does fixing glibc's malloc thresholds make the trust-region fit's speed reproducible?

    python benchmarks/malloc_thresholds.py [--procs 4] [--fits 2] [--over SETTINGS] [--exact SETTINGS]
        [--exact-n 10000] [--assemblies torch,numba] [--modes default,env,mallopt]

glibc's malloc adjusts its mmap threshold as a process frees mmapped chunks (and the trim
threshold with it), so whether the Hessian's few-MB temporaries are mmapped -- and
page-faulted in again -- on every call depends on the process's allocation history. Each
configuration (setting, n, assembly) is fitted in ``--procs`` FRESH processes per mode, the
modes alternating:

* ``default``: glibc's dynamic thresholds;
* ``env``: ``MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456`` in the environment;
* ``mallopt``: the same two values set from inside Python at process start, before torch is
  imported, by ``mallopt(M_MMAP_THRESHOLD=-3, ...)`` and ``mallopt(M_TRIM_THRESHOLD=-1, ...)``
  (glibc's ``malloc.h``); either call also turns the dynamic adjustment off;
* ``late``: :func:`attnmoe._malloc.fix_malloc_thresholds` (the same values) after torch and the
  package are imported, before the data is built: what a study's unit of work does
  (``call_with_threads``). Not in the default ``--modes``.

Each process builds the data, warms up (a 2-iteration fit of 2 replicates: numba compile), then
times ``--fits`` calls of ``fit_least_squares`` on one torch thread with ``time.process_time``.
Reported per configuration and mode: CPU ms per fit (one replicate; each process's mean over
its calls, then min / median / max over processes), minor page faults per call
(``ru_minflt``, min / median / max over processes) and whether the fitted results (flat
parameters, loss, gradient, iterations) are bitwise equal in every process of every mode.
Over-specified fits as the paper preset (near-truth 0.1, box 10, dtol 1e-8, max_iter 5000,
n = 1000, R = 16); exact-specified as ``bench_fit.py --parts e`` (near-truth 0.1, no box,
dtol 1e-10, max_iter 500, R = 64). Run nothing else heavy at the same time.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attnmoe._malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD, TRIM_THRESHOLD  # no torch
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
MODES = ("default", "env", "mallopt")


def child(setting_name: str, n: int, R: int, assembly: str, fits: int, mode: str) -> dict:
    """One fresh process's measurement (run with ``--child``)."""
    if mode == "mallopt":  # before torch (or anything big) allocates
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        if ok != (1, 1):
            raise RuntimeError(f"mallopt failed: {ok}")
    import hashlib

    import torch

    from cases import fit_kwargs, problem

    from attnmoe.estimation.families.least_squares.fit import fit_least_squares

    torch.set_num_threads(1)
    if mode == "late":
        from attnmoe._malloc import fix_malloc_thresholds

        if not fix_malloc_thresholds():
            raise RuntimeError("fix_malloc_thresholds() did not apply")
    kw = {**fit_kwargs(setting_name.endswith("-over")), "tol": 0.0, "assembly": assembly}
    layout, X, y, x0 = problem(setting_name, n, R, kw["bound"])
    fit_least_squares(layout, X[:2], y[:2], x0[:2], **{**kw, "max_iter": 2})  # compile, warm up
    cpu, faults, digests = [], [], set()
    for _ in range(fits):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        res = fit_least_squares(layout, X, y, x0, **kw)
        t1, f1 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu.append((t1 - t0) / R)
        faults.append(f1 - f0)
        h = hashlib.sha256()
        for t in (res.flat, res.loss, res.grad_max, res.n_iter, res.converged):
            h.update(t.contiguous().numpy().tobytes())
        digests.add(h.hexdigest())
    return {"cpu": cpu, "faults": faults, "digests": sorted(digests),
            "iters": float(res.n_iter.double().mean())}


def run_child(config: tuple, fits: int, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env["OMP_NUM_THREADS"] = "1"
    if mode == "env":
        env.update(ENV)
    name, n, R, assembly = config
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, str(n), str(R), assembly, str(fits), mode]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _mmm(values: list[float], fmt: str) -> str:
    return "/".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    p.add_argument("--procs", type=int, default=4, help="fresh processes per configuration and mode")
    p.add_argument("--fits", type=int, default=2, help="timed fit_least_squares calls per process")
    p.add_argument("--over", default="monomial-linear-over,polynomial-sigmoid-over")
    p.add_argument("--exact", default="monomial-sigmoid-exact")
    p.add_argument("--exact-n", type=int, default=10000)
    p.add_argument("--assemblies", default="torch,numba")
    p.add_argument("--modes", default=",".join(MODES))
    a = p.parse_args(argv)
    if a.child:
        name, n, R, assembly, fits, mode = a.child
        print(json.dumps(child(name, int(n), int(R), assembly, int(fits), mode)))
        return
    modes = [m for m in a.modes.split(",") if m]
    configs = [(s, 1000, 16, asm) for s in a.over.split(",") if s for asm in a.assemblies.split(",")]
    configs += [(s, a.exact_n, 64, asm) for s in a.exact.split(",") if s for asm in a.assemblies.split(",")]
    print(f"python {sys.version.split()[0]}, glibc {'.'.join(map(str, os.confstr('CS_GNU_LIBC_VERSION').split()[1:]))}, "
          f"1 torch thread, CPU clock; {a.procs} fresh processes per mode (modes alternating), {a.fits} timed "
          f"calls each; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("cpu ms/fit: one replicate, each process's mean over its calls, min/median/max over processes; "
          "faults: minor page faults per call, min/median/max over processes")
    all_equal = True
    for config in configs:
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for k in range(a.procs):
            for mode in modes[k % len(modes):] + modes[: k % len(modes)]:
                results[mode].append(run_child(config, a.fits, mode))
        digests = {d for rs in results.values() for r in rs for d in r["digests"]}
        all_equal &= len(digests) == 1
        name, n, R, assembly = config
        iters = results[modes[0]][0]["iters"]
        print(f"\n{name} n={n} R={R} {assembly} (mean iterations {iters:.1f}); results bitwise equal in all "
              f"{sum(map(len, results.values()))} processes: {'yes' if len(digests) == 1 else 'NO'}")
        for mode in modes:
            cpu = [1e3 * statistics.mean(r["cpu"]) for r in results[mode]]
            faults = [statistics.mean(r["faults"]) for r in results[mode]]
            print(f"  {mode:>8}  cpu ms/fit {_mmm(cpu, '.1f'):>22}  faults/call {_mmm(faults, '.0f'):>22}  "
                  f"per process: {' '.join(f'{v:.1f}' for v in cpu)}", flush=True)
    print(f"\nall results bitwise equal across modes: {'yes' if all_equal else 'NO'}; load average at the end: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
