"""Masks and cross-attention of ``Attention`` against independent computations.

* ``nn.MultiheadAttention`` with the same weights (copied by ``from_torch_mha``): boolean
  and additive ``attn_mask`` of shape (T, S) and (B, H, T, S), boolean and float
  ``key_padding_mask``, self- and cross-attention (``kdim`` != ``embed_dim`` too);
* ``naive_forward`` (tests/test_attention.py), an einsum-per-formula rebuild, for every
  variant, with the masks turned into one additive matrix by the test itself.
"""

from __future__ import annotations

import pytest
import torch
from test_attention import naive_forward

from attnmoe.attention import Attention, attention_kwargs, from_torch_mha

DIM, HEADS, B, T, S = 8, 2, 2, 5, 7
F64 = torch.float64


@pytest.fixture(autouse=True)
def _small_sigmoid_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks, so that these tiny layers take the chunked sigmoid path (several blocks)
    rather than the explicit one that calls no bigger than a block take."""
    import attnmoe.attention.sigmoid_chunked as sc

    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 16)


def _bool_mask(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random True = blocked mask; key 0 stays visible so no row is fully hidden."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) < 0.4
    m[..., 0] = False
    return m


def _float_mask(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(shape, generator=g, dtype=F64)
    m[_bool_mask(shape, seed + 1)] = float("-inf")
    return m


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """The test's own conversion: bool True -> -inf, float -> itself."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=F64).masked_fill(mask, float("-inf"))
    return mask


MASK_KINDS = ["none", "bool2d", "float2d", "bool4d", "float4d"]


def _attn_mask(kind: str, n_keys: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    shape = (T, n_keys) if kind.endswith("2d") else (B, HEADS, T, n_keys)
    return _bool_mask(shape, 1) if kind.startswith("bool") else _float_mask(shape, 1)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("kpm_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_masks_equal_multihead_attention(kind: str, kpm_kind: str, cross: bool, bias: bool) -> None:
    torch.manual_seed(0)
    kdim = 6 if cross else None
    mha = torch.nn.MultiheadAttention(
        DIM, HEADS, bias=bias, batch_first=True, kdim=kdim, vdim=kdim
    ).double().eval()
    layer = from_torch_mha(mha).eval()
    x = torch.randn(B, T, DIM, dtype=F64)
    ctx = torch.randn(B, S, kdim, dtype=F64) if cross else None
    n_keys = S if cross else T
    am = _attn_mask(kind, n_keys)
    kpm = None
    if kpm_kind == "bool":
        kpm = _bool_mask((B, n_keys), 2)
    elif kpm_kind == "float":
        kpm = _float_mask((B, n_keys), 2)
    mha_am = am.reshape(B * HEADS, T, n_keys) if am is not None and am.dim() == 4 else am
    kv = ctx if cross else x
    want = mha(x, kv, kv, attn_mask=mha_am, key_padding_mask=kpm, need_weights=False)[0]
    for ref in (False, True):
        got = layer(x, ctx, attn_mask=am, key_padding_mask=kpm, reference=ref)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


VARIANTS = ["softmax", "sigmoid", "active-gelu", "gated-g1", "gated-g2-headwise", "gated-g3",
            "gated-g4-headwise", "gated-g5", "sigmoid+gated-g1", "active-tanh+gated-g4"]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("kind", MASK_KINDS[1:])
def test_masks_every_variant_against_explicit(name: str, kind: str) -> None:
    """Self-attention, causal and not, mask + bool padding; fast and reference paths."""
    for causal in (False, True):
        torch.manual_seed(1)
        layer = Attention(DIM, HEADS, causal=causal, **attention_kwargs(name)).double()
        x = torch.randn(B, T, DIM, dtype=F64)
        am = _attn_mask(kind, T)
        kpm = _bool_mask((B, T), 3)
        want = naive_forward(layer, x, kpm, add_mask=_additive(am))
        for ref in (False, True):
            got = layer(x, attn_mask=am, key_padding_mask=kpm, reference=ref)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["softmax", "sigmoid", "active-relu+gated-g1", "gated-g4",
                                  "gated-g5", "gated-g1-headwise"])
def test_cross_attention_against_explicit(name: str) -> None:
    torch.manual_seed(2)
    layer = Attention(DIM, HEADS, **attention_kwargs(name)).double()
    x = torch.randn(B, T, DIM, dtype=F64)
    ctx = torch.randn(B, S, DIM, dtype=F64)
    am = _float_mask((T, S), 4)
    want = naive_forward(layer, x, context=ctx, add_mask=am)
    for ref in (False, True):
        torch.testing.assert_close(layer(x, ctx, attn_mask=am, reference=ref), want,
                                   rtol=0, atol=1e-10)
    # the context changes the output; x alone is self-attention
    assert (layer(x, ctx) - layer(x)).abs().max() > 1e-3


def test_cross_attention_errors() -> None:
    x, ctx = torch.randn(B, T, DIM), torch.randn(B, S, DIM)
    for gate in ("G2", "G3"):
        with pytest.raises(ValueError, match="cross-attention"):
            Attention(DIM, HEADS, output_gate=gate)(x, ctx)
        with pytest.raises(ValueError, match="cross-attention"):
            Attention(DIM, HEADS, output_gate=gate, context_dim=4)
    with pytest.raises(ValueError, match="causal=True is for self-attention"):
        Attention(DIM, HEADS, causal=True)(x, ctx)
    with pytest.raises(ValueError, match=r"context must have shape \(B=2, S, 8\)"):
        Attention(DIM, HEADS)(x, torch.randn(B, S, DIM + 1))
    with pytest.raises(ValueError, match="context_dim"):
        Attention(DIM, HEADS, context_dim=4)(x)  # a cross-attention layer needs a context
    with pytest.raises(TypeError, match="masks go by keyword"):
        Attention(DIM, HEADS)(x, torch.zeros(B, T, dtype=torch.bool))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"attn_mask": torch.zeros(T, T + 1, dtype=torch.bool)}, ValueError, "broadcast"),
        ({"attn_mask": torch.zeros(B * HEADS, T, T, dtype=torch.bool)}, ValueError, "B\\*H"),
        ({"attn_mask": torch.zeros(T, dtype=torch.bool)}, ValueError, "2 to 4 dims"),
        ({"attn_mask": torch.zeros(T, T, dtype=torch.int64)}, TypeError, "attn_mask must be"),
        ({"key_padding_mask": torch.zeros(B, T + 1, dtype=torch.bool)}, ValueError, "(B, S)"),
        ({"key_padding_mask": torch.zeros(B, T, dtype=torch.int32)}, TypeError,
         "key_padding_mask must be"),
    ],
)
def test_bad_masks(kwargs: dict, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        Attention(DIM, HEADS)(torch.randn(B, T, DIM), **kwargs)


def test_boolean_convention_is_true_means_blocked() -> None:
    """True hides a key (nn.MultiheadAttention's convention): hiding every key but one
    makes each query copy that key's (projected) value."""
    torch.manual_seed(5)
    layer = Attention(DIM, HEADS).double()
    x = torch.randn(B, T, DIM, dtype=F64)
    am = torch.ones(T, T, dtype=torch.bool)
    am[:, 2] = False  # only key 2 visible
    y = layer(x, attn_mask=am)
    v2 = layer.out_proj(layer.v_proj(x[:, 2:3])).expand(B, T, DIM)
    torch.testing.assert_close(y, v2, rtol=0, atol=1e-12)


def test_masked_softmax_keeps_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.functional as F

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    layer = Attention(DIM, HEADS, causal=True, **attention_kwargs("gated-g1"))
    x = torch.randn(B, T, DIM)
    layer(x, attn_mask=_float_mask((T, T), 6).float(), key_padding_mask=_bool_mask((B, T), 7))
    assert len(calls) == 1
