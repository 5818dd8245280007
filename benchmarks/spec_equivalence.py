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
starts. Also printed: the Hessian and loss rows each path evaluated. First, problems run by
``trust_region`` directly (original against today's, speculation off and on) reach the paths
fits rarely do: indefinite starts, P = 1 and odd P unscaled, a Hessian turning NaN, a kink where
the radius collapses ("stalled"), LAPACK refusing matrices (the row-by-row fallback). Exit status
1 on any difference. Last (not with ``--quick``), the likelihood and hmoe fits, which run the
solver without speculation, original trust_region against today's.

Since session 13 ``fit_least_squares(assembly="numba")`` runs the compiled per-replicate loop
(``numba_loop.py``), not ``trust_region``: numba cases (``--assemblies torch,numba``) compare
that loop with itself; the numbers for the batched numba path in docs/ were measured before.
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
from attnmoe.estimation.solvers import newton
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


def _solver_cases():
    """(name, hessian, objective, x0, keywords, flaky eigh) of problems run by trust_region
    directly; each hessian returns objective(x) as its loss (so speculation is valid). They reach
    the paths the fits above rarely do: indefinite starts (Rosenbrock), odd P and P = 1 unscaled,
    valley extrapolation, a Hessian that turns NaN ("nonfinite"), a kink where steps keep failing
    ("stalled"), and LAPACK refusing some matrices (row-by-row fallback)."""
    dt = torch.float64

    def rosen(x, idx=None):
        return 100 * (x[:, 1] - x[:, 0] ** 2) ** 2 + (1 - x[:, 0]) ** 2

    def rosen_h(x, idx=None):
        a, b = x[:, 0], x[:, 1]
        g = torch.stack([-400 * a * (b - a**2) - 2 * (1 - a), 200 * (b - a**2)], -1)
        H = torch.stack([torch.stack([1200 * a**2 - 400 * b + 2, -400 * a], -1),
                         torch.stack([-400 * a, torch.full_like(a, 200.0)], -1)], -2)
        return rosen(x), g, H

    def valley(x, idx=None):
        return 100.0 * (x[:, 1] + 0.1 * x[:, 0] ** 2) ** 2 + 1e-4 * (x[:, 0] - 10.0) ** 2

    def valley_h(x, idx=None):
        u, v = x[:, 0], x[:, 1]
        r = v + 0.1 * u**2
        g = torch.stack([40.0 * u * r + 2e-4 * (u - 10.0), 200.0 * r], -1)
        H = torch.stack([torch.stack([40.0 * r + 8.0 * u * u + 2e-4, 40.0 * u], -1),
                         torch.stack([40.0 * u, torch.full_like(u, 200.0)], -1)], -2)
        return valley(x), g, H

    gen = torch.Generator().manual_seed(3)
    cases = [("rosenbrock", rosen_h, rosen, torch.tensor([[-1.2, 1.0], [0.0, 1.0], [2.0, -1.0], [0.5, 3.0]], dtype=dt),
              {"max_iter": 300, "gtol": 1e-10, "dtol": 0.0}, False),
             ("valley", valley_h, valley, torch.tensor([[0.0, 0.0], [1.0, -0.1], [-5.0, -2.5]], dtype=dt),
              {"max_iter": 3000, "gtol": 1e-9, "dtol": 0.0}, False)]
    for P in (1, 5, 8):  # quartic bowls, odd P padded, unscaled and scaled
        A = torch.randn(7, P, P, generator=gen, dtype=dt)
        A = A @ A.mT + 0.1 * torch.eye(P, dtype=dt)
        c = torch.randn(7, P, generator=gen, dtype=dt)

        def bowl(x, idx=None, A=A, c=c):
            Ai, ci = (A, c) if idx is None else (A[idx], c[idx])
            e = x - ci
            q = (e.unsqueeze(-2) @ Ai @ e.unsqueeze(-1)).squeeze((-1, -2))
            return 0.5 * q + 0.25 * q**2

        def bowl_h(x, idx=None, A=A, c=c, bowl=bowl):
            Ai, ci = (A, c) if idx is None else (A[idx], c[idx])
            e = x - ci
            Ae = (Ai @ e.unsqueeze(-1)).squeeze(-1)
            q = (e * Ae).sum(-1)
            g = (1.0 + q).unsqueeze(-1) * Ae
            H = (1.0 + q)[:, None, None] * Ai + 2.0 * Ae.unsqueeze(-1) * Ae.unsqueeze(-2)
            return bowl(x, idx), g, H

        x0 = 3.0 * torch.randn(7, P, generator=gen, dtype=dt)
        cases.append((f"quartic P={P}", bowl_h, bowl, x0, {"max_iter": 200, "scaled": P != 5}, False))
        cases.append((f"quartic P={P} flaky eigh", bowl_h, bowl, x0, {"max_iter": 200}, True))
    cn = torch.tensor([[-1.0, 0.5], [1.0, 1.0], [0.3, -0.2]], dtype=dt)

    def nf(x, idx=None):
        cc = cn if idx is None else cn[idx]
        return ((x - cc) ** 2).sum(-1) + 1.0

    def nf_h(x, idx=None):
        cc = cn if idx is None else cn[idx]
        H = 2.0 * torch.eye(2, dtype=x.dtype).expand(x.shape[0], 2, 2).clone()
        H[x[:, 0] > 0.5] = torch.nan
        return nf(x, idx), 2.0 * (x - cc), H

    cases.append(("nonfinite Hessian", nf_h, nf, torch.zeros(3, 2, dtype=dt), {"max_iter": 50, "radius": 0.3}, False))

    def kink(x, idx=None):
        return (x - 0.3).abs().sum(-1) + 1e-3 * x.square().sum(-1)

    def kink_h(x, idx=None):
        g = torch.sign(x - 0.3) + 2e-3 * x
        H = 2e-3 * torch.eye(x.shape[1], dtype=x.dtype).expand(x.shape[0], -1, -1).clone()
        return kink(x), g, H

    cases.append(("kink (stalls)", kink_h, kink, torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], dtype=dt),
                  {"max_iter": 400, "dtol": 0.0}, False))
    return cases


def _flaky_eigh(real):
    """torch.linalg.eigh refusing any batch holding a matrix whose M[0, 0] has its 3rd decimal
    digit 7 (deterministic: the same matrices are refused in every path)."""
    def eigh(M):
        if bool(((M[..., 0, 0].abs() * 1e3).floor() % 10 == 7).any()):
            raise torch.linalg.LinAlgError("refused")
        return real(M)
    return eigh


def run_solver_cases(original) -> tuple[int, int]:
    """Each solver case with the original trust_region and today's (speculate off and on)."""
    n_ok = 0
    cases = _solver_cases()
    for name, hess, obj, x0, kw, flaky in cases:
        real = torch.linalg.eigh
        if flaky:
            torch.linalg.eigh = _flaky_eigh(real)
        try:
            want = original["newton"].trust_region(hess, obj, x0, **kw)
            got = {sp: newton.trust_region(hess, obj, x0, speculate=sp, **kw) for sp in (False, True)}
        finally:
            torch.linalg.eigh = real
        bad = {sp: [k for k, v in _fields(want).items() if not _same(v, getattr(r, k))] for sp, r in got.items()}
        ok = not any(bad.values())
        n_ok += ok
        reasons = dict(sorted(__import__("collections").Counter(want.reasons()).items()))
        print(f"{'solver: ' + name:>32} R={x0.shape[0]} P={x0.shape[1]} it={want.n_iter.double().mean():6.1f} "
              f"jumps={int(want.extra['jumps'].sum()):3d} reasons {reasons} "
              + ("bitwise equal" if ok else f"DIFFER {bad}"), flush=True)
    return n_ok, len(cases)


def run_family_cases(original) -> tuple[int, int]:
    """The likelihood and hmoe fits (which call trust_region without speculation) with the
    original trust_region patched in and with today's: every OptimResult field."""
    from attnmoe.estimation.families import hmoe
    from attnmoe.estimation.families.hmoe import experiment as hmoe_experiment
    from attnmoe.estimation.families.likelihood import objective as lik
    from attnmoe.estimation.families.likelihood.settings import _settings, sample_data, start_points

    def fit_lik(name: str, n: int, seeds: list[int]):
        s = _settings()[name]
        X, y = sample_data(s, n, seeds)
        lik.fit_likelihood(s.fit_model, X, y, start_points(s, n, seeds), max_iter=60)

    def fit_hmoe(position: str, n: int, seeds: list[int]):
        hmoe.fit_block(hmoe.HMoESetting(position, 3), n, seeds, hmoe.HMoEConfig(n_test=200, max_iter=60))

    cases = [(f"likelihood {v}", lik, lambda v=v: fit_lik(v, 301, [0, 1, 2, 3, 4]))
             for v in ("topk-exact", "topk-over-K3", "contaminated-a", "mlogit-softmax-full-box", "temp-temperature")]
    cases.append(("hmoe G2", hmoe_experiment, lambda: fit_hmoe("G2", 120, [3, 4, 5])))
    n_ok = 0
    for name, module, run in cases:
        got = {}
        for kind, solver in (("original", original["newton"].trust_region), ("today", newton.trust_region)):
            saved = module.trust_region

            def rec(*a, solver=solver, kind=kind, **kw):
                got[kind] = solver(*a, **kw)
                return got[kind]

            module.trust_region = rec
            try:
                run()
            finally:
                module.trust_region = saved
        bad = [k for k, v in _fields(got["original"]).items() if not _same(v, getattr(got["today"], k))]
        n_ok += not bad
        res = got["original"]
        print(f"{'family: ' + name:>40} R={res.x.shape[0]} P={res.x.shape[1]} it={res.n_iter.double().mean():6.1f} "
              + ("bitwise equal" if not bad else f"DIFFER {bad}"), flush=True)
    return n_ok, len(cases)


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
    p.add_argument("--assemblies", default="torch")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    original = load_original(args.ref)
    cases = QUICK if args.quick else CASES
    t0 = time.perf_counter()
    s_ok, s_cases = run_solver_cases(original)
    k_ok, k_cases = run_family_cases(original) if not args.quick else (0, 0)
    f_ok, f_cases, n_fits = 0, 0, 0
    for assembly in args.assemblies.split(","):
        for case in cases:
            setting = get_setting(case[0])
            if assembly == "numba" and (setting.fit_layout.normalization != "softmax"
                                        or setting.expert not in ("linear", "sigmoid")):
                continue
            ok, R, _ = run_case(case, assembly, original)
            f_cases += 1
            f_ok += ok
            n_fits += R
    n_ok, n_cases = s_ok + k_ok + f_ok, s_cases + k_cases + f_cases
    print(f"{n_ok}/{n_cases} cases bitwise equal against {args.ref}: solver problems {s_ok}/{s_cases} (original, "
          f"today speculating and not), likelihood/hmoe fits {k_ok}/{k_cases} (original, today), least-squares "
          f"cases {f_ok}/{f_cases} ({n_fits} fits, each run {', '.join(KINDS)}); {time.perf_counter() - t0:.0f} s")
    return 0 if n_ok == n_cases else 1


if __name__ == "__main__":
    sys.exit(main())
