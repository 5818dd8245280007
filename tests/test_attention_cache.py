"""The KV cache: incremental decoding equals full recomputation, for every variant.

Reference = the same layer called on the whole prefix without a cache (itself tested
against ``nn.MultiheadAttention`` and an explicit einsum rebuild in test_attention.py).
float32, tolerance 1e-6 as the issue asks.
"""

from __future__ import annotations

import pytest
import torch

from attnmoe.attention import Attention, KVCache, attention_kwargs, list_variants

DIM, HEADS, B, T = 16, 4, 2, 9
CHUNKS = [3, 1, 1, 2, 1, 1]  # a prompt of 3, then single tokens and one pair
NAMES = list_variants() + ["active-gelu+gated-g1", "sigmoid+gated-g2-headwise",
                           "active-tanh+gated-g3"]


@pytest.fixture(autouse=True)
def _small_sigmoid_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks, so that these tiny layers take the chunked sigmoid path (several blocks)
    rather than the explicit one that calls no bigger than a block take."""
    import attnmoe.attention.sigmoid_chunked as sc

    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 16)


def _decode(layer: Attention, x: torch.Tensor, chunks: list[int], **kw) -> list[torch.Tensor]:
    cache, outs, start = KVCache(), [], 0
    for n in chunks:
        outs.append(layer(x[:, start : start + n], cache=cache, **kw))
        start += n
    assert len(cache) == start
    return outs


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_cache_equals_prefix_recomputation(name: str, causal: bool) -> None:
    torch.manual_seed(0)
    layer = Attention(DIM, HEADS, causal=causal, **attention_kwargs(name)).eval()
    x = torch.randn(B, T, DIM)
    with torch.no_grad():
        outs = _decode(layer, x, CHUNKS)
        start = 0
        for n, y in zip(CHUNKS, outs):
            end = start + n
            for ref in (False, True):
                want = layer(x[:, :end], reference=ref)[:, start:end]
                torch.testing.assert_close(y, want, rtol=0, atol=1e-6)
            start = end


@pytest.mark.parametrize("name", ["softmax", "sigmoid", "gated-g3", "active-gelu+gated-g1"])
def test_causal_cache_equals_full_sequence(name: str) -> None:
    """Causal: every position's output is final once computed, so the decoded outputs are
    the full sequence's (sigmoid with a fixed bias; the default -log(n) depends on n)."""
    torch.manual_seed(1)
    kw = attention_kwargs(name)
    if kw.get("score") == "sigmoid":
        kw["sigmoid_bias"] = -2.0
    layer = Attention(DIM, HEADS, causal=True, **kw).eval()
    x = torch.randn(B, T, DIM)
    with torch.no_grad():
        got = torch.cat(_decode(layer, x, CHUNKS), dim=1)
        torch.testing.assert_close(got, layer(x), rtol=0, atol=1e-6)


def test_cache_with_padding_and_masks() -> None:
    """Left padding: the key_padding_mask covers cached plus new keys (B, S)."""
    torch.manual_seed(2)
    layer = Attention(DIM, HEADS, causal=True, **attention_kwargs("gated-g1")).eval()
    x = torch.randn(B, T, DIM)
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, :2] = True  # sample 1 is left-padded by two tokens
    cache, start = KVCache(), 0
    with torch.no_grad():
        for n in CHUNKS:
            end = start + n
            y = layer(x[:, start:end], cache=cache, key_padding_mask=pad[:, :end])
            want = layer(x[:, :end], key_padding_mask=pad[:, :end])[:, start:end]
            ok = ~pad[:, start:end]  # rows of padded queries are not compared
            torch.testing.assert_close(y[ok], want[ok], rtol=0, atol=1e-6)
            start = end


def test_cache_gradients_flow() -> None:
    torch.manual_seed(3)
    layer = Attention(DIM, HEADS, causal=True, **attention_kwargs("sigmoid+gated-g1"))
    x = torch.randn(B, 4, DIM, requires_grad=True)
    y = torch.cat(_decode(layer, x, [2, 1, 1]), dim=1)
    y.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_cache_errors() -> None:
    layer = Attention(DIM, HEADS, causal=True)
    cache = KVCache()
    layer(torch.randn(B, 2, DIM), cache=cache)
    with pytest.raises(ValueError, match="one layer and one batch"):
        layer(torch.randn(B + 1, 1, DIM), cache=cache)
    with pytest.raises(TypeError, match="KVCache"):
        layer(torch.randn(B, 1, DIM), cache={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="self-attention decoding"):
        Attention(DIM, HEADS)(torch.randn(B, 1, DIM), torch.randn(B, 3, DIM), cache=KVCache())
    assert "len=2" in repr(cache)
    cache.reset()
    assert len(cache) == 0
