"""Speed of the attention variants relative to the plain softmax layer (same run).

Forward + backward of ``Attention(dim, heads, **attention_kwargs(name))`` on float32
inputs ``(B, T, dim)`` that require grad (as inside a network), loss ``y.sum()``.
Variants are timed in interleaved rounds (every variant once per round, after
warm-up) and the median per variant is reported; ratios divide by the plain softmax
layer's median from the same rounds.

Ideal ratio = FLOPs(variant) / FLOPs(plain), counting matrix products only
(2 FLOPs per multiply-add; backward = 2x forward for every product, so the factor 3
of forward+backward cancels)::

    plain      F0 = 4 * 2*B*T*dim^2      (q, k, v, out projections)
                  + 2 * 2*B*T^2*dim      (Q K^T and A V over all heads)
    gate, elementwise  + 2*B*T*dim^2     (gate_proj: dim -> dim)
    gate, headwise     + 2*B*T*dim*H     (gate_proj: dim -> H)
    value activation, sigmoid scores: + 0 (elementwise only)

Run:  python benchmarks/bench_attention.py            (both issue shapes, wall clock)
      python benchmarks/bench_attention.py --threads 1 --clock cpu   (shared machine)
      python benchmarks/bench_attention.py --quick    (small shape, smoke test)

On a machine shared with other jobs, wall-clock medians swing with their load; the CPU
time of a single-threaded run counts only this process's work and is far steadier.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from attnmoe.attention import Attention, attention_kwargs

SHAPES = [(8, 256, 256, 4), (4, 1024, 256, 4)]  # (B, T, dim, heads)

# (label, variant name, use reference path)
VARIANTS: list[tuple[str, str, bool]] = [
    ("softmax (plain, SDPA)", "softmax", False),
    ("softmax, reference path", "softmax", True),
    ("active-gelu", "active-gelu", False),
    ("active-relu", "active-relu", False),
    ("active-silu", "active-silu", False),
    ("active-tanh", "active-tanh", False),
    ("gated-g1", "gated-g1", False),
    ("gated-g1-headwise", "gated-g1-headwise", False),
    ("gated-g2", "gated-g2", False),
    ("gated-g3", "gated-g3", False),
    ("gated-g4", "gated-g4", False),
    ("gated-g5", "gated-g5", False),
    ("active-gelu+gated-g1", "active-gelu+gated-g1", False),
    ("sigmoid", "sigmoid", True),
]


def ideal_ratio(kwargs: dict, B: int, T: int, dim: int, heads: int) -> float:
    """Matrix-product FLOPs of the variant over the plain layer's (see module docstring)."""
    plain = 4 * 2 * B * T * dim**2 + 2 * 2 * B * T**2 * dim
    extra = 0
    if kwargs.get("gate") is not None:
        out = heads if kwargs.get("gate_granularity") == "headwise" else dim
        extra = 2 * B * T * dim * out
    return (plain + extra) / plain


def make_step(layer: Attention, x: torch.Tensor, reference: bool) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x, reference=reference).sum().backward()

    return step


def bench_shape(
    B: int, T: int, dim: int, heads: int, warmup: int, rounds: int, clock: Callable[[], float]
) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(B, T, dim, requires_grad=True)
    steps = {}
    for label, name, ref in VARIANTS:
        layer = Attention(dim, heads, **attention_kwargs(name))
        steps[label] = make_step(layer, x, ref)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            t0 = clock()
            step()
            times[label].append(clock() - t0)
    med = {label: statistics.median(ts) for label, ts in times.items()}
    base = med["softmax (plain, SDPA)"]
    ref_softmax = med["softmax, reference path"]
    rows = []
    for label, name, _ref in VARIANTS:
        kw = attention_kwargs(name)
        ts = sorted(times[label])
        rows.append({
            "label": label,
            "median_ms": 1e3 * med[label],
            "iqr_ms": 1e3 * (ts[(3 * len(ts)) // 4] - ts[len(ts) // 4]),
            "ratio": med[label] / base,
            "ideal": ideal_ratio(kw, B, T, dim, heads),
            "vs_ref_softmax": med[label] / ref_softmax,
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as given)")
    ap.add_argument("--quick", action="store_true", help="one small shape, few rounds")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (robust on a shared machine "
        "when run with --threads 1)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    shapes = [(4, 128, 128, 4)] if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(
        f"float32, forward+backward, {args.clock} clock, median of {rounds} interleaved rounds "
        f"after {args.warmup} warm-up"
    )
    for B, T, dim, heads in shapes:
        rows = bench_shape(B, T, dim, heads, args.warmup, rounds, clock)
        print(f"\n(B, T, dim, heads) = ({B}, {T}, {dim}, {heads})\n")
        print("| variant | median ms | IQR ms | ratio to plain | ideal (FLOPs) | ratio - ideal | ratio to softmax ref |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['label']} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} | {r['ratio']:.3f} | "
                f"{r['ideal']:.3f} | {r['ratio'] - r['ideal']:+.3f} | {r['vs_ref_softmax']:.3f} |"
            )


if __name__ == "__main__":
    main()
