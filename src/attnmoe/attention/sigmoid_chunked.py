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

Only one ``(H, c, S)`` block (c queries of one sample) lives at a time, so memory is linear in T for a fixed
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

CHUNK_ELEMENTS = 1 << 19
"""Target size (elements) of one ``(H, c, S)`` weight block (2 MiB in float32; 2^18..2^20
measured within 10 % of each other at T = 1024, smaller blocks lose to per-call overhead)."""


def chunk_rows(heads: int, n_keys: int, elements: int | None = None) -> int:
    """Queries per block so that a ``(H, c, S)`` block holds about ``elements`` numbers
    (default :data:`CHUNK_ELEMENTS`); more than T means several whole samples per block."""
    elements = CHUNK_ELEMENTS if elements is None else elements
    return max(1, elements // max(1, heads * n_keys))


def _chunk_logits(
    q_c: Tensor,
    k: Tensor,
    shift: Tensor | float,
    causal_offset: int | None,
    i0: int,
    i1: int,
) -> Tensor:
    """Weights ``P_C`` ``(b, H, i1-i0, s)`` from pre-scaled queries ``q_c`` (rows ``i0:i1``)
    and keys ``k`` ``(b, H, s, D)``.

    ``shift`` is the bias plus the additive mask (a float, or a tensor broadcastable to
    ``(b, H, T, s)``), so one pass adds both.
    """
    p = torch.matmul(q_c, k.transpose(-2, -1))  # (b, H, c, s)
    s_end = k.shape[-2]
    if isinstance(shift, Tensor):
        rows = shift[..., i0:i1, :s_end] if shift.shape[-2] != 1 else shift[..., :s_end]
        p.add_(rows)
    else:
        p.add_(shift)
    if causal_offset is not None:
        t = torch.arange(i0, i1, device=p.device)[:, None] + causal_offset  # (c, 1)
        s = torch.arange(s_end, device=p.device)[None, :]  # (1, s)
        p.masked_fill_(s > t, float("-inf"))
    return p.sigmoid_()  # sigmoid(-inf) = 0 exactly


Block = tuple[slice, slice, slice, int, int]


def _blocks(B: int, T: int, S: int, chunk: int, causal_offset: int | None) -> list[Block]:
    """``(batch rows, query rows, key rows, i0, i1)`` of every block with a visible key.

    A block is ``chunk`` queries of one sample, or, when ``chunk >= T``, whole sequences of
    ``chunk // T`` samples; with a causal mask it reads only the keys ``< i1 + offset``.
    """
    per_b = max(1, chunk // T) if chunk >= T else 1
    rows = min(chunk, T)
    out = []
    for b0 in range(0, B, per_b):
        for i0 in range(0, T, rows):
            i1 = min(i0 + rows, T)
            s_end = S if causal_offset is None else min(S, i1 + causal_offset)
            if s_end > 0:  # else no visible key: the output rows stay 0
                out.append((slice(b0, b0 + per_b), slice(i0, i1), slice(0, s_end), i0, i1))
    return out


def _batch_rows(shift: Tensor | float, b: slice) -> Tensor | float:
    return shift[b] if isinstance(shift, Tensor) and shift.shape[0] != 1 else shift


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
        # (B, H, T, D) layouts, so no block's product copies k or v again; queries scaled
        # once here rather than in every (c, S) block
        qs = (q * scale).contiguous()
        k, v = k.contiguous(), v.contiguous()
        shift = bias if mask is None else mask + bias
        out = q.new_zeros(B, H, T, v.shape[-1])
        for b, i, s, i0, i1 in _blocks(B, T, k.shape[-2], chunk, causal_offset):
            p = _chunk_logits(qs[b, :, i], k[b, :, s], _batch_rows(shift, b), causal_offset, i0, i1)
            out[b, :, i] = torch.matmul(p, v[b, :, s])  # (b, H, c, Dv)
        ctx.save_for_backward(qs, k, v, mask)
        ctx.args = (bias, scale, causal_offset, chunk)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        qs, k, v, mask = ctx.saved_tensors  # qs = q * scale
        bias, scale, causal_offset, chunk = ctx.args
        shift = bias if mask is None else mask + bias
        B, _, T, _ = qs.shape
        dq = torch.zeros_like(qs)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        grad_out = grad_out.contiguous()
        for b, i, s, i0, i1 in _blocks(B, T, k.shape[-2], chunk, causal_offset):
            q_c, k_c, v_c = qs[b, :, i], k[b, :, s], v[b, :, s]
            g_c = grad_out[b, :, i]  # (b, H, c, Dv)
            p = _chunk_logits(q_c, k_c, _batch_rows(shift, b), causal_offset, i0, i1)
            dv[b, :, s] += torch.matmul(p.transpose(-2, -1), g_c)  # (b, H, s, Dv)
            dp = torch.matmul(g_c, v_c.transpose(-2, -1))  # (b, H, c, s)
            dl = torch.ops.aten.sigmoid_backward(dp, p)  # dp * p * (1 - p)
            dq[b, :, i] = torch.matmul(dl, k_c).mul_(scale)
            dk[b, :, s] += torch.matmul(dl.transpose(-2, -1), q_c)  # q_c holds the scale
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
        chunk: queries per block (one sample), or ``chunk // T`` whole samples per block
            when ``chunk >= T``; None chooses it from :data:`CHUNK_ELEMENTS`.

    Returns:
        ``(B, H, T, Dv)``; a query with no visible key outputs 0.
    """
    if chunk is None:
        chunk = chunk_rows(q.shape[1], k.shape[-2])
    if mask is not None:
        mask = mask.detach()
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        if mask.shape[0] not in (1, q.shape[0]):
            raise ValueError(f"mask batch size {mask.shape[0]} for {q.shape[0]} samples")
    return _SigmoidAttention.apply(q, k, v, mask, float(bias), float(scale), causal_offset, chunk)
