"""Sigmoid attention without a ``(T, S)`` weight matrix: query chunks, recomputed in backward.

Sigmoid attention (Ramapuram et al., arXiv 2409.04431) weighs key s for query t by
``p_ts = sigmoid(l_ts)`` with ``l_ts = q_t . k_s * scale + b + m_ts`` (``m`` an additive
mask, ``-inf`` where the key is hidden), and outputs ``y_t = sum_s p_ts v_s``.  There is no
normaliser across keys, so every query row is independent and can be computed on its own:

forward, for each chunk ``C`` of at most ``chunk`` queries::

    P_C = sigmoid(Q_C K^T * scale + b + M_C)       # (B, H, c, S), c = |C|
    Y_C = P_C V                                     # (B, H, c, Dv)

backward (``G = dL/dY``), recomputing ``P_C`` instead of storing it (as FlashAttention
does for softmax, arXiv 2205.14135)::

    dV   += P_C^T G_C
    dP_C  = G_C V^T
    dL_C  = dP_C * P_C * (1 - P_C)                  # sigmoid'(l) = p (1 - p)
    dQ_C  = dL_C K * scale
    dK   += dL_C^T Q_C * scale

Only one ``(B, H, c, S)`` block lives at a time, so memory is linear in T for a fixed
chunk; ``Q, K, V`` and the output are the only saved tensors.  With a causal mask
(query t at absolute position ``t + offset`` sees keys ``s <= t + offset``) a chunk ends
at ``i1`` needs only the keys ``s < i1 + offset``: the later ones are skipped (about half
the products at T = S), and the causal mask is built per chunk, never as ``(T, S)``.

The additive mask ``mask`` (key padding and user masks, already combined; no causal part)
is a constant: no gradient flows into it.  First-order gradients only
(``once_differentiable``); use the layer's reference path for double backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["CHUNK_ELEMENTS", "chunk_rows", "sigmoid_attention_chunked"]

CHUNK_ELEMENTS = 1 << 20
"""Target size (elements) of one ``(B, H, c, S)`` weight block; sets the chunk length c."""


def chunk_rows(batch_heads: int, n_keys: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Queries per chunk so that a ``(B*H, c, S)`` block holds about ``elements`` numbers."""
    return max(1, elements // max(1, batch_heads * n_keys))


def _chunk_logits(
    q_c: Tensor,
    k: Tensor,
    mask: Tensor | None,
    bias: float,
    scale: float,
    causal_offset: int | None,
    i0: int,
    i1: int,
    s_end: int,
) -> Tensor:
    """Weights ``P_C`` ``(B, H, i1-i0, s_end)`` for queries ``i0:i1`` and keys ``:s_end``."""
    p = torch.matmul(q_c, k[:, :, :s_end].transpose(-2, -1))  # (B, H, c, s_end)
    p.mul_(scale).add_(bias)
    if mask is not None:
        rows = mask[..., i0:i1, :s_end] if mask.shape[-2] != 1 else mask[..., :s_end]
        p.add_(rows)
    if causal_offset is not None:
        t = torch.arange(i0, i1, device=p.device)[:, None] + causal_offset  # (c, 1)
        s = torch.arange(s_end, device=p.device)[None, :]  # (1, s_end)
        p.masked_fill_(s > t, float("-inf"))
    return p.sigmoid_()  # sigmoid(-inf) = 0 exactly


def _key_end(i1: int, n_keys: int, causal_offset: int | None) -> int:
    return n_keys if causal_offset is None else min(n_keys, i1 + causal_offset)


class _SigmoidAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        bias: float,
        scale: float,
        causal_offset: int | None,
        chunk: int,
    ) -> Tensor:
        B, H, T, _ = q.shape
        S = k.shape[-2]
        out = q.new_zeros(B, H, T, v.shape[-1])
        for i0 in range(0, T, chunk):
            i1 = min(i0 + chunk, T)
            s_end = _key_end(i1, S, causal_offset)
            if s_end <= 0:
                continue  # no visible key: the output rows stay 0
            p = _chunk_logits(q[:, :, i0:i1], k, mask, bias, scale, causal_offset, i0, i1, s_end)
            out[:, :, i0:i1] = torch.matmul(p, v[:, :, :s_end])  # (B, H, c, Dv)
        ctx.save_for_backward(q, k, v, mask)
        ctx.args = (bias, scale, causal_offset, chunk)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, mask = ctx.saved_tensors
        bias, scale, causal_offset, chunk = ctx.args
        T, S = q.shape[-2], k.shape[-2]
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        grad_out = grad_out.contiguous()
        for i0 in range(0, T, chunk):
            i1 = min(i0 + chunk, T)
            s_end = _key_end(i1, S, causal_offset)
            if s_end <= 0:
                continue
            q_c = q[:, :, i0:i1]
            g_c = grad_out[:, :, i0:i1]  # (B, H, c, Dv)
            p = _chunk_logits(q_c, k, mask, bias, scale, causal_offset, i0, i1, s_end)
            dv[:, :, :s_end] += torch.matmul(p.transpose(-2, -1), g_c)  # (B, H, s_end, Dv)
            dp = torch.matmul(g_c, v[:, :, :s_end].transpose(-2, -1))  # (B, H, c, s_end)
            dl = torch.ops.aten.sigmoid_backward(dp, p)  # dp * p * (1 - p)
            dq[:, :, i0:i1] = torch.matmul(dl, k[:, :, :s_end]).mul_(scale)
            dk[:, :, :s_end] += torch.matmul(dl.transpose(-2, -1), q_c).mul_(scale)
        return dq, dk, dv, None, None, None, None, None


def sigmoid_attention_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: float,
    scale: float,
    mask: Tensor | None = None,
    causal_offset: int | None = None,
    chunk: int | None = None,
) -> Tensor:
    """``sigmoid(Q K^T * scale + bias + mask) V`` in query chunks (see the module docstring).

    Args:
        q: queries ``(B, H, T, D)``; k: keys ``(B, H, S, D)``; v: values ``(B, H, S, Dv)``.
        bias: the constant ``b`` added to every logit.
        scale: the logit scale (``1/sqrt(D)``).
        mask: additive float mask broadcastable to ``(B, H, T, S)`` (``-inf`` = hidden),
            without the causal part; treated as a constant.
        causal_offset: None, or ``o`` so that query t sees keys ``s <= t + o``.
        chunk: queries per chunk; None chooses it from :data:`CHUNK_ELEMENTS`.

    Returns:
        ``(B, H, T, Dv)``; a query with no visible key outputs 0.
    """
    if chunk is None:
        chunk = chunk_rows(q.shape[0] * q.shape[1], k.shape[-2])
    if mask is not None:
        mask = mask.detach()
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
    return _SigmoidAttention.apply(q, k, v, mask, float(bias), float(scale), causal_offset, chunk)
