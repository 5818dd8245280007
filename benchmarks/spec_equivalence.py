"""Bitwise equivalence of the trust-region fit before and after the speculation / setup /
overhead work: every field of every fit compared, original code against today's.

    python benchmarks/spec_equivalence.py [--ref COMMIT] [--quick] [--assemblies torch,numba]

Each case (setting, n, R, start scale, box or not, assembly) fits the same data from the same
starts with ``fit_least_squares`` three ways (``original_code.py``): the code of ``--ref``
(``original``), today's with ``speculate=False`` (``plain``) and today's default
(``speculate``). Every ``OptimResult`` field the solver returned (x, loss, grad_max, converged,
n_iter, n_evals, reason, min_eig, decrement, extra) and every ``FitResult`` field (flat, params,
at_bound, ...) must be bitwise equal (floating tensors compared as their bit patterns, so NaNs
compare too). The cases cover exact- and over-specified settings, odd and even P, softmax and
sigmoid gates, linear / sigmoid / gelu experts, R = 1, 7, 13, 64, the paper's box and no box,
near-truth starts at 0.1 (paper) up to 1.0 (more rejected steps, extrapolations) and displaced
starts. Also printed: the Hessian and loss rows each path evaluated. Exit status 1 on any
difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from original_code import BASE, KINDS, fit_path, load_original

from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import displaced_init, near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample

#: (setting, n, R, start, bound, max_iter); start "near:S" (near-truth, scale S) or "displaced" (delta 0.3)
CASES = [
    ("monomial-sigmoid-exact", 1000, 64, "near:0.1", None, 500),
    ("monomial-sigmoid-exact", 1000, 7, "near:0.5", 10.0, 500),
    ("monomial-sigmoid-exact", 10000, 13, "near:0.1", None, 500),
    ("polynomial-linear-exact", 1000, 64, "near:0.1", None, 500),
    ("polynomial-linear-exact", 301, 7, "near:1.0", 10.0, 500),
    ("polynomial-sigmoid-exact", 1000, 13, "near:0.3", None, 500),
    ("monomial-linear-exact", 5000, 7, "near:0.1", 10.0, 500),
    ("monomial-linear-over", 1000, 13, "near:0.1", 10.0, 400),
    ("polynomial-sigmoid-over", 1000, 13, "near:0.1", 10.0, 400),
    ("monomial-sigmoid-over", 1000, 7, "near:0.5", 10.0, 300),
    ("polynomial-linear-over", 301, 7, "near:0.1", None, 300),
    ("monomial-linear-over", 1000, 7, "displaced", 10.0, 300),
    ("polynomial-sigmoid-over", 301, 1, "near:0.1", 10.0, 200),
    ("sgate-r1-gelu-sig", 1000, 13, "near:0.3", 10.0, 300),
    ("sgate-nat-r1-linear-sig", 1000, 7, "near:0.1", None, 300),
    ("sgate-r2-gelu-soft", 1000, 7, "near:0.1", 10.0, 300),
]

#: numba: softmax gates, linear/sigmoid experts only
QUICK = [c for c in CASES if c[1] <= 1000 and c[2] <= 13][:6]


def _start(setting, seeds: list[int], start: str, bound: float | None) -> torch.Tensor:
    layout = setting.fit_layout
    if start == "displaced":
        x0 = displaced_init(layout, setting.true_params(), seeds, 0.3)
    else:
        x0 = near_truth_init(layout, setting.true_params(), seeds, float(start.split(":")[1]))
    return x0 if bound is None else x0.clamp(-0.99 * bound, 0.99 * bound)


def _same(a, b) -> bool:
    """Bitwise equality of tensors (floating ones as bit patterns), lists, dicts, numbers."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.is_floating_point():
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
            return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))
        return torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "seconds"}


def compare(want, got) -> list[str]:
    """Names of the fields (OptimResult, then FitResult) that differ."""
    (fit_a, opt_a), (fit_b, opt_b) = want, got
    bad = [f"optim.{k}" for k, v in _fields(opt_a).items() if not _same(v, getattr(opt_b, k))]
    return bad + [f"fit.{k}" for k, v in _fields(fit_a).items() if not _same(v, getattr(fit_b, k))]


def run_case(case, assembly: str, original) -> tuple[bool, int, dict]:
    name, n, R, start, bound, max_iter = case
    setting = get_setting(name)
    seeds = list(range(100, 100 + R))
    X, y = sample(setting, n, seeds)
    x0 = _start(setting, seeds, start, bound)
    out, rows = {}, {}
    for kind in KINDS:
        with fit_path(kind, original, count=True) as rec:
            fit = fit_least_squares(setting.fit_layout, X, y, x0, max_iter=max_iter, bound=bound, assembly=assembly)
        out[kind] = (fit, rec.results[0])
        rows[kind] = (rec.hessian_rows, rec.loss_rows)
    bad = {kind: compare(out["original"], out[kind]) for kind in KINDS[1:]}
    res = out["original"][1]
    ok = not any(bad.values())
    its = res.n_iter.double()
    print(f"{name:>24} n={n:<5} R={R:<3} {start:>9} box={bound!s:>4} {assembly:>5} "
          f"P={setting.fit_layout.n_params:<3} it={its.mean():6.1f} (max {int(its.max()):3d}) "
          f"jumps={int(res.extra['jumps'].sum()):4d} conv={int(res.converged.sum()):3d}/{R:<3} "
          f"H/loss rows {rows['original'][0]:6d}/{rows['original'][1]:<6d} -> "
          f"{rows['speculate'][0]:6d}/{rows['speculate'][1]:<6d} "
          + ("bitwise equal" if ok else f"DIFFER {bad}"), flush=True)
    return ok, R, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ref", default=BASE, help="git commit of the original code")
    p.add_argument("--quick", action="store_true", help="a few small cases")
    p.add_argument("--assemblies", default="torch,numba")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    original = load_original(args.ref)
    cases = QUICK if args.quick else CASES
    t0, n_ok, n_fits, n_cases = time.perf_counter(), 0, 0, 0
    for assembly in args.assemblies.split(","):
        for case in cases:
            setting = get_setting(case[0])
            if assembly == "numba" and (setting.fit_layout.normalization != "softmax"
                                        or setting.expert not in ("linear", "sigmoid")):
                continue
            ok, R, _ = run_case(case, assembly, original)
            n_cases += 1
            n_ok += ok
            n_fits += R
    print(f"{n_ok}/{n_cases} cases bitwise equal ({n_fits} fits, each run 3 ways: {', '.join(KINDS)}; "
          f"reference {args.ref}); {time.perf_counter() - t0:.0f} s")
    return 0 if n_ok == n_cases else 1


if __name__ == "__main__":
    sys.exit(main())
