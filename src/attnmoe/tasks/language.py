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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

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

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits ``(B, T, vocab_size)`` for ids ``idx`` ``(B, T)``, ``T <= block_size``."""
        if idx.ndim != 2 or idx.dtype != torch.long:
            raise ValueError(f"expected int64 ids (B, T), got {idx.dtype} {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        h = self.dropout(self.tok_embed(idx) + self.pos_embed(pos))  # (B, T, dim)
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))  # (B, T, vocab)


def _init_gpt(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
