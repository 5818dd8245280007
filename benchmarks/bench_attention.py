"""Speed of the attention variants, masks and KV-cache decoding, as ratios within one run.

Three tables, each timed in interleaved rounds (every case once per round, after warm-up),
medians reported, ratios against a baseline measured in the same rounds:

1. **variants** -- forward + backward of ``Attention(dim, heads, **attention_kwargs(name))``
   on float32 inputs ``(B, T, dim)`` that require grad (as inside a network), loss
   ``y.sum()``; baseline: the plain softmax layer (SDPA).  Sigmoid attention is timed on
   its chunked path (the default) and on the explicit reference path.
2. **masks** -- the same step with causal masking, a key-padding mask, an additive float
   ``(T, T)`` mask, for softmax (SDPA) and sigmoid (chunked); baseline: unmasked softmax.
3. **decoding** -- generating ``--decode-tokens`` tokens one at a time after a prompt of
   ``T/2`` tokens, forward only, ``torch.no_grad``: with a ``KVCache`` vs recomputing the
   whole prefix at every step (the only way before the cache); baseline: softmax with cache.

Ideal ratio (variants table) = FLOPs(variant) / FLOPs(plain), matrix products only
(2 FLOPs per multiply-add; backward = 2x forward for every product, so the factor 3 of
forward+backward cancels)::

    plain      F0 = 4 * 2*B*T*dim^2      (q, k, v, out projections)
                  + 2 * 2*B*T^2*dim      (Q K^T and A V over all heads)
    gate, elementwise  + 2*B*T*dim^2     (output_gate_proj: dim -> dim)
    gate, headwise     + 2*B*T*dim*H     (output_gate_proj: dim -> H)
    value activation, sigmoid scores: + 0 (elementwise only)

(The chunked sigmoid path, like SDPA's flash kernel, recomputes Q K^T in backward; both
are counted as the plain layer.)

Run:  python benchmarks/bench_attention.py --threads 1 --clock cpu   (shared machine)
      python benchmarks/bench_attention.py                           (wall clock)
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

from attnmoe.attention import Attention, KVCache, attention_kwargs

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
    ("sigmoid (chunked)", "sigmoid", False),
    ("sigmoid, reference path", "sigmoid", True),
]

MASKS = ["none", "causal", "padding", "float (T, T)", "causal+padding"]
DECODE_VARIANTS = ["softmax", "sigmoid", "active-gelu+gated-g1"]

Step = Callable[[], None]


def ideal_ratio(kwargs: dict, B: int, T: int, dim: int, heads: int) -> float:
    """Matrix-product FLOPs of the variant over the plain layer's (see module docstring)."""
    plain = 4 * 2 * B * T * dim**2 + 2 * 2 * B * T**2 * dim
    extra = 0
    if kwargs.get("output_gate") is not None:
        out = heads if kwargs.get("output_gate_granularity") == "headwise" else dim
        extra = 2 * B * T * dim * out
    return (plain + extra) / plain


def train_step(layer: Attention, x: torch.Tensor, **call: object) -> Step:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x, **call).sum().backward()

    return step


def decode_step(layer: Attention, x: torch.Tensor, prompt: int, cached: bool) -> Step:
    """Generate ``x.shape[1] - prompt`` tokens one by one (inputs given: a timing stand-in)."""

    @torch.no_grad()
    def step() -> None:
        if cached:
            cache = KVCache()
            layer(x[:, :prompt], cache=cache)
            for t in range(prompt, x.shape[1]):
                layer(x[:, t : t + 1], cache=cache)
        else:
            for t in range(prompt, x.shape[1]):
                layer(x[:, : t + 1])[:, -1]

    return step


def time_interleaved(
    steps: dict[str, Step], warmup: int, rounds: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            t0 = clock()
            step()
            times[label].append(clock() - t0)
    return times


def summarise(times: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    med = {label: statistics.median(ts) for label, ts in times.items()}
    out = {}
    for label, ts in times.items():
        s = sorted(ts)
        out[label] = {
            "median_ms": 1e3 * med[label],
            "iqr_ms": 1e3 * (s[(3 * len(s)) // 4] - s[len(s) // 4]),
            "ratio": med[label] / med[base],
        }
    return out


def mask_call(kind: str, B: int, T: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[:, -T // 8 :] = True  # the last eighth of every sequence is padding
    call: dict[str, torch.Tensor] = {}
    if "padding" in kind:
        call["key_padding_mask"] = pad
    if kind.startswith("float"):
        call["attn_mask"] = torch.randn(T, T, generator=g)
    return call


def print_table(title: str, head: str, rows: list[str]) -> None:
    print(f"\n{title}\n")
    print(head)
    print("|" + "---|" + "---:|" * (head.count("|") - 2))
    for r in rows:
        print(r)


def bench_shape(
    B: int, T: int, dim: int, heads: int, args: argparse.Namespace, clock: Callable[[], float]
) -> None:
    torch.manual_seed(0)
    x = torch.randn(B, T, dim, requires_grad=True)
    shape = f"(B, T, dim, heads) = ({B}, {T}, {dim}, {heads})"

    # 1. variants
    steps = {label: train_step(Attention(dim, heads, **attention_kwargs(name)), x, reference=ref)
             for label, name, ref in VARIANTS}
    times = time_interleaved(steps, args.warmup, args.rounds, clock)
    res = summarise(times, "softmax (plain, SDPA)")
    ref_sm = res["softmax, reference path"]["median_ms"]
    rows = []
    for label, name, _ in VARIANTS:
        r, ideal = res[label], ideal_ratio(attention_kwargs(name), B, T, dim, heads)
        rows.append(
            f"| {label} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} | {r['ratio']:.3f} | "
            f"{ideal:.3f} | {r['ratio'] - ideal:+.3f} | {r['median_ms'] / ref_sm:.3f} |"
        )
    print_table(f"variants, forward+backward, {shape}",
                "| variant | median ms | IQR ms | ratio to plain | ideal (FLOPs) | ratio - ideal "
                "| ratio to softmax ref |", rows)

    # 2. masks
    steps = {}
    for score in ("softmax", "sigmoid"):
        for kind in MASKS:
            layer = Attention(dim, heads, score=score, causal=kind.startswith("causal"))
            steps[f"{score}, {kind}"] = train_step(layer, x, **mask_call(kind, B, T))
    res = summarise(time_interleaved(steps, args.warmup, args.rounds, clock), "softmax, none")
    rows = [f"| {label} | {r['median_ms']:.1f} | {r['iqr_ms']:.1f} | {r['ratio']:.3f} |"
            for label, r in res.items()]
    print_table(f"masks, forward+backward, {shape}",
                "| score, mask | median ms | IQR ms | ratio to softmax, none |", rows)

    # 3. decoding
    n_new = args.decode_tokens
    xd = torch.randn(B, T // 2 + n_new, dim)
    steps = {}
    for name in DECODE_VARIANTS:
        layer = Attention(dim, heads, causal=True, **attention_kwargs(name)).eval()
        steps[f"{name}, KV cache"] = decode_step(layer, xd, T // 2, cached=True)
        steps[f"{name}, recompute prefix"] = decode_step(layer, xd, T // 2, cached=False)
    res = summarise(time_interleaved(steps, 1, args.decode_rounds, clock), "softmax, KV cache")
    rows = [f"| {label} | {r['median_ms']:.1f} | {r['median_ms'] / n_new:.2f} | "
            f"{r['iqr_ms']:.1f} | {r['ratio']:.3f} |" for label, r in res.items()]
    print_table(f"decoding {n_new} tokens after a {T // 2}-token prompt, forward only, {shape}",
                "| variant | median ms | ms / token | IQR ms | ratio to softmax, KV cache |",
                rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--decode-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as given)")
    ap.add_argument("--quick", action="store_true", help="one small shape, few rounds")
    ap.add_argument("--shape", default=None, help="one shape B,T,dim,heads instead of the two")
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
    shapes = SHAPES
    if args.shape:
        shapes = [tuple(int(v) for v in args.shape.split(","))]
    if args.quick:
        shapes, args.rounds, args.decode_rounds, args.decode_tokens = [(4, 128, 128, 4)], 3, 2, 8
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"float32, {args.clock} clock, median of {args.rounds} interleaved rounds "
          f"after {args.warmup} warm-up (decoding: {args.decode_rounds} rounds)")
    for B, T, dim, heads in shapes:
        bench_shape(B, T, dim, heads, args, clock)


if __name__ == "__main__":
    main()
