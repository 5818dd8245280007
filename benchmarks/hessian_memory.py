"""Where the least-squares Hessian's time goes: the batched matrix product's rate by block size,
and the product cache / block size choices of ``families/least_squares/objective.py``.

    python benchmarks/hessian_memory.py [--settings monomial-sigmoid-exact,polynomial-sigmoid-over]

(1) ``torch.bmm`` of the coefficient × feature-product shapes, (m, Q, L) @ (m, L, U) with L = 2048
    (one pass), at m = 12 (the operands of a block fit in cache) and m = 64 (they do not), against a
    1024² float64 GEMM, all in this run, one thread: GFLOP/s each.
(2) the Hessian call of R = 64 replicates at n = 1e3 and 1e4 under five (product cache, block
    bytes) choices, best of 4 interleaved repeats, as ratios to the default (cache on, 2 MB); every
    choice's output is checked bitwise equal to the default's (the objective's invariance).
"""

from __future__ import annotations

import argparse
import time

import torch

import attnmoe.estimation.families.least_squares.objective as O
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample


def _best(fn, k: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bmm_rates() -> None:
    A = torch.randn(1024, 1024, dtype=torch.float64)
    gemm = 2 * 1024**3 / _best(lambda: A @ A) / 1e9
    print(f"GEMM 1024^2 float64: {gemm:.1f} GFLOP/s")
    for m, Q, U in ((12, 15, 22), (64, 15, 22), (8, 45, 36), (64, 45, 36)):
        C = torch.randn(m, Q, 2048, dtype=torch.float64)
        Pm = torch.randn(m, 2048, U, dtype=torch.float64)
        rate = 2 * m * Q * 2048 * U / _best(lambda: torch.bmm(C, Pm)) / 1e9
        mb = m * (Q + U) * 2048 * 8 / 2**20
        print(f"bmm m={m} Q={Q} U={U} (operands {mb:.1f} MiB): {rate:.1f} GFLOP/s = {rate / gemm:.2f} x GEMM")


CHOICES = (("cache, 2 MB", 1 << 29, 1 << 21), ("no cache, 2 MB", 0, 1 << 21), ("cache, 512 KB", 1 << 29, 1 << 19),
           ("no cache, 512 KB", 0, 1 << 19), ("no cache, 8 MB", 0, 1 << 23))


def cache_choices(names: list[str], R: int = 64) -> None:
    default_cache, default_block = O.PRODUCT_CACHE_BYTES, dict(O.BLOCK_BYTES)
    try:
        for name in names:
            for n in (1000, 10000):
                s = get_setting(name)
                X, y = sample(s, n, list(range(R)))
                flat = near_truth_init(s.fit_layout, s.true_params(), list(range(R)))
                objs = {}
                for label, cache, _ in CHOICES:
                    O.PRODUCT_CACHE_BYTES = cache
                    objs[label] = O.LeastSquaresObjective(s.fit_layout, X, y)
                best = {label: float("inf") for label, _, _ in CHOICES}
                ref = None
                for _ in range(4):
                    for label, _, block in CHOICES:
                        O.BLOCK_BYTES = {"cpu": block}
                        t0 = time.perf_counter()
                        out = objs[label].hessian(flat)
                        best[label] = min(best[label], time.perf_counter() - t0)
                        ref = out if ref is None else ref
                        if not all(torch.equal(a, b) for a, b in zip(ref, out)):
                            raise AssertionError(f"{name} n={n} {label}: not bitwise equal to the default")
                base = best[CHOICES[0][0]]
                print(f"{name} n={n}: " + "; ".join(f"{k} {1e3 * v / R:.3f} ms/fit ({base / v:.2f}x)"
                                                     for k, v in best.items()), flush=True)
    finally:
        O.PRODUCT_CACHE_BYTES, O.BLOCK_BYTES = default_cache, default_block


def ceiling(names: list[str], R: int = 64) -> None:
    A = torch.randn(1024, 1024, dtype=torch.float64)
    for name in names:
        for n in (1000, 10000):
            s = get_setting(name)
            X, y = sample(s, n, list(range(R)))
            flat = near_truth_init(s.fit_layout, s.true_params(), list(range(R)), 0.3)
            obj = O.LeastSquaresObjective(s.fit_layout, X, y)
            G, E = obj._matrices(flat)
            Q, U, L = obj.qi.numel(), obj.U, min(O.CHUNK, obj.xi.shape[1])
            size = max(1, O.BLOCK_BYTES["cpu"] // (8 * L * max(Q, U)))
            C = torch.randn(R, Q, L, dtype=torch.float64)
            layout = s.fit_layout

            def logits() -> None:
                for lo in range(0, obj.xi.shape[1], O.CHUNK):
                    xi = obj.xi[:, lo : lo + O.CHUNK].transpose(1, 2)
                    u, z = torch.bmm(G, xi), torch.bmm(E, xi)
                    torch.softmax(u, 1) if layout.normalization == "softmax" else torch.sigmoid(u)
                    O._activation(layout.expert.name, z, second=True)

            def product() -> None:
                for b in range(0, R, size):
                    for lo in range(0, obj.xi.shape[1], O.CHUNK):
                        p = obj.products[b : b + size, lo : lo + O.CHUNK]
                        torch.bmm(C[b : b + size, :, : p.shape[1]], p)

            parts = {"call": lambda: obj.hessian(flat), "logits": logits, "product": product, "gemm": lambda: A @ A}
            best = {k: float("inf") for k in parts}
            for f in parts.values():
                f()
            for _ in range(5):
                for k, f in parts.items():
                    t0 = time.perf_counter()
                    f()
                    best[k] = min(best[k], time.perf_counter() - t0)
            gemm = 2 * 1024**3 / best["gemm"] / 1e9
            flops = obj.matmul_flops(R)
            floor = best["logits"] + best["product"]
            print(f"{name} n={n} Q={Q} U={U}: call {1e3 * best['call'] / R:.3f} ms/fit = "
                  f"{100 * flops / best['call'] / 1e9 / gemm:.1f} % of GEMM ({gemm:.0f} GFLOP/s); logits "
                  f"{1e3 * best['logits'] / R:.3f} + product {1e3 * best['product'] / R:.3f} ms/fit "
                  f"(product {2 * obj.xi.shape[1] * Q * U * R / best['product'] / 1e9:.1f} GFLOP/s) -> ceiling "
                  f"{best['call'] / floor:.2f}x = {100 * flops / floor / 1e9 / gemm:.1f} % of GEMM", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="monomial-sigmoid-exact,polynomial-sigmoid-over")
    ap.add_argument("--ceiling-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}")
    if not args.ceiling_only:
        bmm_rates()
        cache_choices(args.settings.split(","))
    ceiling(args.settings.split(",") + ["polynomial-linear-exact"])
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
