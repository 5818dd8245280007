"""A transformer forecaster: iTransformer (Liu et al., arXiv 2310.06625), variates as tokens.

Each of the ``C`` channels' whole input window (length ``L``) is one token; attention mixes
channels, the feed-forward network acts on each channel's representation. With series
normalisation (RevIN-style instance normalisation, Kim et al. 2022, as in the iTransformer
reference code, ``use_norm=True``), for an input ``x`` of shape ``(B, L, C)``::

    mu = mean_t x,  s = sqrt(var_t x + 1e-5)            # (B, 1, C), population variance
    u  = ((x - mu) / s)^T W_emb + b_emb                  # (B, C, d_model): embed each channel's L values
    u' = LN(u + Dropout(Attn(u)))                        # post-norm encoder layer (as the paper's code)
    u  = LN(u' + Dropout(GELU(u' W_1 + b_1) W_2 + b_2))  #   x e_layers, then a final LayerNorm
    y  = (u W_proj + b_proj)^T * s + mu                  # (B, H, C)

With ``n_targets`` (TSL's ``MS`` / ``S`` features), only the last ``n_targets`` channel tokens
are projected: ``y`` is ``(B, H, n_targets)``, the same numbers as slicing the full output (the
projection acts on each token alone), as TSL's ``outputs[:, :, f_dim:]``.

Attention is ``attnmoe.attention.Attention`` (non-causal) built from a variant NAME, so every
variant plugs in. Departure from the reference code, written down in ``docs/tasks.md``: the
time-stamp covariates (``x_mark``, extra tokens in the reference code) are not used; the model
sees only the channels.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnmoe.attention import Attention
from attnmoe.attention.variants import attention_kwargs


class InvertedEncoderLayer(nn.Module):
    """Post-norm encoder layer of iTransformer: ``LN(x + Attn(x))`` then ``LN(x + FFN(x))``.

    Args:
        d_model: token width.
        heads: attention heads.
        d_ff: feed-forward hidden width.
        attention: attention variant name.
        dropout: dropout on attention weights, attention output and FFN.
    """

    def __init__(self, d_model: int, heads: int, d_ff: int, *, attention: str, dropout: float) -> None:
        super().__init__()
        self.attn = Attention(d_model, heads, causal=False, dropout=dropout, **attention_kwargs(attention))
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, d_model) -> (B, C, d_model)
        x = self.norm1(x + self.dropout(self.attn(x)))
        return self.norm2(x + self.ff(x))


class ITransformer(nn.Module):
    """iTransformer forecaster (variates as tokens, instance normalisation).

    Args:
        seq_len: input length ``L``.
        pred_len: horizon ``H``.
        n_channels: number of channels ``C`` (checked in ``forward``).
        d_model: token width.
        d_ff: feed-forward hidden width.
        e_layers: encoder layers.
        heads: attention heads (must divide ``d_model``).
        attention: attention variant name.
        dropout: dropout probability.
        use_norm: instance (series) normalisation of each input window.
        n_targets: forecast only the last ``n_targets`` channels (default: all ``C``).
    """

    def __init__(
        self,
        *,
        seq_len: int,
        pred_len: int,
        n_channels: int,
        d_model: int = 256,
        d_ff: int = 256,
        e_layers: int = 2,
        heads: int = 8,
        attention: str = "softmax",
        dropout: float = 0.1,
        use_norm: bool = True,
        n_targets: int | None = None,
    ) -> None:
        super().__init__()
        n_targets = n_channels if n_targets is None else n_targets
        for name, val in (("seq_len", seq_len), ("pred_len", pred_len), ("n_channels", n_channels),
                          ("d_model", d_model), ("d_ff", d_ff), ("e_layers", e_layers), ("heads", heads),
                          ("n_targets", n_targets)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if n_targets > n_channels:
            raise ValueError(f"n_targets ({n_targets}) must be <= n_channels ({n_channels})")
        self.seq_len, self.pred_len, self.n_channels, self.use_norm = seq_len, pred_len, n_channels, use_norm
        self.n_targets = n_targets
        self.embed = nn.Linear(seq_len, d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            InvertedEncoderLayer(d_model, heads, d_ff, attention=attention, dropout=dropout)
            for _ in range(e_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.projector = nn.Linear(d_model, pred_len)

    def forward(self, x: Tensor) -> Tensor:
        """Forecast ``(B, H, n_targets)`` (the last channels) from an input window ``x`` ``(B, L, C)``."""
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.n_channels:
            raise ValueError(
                f"expected input (B, {self.seq_len}, {self.n_channels}), got {tuple(x.shape)}"
            )
        if self.use_norm:
            mu = x.mean(dim=1, keepdim=True).detach()  # (B, 1, C)
            x = x - mu
            s = (x.var(dim=1, keepdim=True, unbiased=False) + 1e-5).sqrt().detach()  # (B, 1, C)
            x = x / s
        u = self.embed_dropout(self.embed(x.transpose(1, 2)))  # (B, C, d_model)
        for layer in self.layers:
            u = layer(u)
        k = self.n_targets
        y = self.projector(self.norm(u[:, -k:])).transpose(1, 2)  # (B, H, k)
        if self.use_norm:
            y = y * s[..., -k:] + mu[..., -k:]
        return y
