"""An attnmoe attention variant inside a ``transformers`` model: fine-tune, compare, probe.

For each seed: load a local model directory (``--model DIR``, with its tokenizer; nothing
is downloaded) or build a small randomly initialised Llama-style model from a config
(``--tiny``, character-level tokens from the text), make two copies with the same weights
-- the original and one passed through ``swap_attention(model, VARIANT)`` -- and train both
for ``--steps`` AdamW steps on the same batches of a text file (90/10 split by position).
Reported per seed and as mean ± std over seeds:

* the validation loss (nats/token) of both models at step 0 and after training, on the
  same fixed validation windows;
* the first-token attention share per layer (the attention-sink probe of Qiu et al.,
  arXiv 2505.06708: mean over heads and queries of the weight on the sequence's first
  token), before and after, for both models -- the original is probed through a
  ``softmax`` swap of a copy, which computes the same function (tests/test_hf_swap.py).

Run (the documented numbers, docs/transformers.md):
    python examples/hf_variants.py --tiny \
        --text $ATTNMOE_DATA_DIR/shakespeare/shakespeare_complete.txt \
        --variant gated-g1 --steps 200 --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attnmoe.attention import AttentionProbes
from attnmoe.integrations.transformers import swap_attention


def load_tokens(text_path: Path, model_dir: Path | None) -> tuple[torch.Tensor, int]:
    text = text_path.read_text(encoding="utf-8")
    if model_dir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        return torch.tensor(tok(text)["input_ids"], dtype=torch.long), len(tok)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), len(chars)


def build_model(model_dir: Path | None, vocab: int, seed: int, seq: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    if model_dir is not None:
        return transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, attn_implementation="sdpa", dtype=torch.float32
        )
    cfg = transformers.LlamaConfig(  # small Llama-style decoder: GQA, RoPE, RMSNorm, SwiGLU
        vocab_size=vocab, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(seq, 256),
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    return transformers.LlamaForCausalLM(cfg)


def windows(data: torch.Tensor, starts: torch.Tensor, seq: int) -> torch.Tensor:
    return torch.stack([data[s : s + seq + 1] for s in starts.tolist()])  # (B, seq + 1)


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_batches: list[torch.Tensor]) -> float:
    model.eval()
    loss = statistics.fmean(lm_loss(model, b).item() for b in val_batches)
    model.train()
    return loss


@torch.no_grad()
def first_token_share(model: torch.nn.Module, batch: torch.Tensor) -> list[float]:
    """Per-layer first-token share; an unswapped model is probed through a softmax swap."""
    from attnmoe.integrations.transformers import HFAttention

    probe_model = model
    if not any(isinstance(m, HFAttention) for m in model.modules()):
        probe_model = swap_attention(copy.deepcopy(model), "softmax")
    probe_model.eval()
    with AttentionProbes(probe_model) as probes:
        probe_model(input_ids=batch[:, :-1], use_cache=False)
    model.train()
    return [row["first_token_share"] for row in probes.summary().values()]


def train(model, data, starts_per_step, seq, lr, val_batches) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps = len(starts_per_step)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())))
    model.train()
    for starts in starts_per_step:
        loss = lm_loss(model, windows(data, starts, seq))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return evaluate(model, val_batches)


def run_seed(args, data, vocab, seed) -> dict:
    n_train = int(0.9 * len(data))
    train_data, val_data = data[:n_train], data[n_train:]
    g = torch.Generator().manual_seed(1000 + seed)
    hi_t, hi_v = len(train_data) - args.seq - 1, len(val_data) - args.seq - 1
    starts = [torch.randint(0, hi_t, (args.batch,), generator=g) for _ in range(args.steps)]
    gv = torch.Generator().manual_seed(12345)  # the same validation windows for every seed
    val = [windows(val_data, torch.randint(0, hi_v, (args.batch,), generator=gv), args.seq)
           for _ in range(args.val_batches)]
    original = build_model(args.model, vocab, seed, args.seq)
    swapped = swap_attention(copy.deepcopy(original), args.variant, gate_init=args.gate_init)
    out: dict = {"seed": seed}
    for name, model in (("original", original), ("swapped", swapped)):
        t0 = time.perf_counter()
        out[f"{name}_val_step0"] = evaluate(model, val)
        out[f"{name}_share_step0"] = first_token_share(model, val[0])
        out[f"{name}_val"] = train(model, train_data, starts, args.seq, args.lr, val)
        out[f"{name}_share"] = first_token_share(model, val[0])
        out[f"{name}_seconds"] = time.perf_counter() - t0
    return out


def mean_std(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="local transformers model directory")
    src.add_argument("--tiny", action="store_true", help="small random Llama-style config")
    ap.add_argument("--text", type=Path, required=True, help="UTF-8 training text")
    ap.add_argument("--variant", default="gated-g1")
    ap.add_argument("--gate-init", default="preserve", choices=["preserve", "half", "random"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write per-seed results as JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data, vocab = load_tokens(args.text, args.model)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args, data, vocab, seed))
        r = rows[-1]
        print(f"seed {seed}: val loss original {r['original_val_step0']:.4f} -> "
              f"{r['original_val']:.4f}, {args.variant} {r['swapped_val_step0']:.4f} -> "
              f"{r['swapped_val']:.4f} ({r['original_seconds'] + r['swapped_seconds']:.0f} s)",
              flush=True)
    n_layers = len(rows[0]["original_share"])
    print(f"\n{len(rows)} seeds x {args.steps} steps, batch {args.batch} x {args.seq} tokens, "
          f"vocab {vocab}, variant {args.variant}, gate_init {args.gate_init}; mean ± std\n")
    print("| model | val loss, step 0 | val loss, step N |")
    print("|---|---:|---:|")
    for name, label in (("original", "original (transformers SDPA)"),
                        ("swapped", f"swapped: {args.variant}")):
        print(f"| {label} | {mean_std([r[f'{name}_val_step0'] for r in rows])} "
              f"| {mean_std([r[f'{name}_val'] for r in rows])} |")
    diff = [r["swapped_val"] - r["original_val"] for r in rows]
    print(f"\nswapped - original val loss after training: {mean_std(diff)} (per seed: "
          + ", ".join(f"{d:+.4f}" for d in diff) + ")\n")
    print("| layer | share: original, step 0 | original, step N | swapped, step 0 "
          "| swapped, step N |")
    print("|---:|---:|---:|---:|---:|")
    for i in range(n_layers):
        cells = [mean_std([r[key][i] for r in rows]) for key in (
            "original_share_step0", "original_share", "swapped_share_step0", "swapped_share")]
        print(f"| {i} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "seeds": rows}, indent=1))


if __name__ == "__main__":
    main()
