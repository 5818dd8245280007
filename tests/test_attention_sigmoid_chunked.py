"""The chunked sigmoid-attention path against the explicit (B, H, T, S) computation.

Reference: ``sigmoid(Q K^T * scale + b + M) V`` written out with autograd (forward and
gradients); the chunked path recomputes the weights in a hand-written backward.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnmoe.attention.sigmoid_chunked as sc
from attnmoe.attention import Attention

B, H, T, S, D = 2, 3, 11, 13, 4


def explicit(q, k, v, bias, scale, mask, causal_offset):
    logits = q @ k.transpose(-2, -1) * scale + bias
    if mask is not None:
        logits = logits + mask
    if causal_offset is not None:
        t = torch.arange(q.shape[-2])[:, None] + causal_offset
        logits = logits.masked_fill(torch.arange(k.shape[-2])[None, :] > t, float("-inf"))
    return torch.sigmoid(logits) @ v


def _inputs(dtype, n_q=T, n_k=S):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, n, D, generator=g, dtype=dtype, requires_grad=True)
            for n in (n_q, n_k, n_k)]


def _mask(kind: str, dtype) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(1)
    if kind == "none":
        return None
    shape = {"padding": (B, 1, 1, S), "rows": (T, S), "full": (B, H, T, S)}[kind]
    m = torch.randn(shape, generator=g, dtype=dtype)
    return m.masked_fill(torch.rand(shape, generator=g) < 0.3, float("-inf"))


@pytest.mark.parametrize("chunk", [1, 3, T, 100])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "rows", "full"])
@pytest.mark.parametrize("causal_offset", [None, 0, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_chunked_matches_explicit(chunk, mask_kind, causal_offset, dtype, tol) -> None:
    q, k, v = _inputs(dtype)
    mask = _mask(mask_kind, dtype)
    bias, scale = -math.log(S), 1 / math.sqrt(D)
    y = sc.sigmoid_attention_chunked(q, k, v, bias=bias, scale=scale, mask=mask,
                                     causal_offset=causal_offset, chunk=chunk)
    want = explicit(q, k, v, bias, scale, mask, causal_offset)
    torch.testing.assert_close(y, want, rtol=0, atol=tol)
    g = torch.randn_like(y)
    got_grads = torch.autograd.grad(y, (q, k, v), g)
    want_grads = torch.autograd.grad(want, (q, k, v), g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=10 * tol)


def test_gradcheck() -> None:
    q, k, v = (t.detach()[:1, :1, :5].clone().requires_grad_() for t in _inputs(torch.float64))
    fn = lambda q, k, v: sc.sigmoid_attention_chunked(
        q, k, v, bias=-0.5, scale=0.7, causal_offset=0, chunk=2)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_no_query_by_key_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks have at most ``chunk`` rows, and autograd keeps only Q, K, V (and the mask)."""
    seen = []
    orig = sc._block_weights

    def recording(*args):
        p = orig(*args)
        seen.append(p.shape)
        return p

    monkeypatch.setattr(sc, "_block_weights", recording)
    q, k, v = _inputs(torch.float32, n_q=40, n_k=40)
    y = sc.sigmoid_attention_chunked(q, k, v, bias=0.0, scale=0.5, chunk=8, causal_offset=0)
    saved = sum(t.numel() for t in y.grad_fn.saved_tensors if t is not None)
    assert saved == 3 * B * H * 40 * D  # linear in T: no (T, S) tensor is kept
    y.sum().backward()
    assert seen and all(len(s) == 2 and s[0] <= 8 for s in seen)  # one head, <= 8 queries
    # causal: a chunk ending at query i1 reads only keys < i1 (blocks are chunk-major)
    assert [s[1] for s in seen[:: B * H][:5]] == [8, 16, 24, 32, 40]
    assert len(seen) == 2 * B * H * 5  # 5 chunks per head, forward and again in backward
    seen.clear()
    sc.sigmoid_attention_chunked(q, k, v, bias=0.0, scale=0.5, chunk=80)  # chunk >= T
    assert seen == [torch.Size([40, 40])] * (B * H)


def test_layer_default_chunk_size_is_memory_bounded() -> None:
    assert sc.chunk_rows(1024) * 1024 <= sc.CHUNK_ELEMENTS
    assert sc.chunk_rows(10**7) == 1


def test_fully_masked_row_is_zero_and_finite_gradients() -> None:
    q, k, v = _inputs(torch.float64)
    mask = torch.zeros(T, S, dtype=torch.float64)
    mask[3] = float("-inf")
    y = sc.sigmoid_attention_chunked(q, k, v, bias=0.0, scale=1.0, mask=mask, chunk=4)
    assert (y[:, :, 3] == 0).all()
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_layer_uses_chunked_path_and_reference_otherwise(monkeypatch) -> None:
    calls = []
    orig = sc._SigmoidAttention.apply
    monkeypatch.setattr(sc._SigmoidAttention, "apply", lambda *a: calls.append(1) or orig(*a))
    layer = Attention(8, 2, score="sigmoid", causal=True)
    x = torch.randn(2, 5, 8)
    layer(x)  # 2*2*5*5 weights <= CHUNK_ELEMENTS: one block's worth, explicit path
    assert not calls
    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 99)
    layer(x)
    assert len(calls) == 1
    layer(x, reference=True)  # explicit path
    layer.dropout = 0.1
    layer.train()
    layer(x)  # dropout in training: explicit path (the chunked backward has no dropout mask)
    assert len(calls) == 1
