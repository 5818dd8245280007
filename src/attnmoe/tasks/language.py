"""A character-level GPT (Radford et al. 2018/2019; layout of Karpathy's nanoGPT).

Every self-attention layer is a causal ``attnmoe.attention.Attention`` built from a variant NAME.
For ids ``t_1..t_T``::

    h_0 = E[t] + P[1..T]                               # (B, T, dim), token + learned positions
    h'_l = h_{l-1} + Attn_causal(LN(h_{l-1}))          # pre-norm blocks, l = 1..n_layer
    h_l  = h'_l + MLP(LN(h'_l)),  MLP(u) = GELU(u W_1 + b_1) W_2 + b_2, hidden 4 dim
    logits = LN(h_L) E^T                               # weight tying (Press & Wolf, arXiv 1608.05859)

Initialisation as nanoGPT (GPT-2): every Linear weight and both embeddings ``N(0, 0.02^2)``,
biases 0, and the two residual output projections of each block (the attention ``out_proj``
and the MLP ``proj``) ``N(0, (0.02 / sqrt(2 n_layer))^2)``.

The task ``lm`` (registered at the end of this file, beside its reference recipe):
``shakespeare`` or any UTF-8 text file; headline metric ``val_loss`` (nats/char).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmoe.attention import Attention, KVCache
from attnmoe.tasks.data import load_char_corpus, resolve_data_dir
from attnmoe.tasks.data.text import BlockDataset
from attnmoe.tasks.registry import (
    EVAL_BATCH,
    Task,
    TaskEntry,
    check_model_memory,
    device_of,
    in_eval_mode,
    int_size,
    make_task,
    register_task,
    split_of,
)
from attnmoe.tasks.spec import RunSpec
from attnmoe.tasks.vision import PreNormBlock


class GPT(nn.Module):
    """Causal pre-norm transformer language model with tied input/output embeddings.

    Args:
        vocab_size: number of token ids.
        block_size: maximal context length ``T``.
        n_layer: number of blocks.
        n_head: attention heads (must divide ``n_embd``).
        n_embd: model width.
        attention: attention variant name (always used with ``causal=True``).
        dropout: dropout probability (embeddings, attention, MLP).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        block_size: int,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        attention: str = "softmax",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, val in (("vocab_size", vocab_size), ("block_size", block_size),
                          ("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        self.block_size = block_size
        self.tok_embed = nn.Embedding(vocab_size, n_embd)
        self.pos_embed = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            PreNormBlock(n_embd, n_head, mlp_ratio=4.0, attention=attention, causal=True, dropout=dropout)
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_embed.weight  # weight tying
        self.apply(_init_gpt)
        residual_std = 0.02 / math.sqrt(2 * n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, std=residual_std)

    def forward(self, idx: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        """Next-token logits ``(B, T, vocab_size)`` for ids ``idx`` ``(B, T)``.

        ``caches``: one :class:`KVCache` per block for incremental decoding; ``idx`` then
        continues the cached tokens (positions start at the cache length). Cached plus new
        tokens must fit in ``block_size``.
        """
        if idx.ndim != 2 or idx.dtype != torch.long:
            raise ValueError(f"expected int64 ids (B, T), got {idx.dtype} {tuple(idx.shape)}")
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"need one KVCache per block ({len(self.blocks)}), got {len(caches)}")
        start = 0 if caches is None else len(caches[0])
        T = start + idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(start, T, device=idx.device)
        h = self.dropout(self.tok_embed(idx) + self.pos_embed(pos))  # (B, T, dim)
        for i, block in enumerate(self.blocks):
            h = block(h, None if caches is None else caches[i])
        return self.lm_head(self.ln_f(h))  # (B, T, vocab)


def cache_is_exact(model: GPT) -> bool:
    """Whether KV-cache decoding reproduces recomputing the prefix.

    Not for a stack of sigmoid-attention layers with the default bias ``-log n``: ``n`` is
    the number of keys of the call, so the hidden states of earlier tokens (the next
    layer's cached keys) depend on how long the sequence was when they were computed.
    """
    length_dependent = any(
        isinstance(m, Attention) and m.score == "sigmoid" and m.sigmoid_bias is None
        for m in model.modules()
    )
    return not (length_dependent and len(model.blocks) > 1)


@torch.no_grad()
def generate(
    model: GPT,
    idx: Tensor,
    n_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Append ``n_tokens`` sampled ids to ``idx`` ``(B, T0)``; returns ``(B, T0 + n_tokens)``.

    The ids of :func:`generate_stream` (see there), concatenated after ``idx``.
    """
    new = list(generate_stream(model, idx, n_tokens, temperature=temperature, top_k=top_k,
                               generator=generator, use_cache=use_cache))
    return torch.cat([idx, *new], dim=1)


@torch.no_grad()
def generate_stream(
    model: GPT,
    idx: Tensor,
    n_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[Tensor]:
    """Yield ``n_tokens`` sampled ids ``(B, 1)`` one at a time after the prompt ``idx`` ``(B, T0)``.

    Each next id is drawn from ``softmax(logits / temperature)`` restricted to the ``top_k``
    largest logits (all when None). The context is the last ``block_size`` ids (nanoGPT's
    crop). With ``use_cache`` the blocks keep a :class:`KVCache`, so each new id costs one
    token's forward until the context is full; from then on the window slides, positions
    shift, and every step recomputes the window (as without the cache).  Both ways give the
    same logits up to rounding (tested); where they would not (:func:`cache_is_exact`) the
    cache is not used.  Only the window is kept, so memory does not grow with ``n_tokens``
    (``attnmoe sample`` streams its text).  The model is put in eval mode.

    Raises:
        ValueError: bad arguments, or logits that are not finite (NaN or infinite weights).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if idx.ndim != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be (B, T0) with T0 >= 1, got {tuple(idx.shape)}")
    model.eval()
    window = model.block_size
    caches = [KVCache() for _ in model.blocks] if use_cache and cache_is_exact(model) else None
    context = idx[:, -window:]  # (B, <= window): the last ids, all the model ever sees
    logits = model(context, caches)[:, -1]  # (B, V)
    for step in range(n_tokens):
        if not torch.isfinite(logits).all():
            raise ValueError(f"the model's logits are not finite at generated token {step} "
                             "(NaN or infinite weights?)")
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        yield nxt
        context = torch.cat([context, nxt], dim=1)[:, -window:]
        if step == n_tokens - 1:
            break
        if caches is not None and len(caches[0]) < window:
            logits = model(nxt, caches)[:, -1]
        else:
            logits = model(context)[:, -1]


def _init_gpt(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


# ---------------------------------------------------------------- task: recipe and builder

TEXT_DATASETS = {"shakespeare": "shakespeare/shakespeare_complete.txt"}

LM_RECIPE = RunSpec(
    task="lm", dataset="shakespeare",
    steps=2000, batch_size=12, lr=1e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1,
    beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=250, checkpoint_interval=500,
    model={"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0, "eval_blocks": 2048},
)
"""nanoGPT's CPU recipe for shakespeare_char (4 layers, 4 heads, 128 wide, block 64, batch 12,
2,000 steps, lr 1e-3 -> 1e-4 cosine, warm-up 100, AdamW betas (0.9, 0.99), weight decay 0.1,
clip 1.0, dropout 0). ``eval_blocks``: validation blocks per evaluation (see ``docs/tasks.md``)."""


def lm_recipe(dataset: str) -> RunSpec:
    """The reference recipe of the language task (the same for every text)."""
    return replace(LM_RECIPE, dataset=dataset)


def _lm_loss(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch  # (B, T), (B, T)
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@register_task("lm", recipe=lm_recipe, primary_metric="val_loss", monitor="val_loss", lower_is_better=True,
               throughput_unit="tokens", datasets=lambda: tuple(TEXT_DATASETS), paths=True)
def build_lm(spec: RunSpec, data_dir: Path | None, entry: TaskEntry) -> Task:
    """Character GPT on ``shakespeare`` or any UTF-8 text file; loss = mean next-character
    cross-entropy (nats/char); metric ``val_loss`` over non-overlapping blocks of the
    validation split (no test split: 90/10 protocol, as nanoGPT)."""
    if spec.dataset in TEXT_DATASETS:
        path = resolve_data_dir(data_dir) / TEXT_DATASETS[spec.dataset]
    else:
        path = Path(spec.dataset)
    corpus = load_char_corpus(path)
    sizes = dict(spec.model)
    eval_blocks = sizes.pop("eval_blocks")
    block = int(sizes["block_size"])
    check_model_memory(lambda: GPT(vocab_size=corpus.vocab_size, attention=spec.attention, **sizes), spec,
                       floats_per_example=block
                       * (corpus.vocab_size + int_size(sizes["n_embd"]) * int_size(sizes["n_layer"])))
    torch.manual_seed(spec.seed)
    model = GPT(vocab_size=corpus.vocab_size, attention=spec.attention, **sizes)
    train_data, val_data = BlockDataset(corpus.train, block), BlockDataset(corpus.val, block)
    blocks = {"train": train_data, "val": val_data}

    # validation blocks: non-overlapping, evenly spread over the whole split, fixed for the run
    n_val_blocks = len(corpus.val) // (block + 1)
    chosen = torch.arange(n_val_blocks) if eval_blocks is None or eval_blocks >= n_val_blocks else \
        torch.linspace(0, n_val_blocks - 1, int(eval_blocks)).round().long()
    val_starts = chosen * (block + 1)

    def get_batch(split: str, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        data = split_of(blocks, split, "lm")
        starts = torch.randint(len(data), (batch_size,), generator=generator)
        return data.batch(starts)

    @in_eval_mode
    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        if split != "val":
            raise ValueError(f"task 'lm' evaluates the 'val' split only (90/10 protocol), got {split!r}")
        device = device_of(model)
        total = 0.0
        for start in range(0, len(val_starts), EVAL_BATCH):
            x, y = val_data.batch(val_starts[start : start + EVAL_BATCH])
            logits = model(x.to(device))  # (b, T, V)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1),
                                           reduction="sum"))
        return {"val_loss": total / (len(val_starts) * block)}

    return make_task(
        entry, spec, f"lm/{spec.dataset}/{spec.attention}",
        model=model, train_data=train_data, val_data=val_data, test_data=None,
        loss_fn=_lm_loss, evaluate=evaluate, get_batch=get_batch,
        info={"source": corpus.source, "chars": "".join(corpus.chars), "vocab_size": corpus.vocab_size, "n_train_chars": len(corpus.train),
              "n_val_chars": len(corpus.val), "n_unk_val": corpus.n_unk_val, "unk_id": corpus.unk_id,
              "n_eval_blocks": len(val_starts), "eval_tokens": len(val_starts) * block},
    )
