"""Sigmoid attention without a ``(T, S)`` weight matrix: query chunks, recomputed in backward.

Sigmoid attention (Ramapuram et al., arXiv 2409.04431) weighs key s for query t by
``p_ts = sigmoid(l_ts)`` with ``l_ts = q_t . k_s * scale + b + m_ts`` (``m`` an additive
mask, ``-inf`` where the key is hidden), and outputs ``y_t = sum_s p_ts v_s``.  There is no
normaliser across keys, so every query row is independent and can be computed on its own:

forward, for each sample, head and chunk ``C`` of at most ``chunk`` queries::

    P_C = sigmoid(Q_C K^T * scale + b + M_C)       # (c, S), c = |C|
    Y_C = P_C V                                     # (c, Dv)

backward (``G = dL/dY``), recomputing ``P_C`` instead of storing it (as FlashAttention
does for softmax, arXiv 2205.14135)::

    dV   += P_C^T G_C
    dP_C  = G_C V^T
    dL_C  = dP_C * P_C * (1 - P_C)                  # sigmoid'(l) = p (1 - p)
    dQ_C  = dL_C K * scale
    dK   += dL_C^T Q_C * scale

Only one ``(c, S)`` block (c queries of one head of one sample) lives at a time, with
``c * S`` about :data:`CHUNK_ELEMENTS`, so memory is linear in T; ``Q, K, V`` (queries
pre-scaled) and the mask are the only saved tensors.  One head per block (rather than
all heads of a sample) lets blocks have more rows for the same size, which made the
products faster (1.28x vs 1.44x the fused softmax kernel's forward+backward at T = 1024).  With a causal mask
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

CHUNK_ELEMENTS = 1 << 18
"""Target size (elements) of one ``(c, S)`` weight block: 1 MiB in float32, 256 queries at
S = 1024 (measured fastest among 32..256 rows; smaller blocks lose to per-call overhead)."""


def chunk_rows(n_keys: int, elements: int | None = None) -> int:
    """Queries per block so that a ``(c, S)`` block holds about ``elements`` numbers
    (default :data:`CHUNK_ELEMENTS`)."""
    elements = CHUNK_ELEMENTS if elements is None else elements
    return max(1, elements // max(1, n_keys))


def _block_weights(
    q_c: Tensor, k: Tensor, shift: Tensor | float, causal_offset: int | None, i0: int
) -> Tensor:
    """Weights ``P_C`` ``(c, s)`` from pre-scaled queries ``q_c`` ``(c, D)`` (rows ``i0:i0+c``)
    and keys ``k`` ``(s, D)``; ``shift`` = bias + mask rows, a float or ``(c or 1, s or 1)``."""
    p = torch.mm(q_c, k.t())  # (c, s)
    p.add_(shift)
    if causal_offset is not None:
        t = torch.arange(i0, i0 + q_c.shape[0], device=p.device)[:, None] + causal_offset
        s = torch.arange(k.shape[0], device=p.device)[None, :]
        p.masked_fill_(s > t, float("-inf"))
    return p.sigmoid_()  # sigmoid(-inf) = 0 exactly


Block = tuple[int, int, int, int, int]


def _blocks(B: int, H: int, T: int, S: int, chunk: int, causal_offset: int | None) -> list[Block]:
    """``(b, h, i0, i1, s_end)`` of every block with a visible key: queries ``i0:i1`` of head
    h of sample b, keys ``:s_end`` (with a causal mask only keys ``< i1 + offset``)."""
    out = []
    for i0 in range(0, T, chunk):
        i1 = min(i0 + chunk, T)
        s_end = S if causal_offset is None else min(S, i1 + causal_offset)
        if s_end > 0:  # else no visible key: the output rows stay 0
            out += [(b, h, i0, i1, s_end) for b in range(B) for h in range(H)]
    return out


def _shift_rows(shift: Tensor | float, b: int, h: int, i0: int, i1: int, s_end: int):
    """Bias + mask for one block: the mask's rows ``i0:i1`` and keys ``:s_end`` of (b, h)."""
    if not isinstance(shift, Tensor):
        return shift
    m = shift[b if shift.shape[0] > 1 else 0, h if shift.shape[1] > 1 else 0]  # (T|1, S|1)
    m = m[i0:i1] if m.shape[0] > 1 else m
    return m[:, :s_end] if m.shape[1] > 1 else m


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
        # queries scaled once here rather than in every block
        qs = q * scale
        shift = bias if mask is None else mask + bias
        out = q.new_zeros(B, H, T, v.shape[-1])
        for b, h, i0, i1, s_end in _blocks(B, H, T, k.shape[-2], chunk, causal_offset):
            p = _block_weights(qs[b, h, i0:i1], k[b, h, :s_end],
                               _shift_rows(shift, b, h, i0, i1, s_end), causal_offset, i0)
            torch.mm(p, v[b, h, :s_end], out=out[b, h, i0:i1])  # (c, Dv)
        ctx.save_for_backward(qs, k, v, mask)
        ctx.args = (bias, scale, causal_offset, chunk)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        qs, k, v, mask = ctx.saved_tensors  # qs = q * scale
        bias, scale, causal_offset, chunk = ctx.args
        shift = bias if mask is None else mask + bias
        B, H, T, _ = qs.shape
        dq = torch.zeros_like(qs)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        for b, h, i0, i1, s_end in _blocks(B, H, T, k.shape[-2], chunk, causal_offset):
            q_c, k_c, v_c = qs[b, h, i0:i1], k[b, h, :s_end], v[b, h, :s_end]
            g_c = grad_out[b, h, i0:i1]  # (c, Dv)
            p = _block_weights(q_c, k_c, _shift_rows(shift, b, h, i0, i1, s_end),
                               causal_offset, i0)
            dv[b, h, :s_end].addmm_(p.t(), g_c)  # (s, Dv)
            dl = torch.ops.aten.sigmoid_backward(torch.mm(g_c, v_c.t()), p)  # dP * p (1 - p)
            torch.mm(dl, k_c, out=dq[b, h, i0:i1]).mul_(scale)
            dk[b, h, :s_end].addmm_(dl.t(), q_c)  # q_c holds the scale
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
        chunk: queries per block; None chooses it from :data:`CHUNK_ELEMENTS`.

    Returns:
        ``(B, H, T, Dv)``; a query with no visible key outputs 0.
    """
    if chunk is None:
        chunk = chunk_rows(k.shape[-2])
    if mask is not None:
        mask = mask.detach()
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        if mask.shape[0] not in (1, q.shape[0]):
            raise ValueError(f"mask batch size {mask.shape[0]} for {q.shape[0]} samples")
    return _SigmoidAttention.apply(q, k, v, mask, float(bias), float(scale), causal_offset, chunk)
