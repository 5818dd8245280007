"""Speed of a swapped ``transformers`` model against the original, as ratios within one run.

A small randomly initialised decoder (Llama by default: GQA and RoPE; ``--family qwen3``
adds q/k norms and ``head_dim``; ``gpt2``) is built twice from the same weights: the
original with ``transformers``' SDPA attention, and a copy passed through
``attnmoe.integrations.transformers.swap_attention(model, variant)``.  One training step
= forward, cross-entropy on the logits, backward, gradients dropped.  The two models are
timed in interleaved rounds (one step each per round, in alternating order, after warm-up);
reported: the median time of each, the median of the per-round ratios swapped/original and
its interquartile range.  Two inputs: no padding (``attention_mask`` all ones, so both
models take SDPA's causal kernel) and left padding in one half of the batch (an explicit
mask).  A third row times greedy ``generate`` of ``--decode-tokens`` tokens after a
64-token prompt (no grad; the host's dynamic cache through the adapter).  Issue 23's bar:
softmax ratio <= 1.05 for the training step.

Run:  python benchmarks/bench_hf_swap.py --threads 1 --clock cpu        (shared machine)
      python benchmarks/bench_hf_swap.py --variants softmax gated-g1 --rounds 30
      python benchmarks/bench_hf_swap.py --quick                         (smoke test)
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def build(family: str, quick: bool) -> torch.nn.Module:
    import transformers

    width, layers = (64, 2) if quick else (256, 4)
    common = {"vocab_size": 512, "hidden_size": width, "intermediate_size": width * 8 // 3,
              "num_hidden_layers": layers, "num_attention_heads": 8, "num_key_value_heads": 4,
              "max_position_embeddings": 1024}
    if family == "llama":
        cfg, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    elif family == "qwen3":
        cfg = transformers.Qwen3Config(**common, head_dim=width // 8)
        cls = transformers.Qwen3ForCausalLM
    else:
        cfg = transformers.GPT2Config(vocab_size=512, n_embd=width, n_layer=layers, n_head=8,
                                      n_positions=1024)
        cls = transformers.GPT2LMHeadModel
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return cls(cfg).train()


def make_step(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    def step() -> None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        for p in model.parameters():
            p.grad = None

    return step


def make_generate(model: torch.nn.Module, ids: torch.Tensor, tokens: int):
    def step() -> None:
        with torch.no_grad():
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                           pad_token_id=0)

    return step


def time_pair(a, b, rounds: int, warmup: int, clock) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for r in range(rounds):
        for name, fn in ((("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))):
            t0 = clock()
            fn()
            (ta if name == "a" else tb).append(clock() - t0)
    return ta, tb


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="llama", choices=["llama", "qwen3", "gpt2"])
    ap.add_argument("--variants", nargs="+", default=["softmax"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32, help="0: no generate row")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--quick", action="store_true", help="tiny model and input, 4 rounds")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    from attnmoe.integrations.transformers import swap_attention

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.seq, args.rounds, args.warmup = 2, 32, 4, 1
        args.decode_tokens = min(args.decode_tokens, 4)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    original = build(args.family, args.quick)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (args.batch, args.seq), generator=g)
    full = torch.ones_like(ids)
    padded = full.clone()
    padded[: args.batch // 2, : args.seq // 4] = 0  # left padding in half of the batch
    print(f"# bench_hf_swap: {args.family}, B={args.batch}, T={args.seq}, "
          f"{sum(p.numel() for p in original.parameters())} parameters, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, clock {args.clock}, "
          f"{args.rounds} rounds, {platform.processor() or platform.machine()}")
    print("| variant | input | original ms | swapped ms | ratio (median of rounds) | IQR |")
    print("|---|---|---:|---:|---:|---|")
    results = []
    for variant in args.variants:
        swapped = swap_attention(copy.deepcopy(original), variant).train()
        cases = [("no padding", make_step(original, ids, full), make_step(swapped, ids, full)),
                 ("left padding", make_step(original, ids, padded),
                  make_step(swapped, ids, padded))]
        if args.decode_tokens > 0:
            prompt = ids[:, : min(64, args.seq)]
            cases.append((f"generate {args.decode_tokens} tokens",
                          make_generate(original, prompt, args.decode_tokens),
                          make_generate(swapped, prompt, args.decode_tokens)))
        for label, step_a, step_b in cases:
            if not label.startswith("generate"):
                original.train()
                swapped.train()
            else:
                original.eval()
                swapped.eval()
            ta, tb = time_pair(step_a, step_b, args.rounds, args.warmup, clock)
            ratios = [b / a for a, b in zip(ta, tb)]
            lo, med, hi = quartiles(ratios)
            row = {"variant": variant, "input": label, "original_ms": 1e3 * statistics.median(ta),
                   "swapped_ms": 1e3 * statistics.median(tb), "ratio": med, "ratio_q1": lo,
                   "ratio_q3": hi}
            results.append(row)
            print(f"| {variant} | {label} | {row['original_ms']:.1f} | {row['swapped_ms']:.1f} "
                  f"| {med:.3f} | {lo:.3f}-{hi:.3f} |", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
