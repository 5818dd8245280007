"""Tests of attnmoe.attention.Attention and the variant registry.

Every numerical check compares against an independent computation: torch's own
``nn.MultiheadAttention``, or ``naive_forward`` below, which rebuilds the layer's
output from its weight matrices with one ``einsum`` per formula line.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnmoe.attention import (
    VALUE_ACTIVATIONS,
    VARIANTS,
    Attention,
    attention_kwargs,
    list_variants,
)

DIM, HEADS, B, T = 8, 2, 2, 5


@pytest.fixture(autouse=True)
def _small_sigmoid_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks, so that these tiny layers take the chunked sigmoid path (several blocks)
    rather than the explicit one that calls no bigger than a block take."""
    import attnmoe.attention.sigmoid_chunked as sc

    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 16)



GATE_CONFIGS = [(None, "elementwise")]
GATE_CONFIGS += [(g, "elementwise") for g in ("G1", "G2", "G3", "G4", "G5")]
GATE_CONFIGS += [(g, "headwise") for g in ("G1", "G2", "G3", "G4")]
COMBOS = ["active-gelu+gated-g1", "sigmoid+gated-g2-headwise"]
ACTS = [None, *VALUE_ACTIVATIONS]


def _padding_mask() -> torch.Tensor:
    # sample 0 sees all keys; sample 1 ignores its last two keys
    return torch.tensor([[False] * T, [False, False, False, True, True]])


def naive_forward(
    layer: Attention,
    x: torch.Tensor,
    kpm: torch.Tensor | None = None,
    *,
    context: torch.Tensor | None = None,
    add_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Layer output from its weights, formula by formula (independent of the layer's code).

    ``kpm``: bool (B, S), True = ignore; ``add_mask``: additive float broadcastable to
    (B, H, T, S) (-inf = hidden); ``context``: keys/values source (cross-attention).
    """
    H, D = layer.heads, layer.head_dim

    def lin(m: torch.nn.Linear, z: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("btc,oc->bto", z, m.weight)
        return out if m.bias is None else out + m.bias

    z = x if context is None else context
    q, k, v = lin(layer.q_proj, x), lin(layer.k_proj, z), lin(layer.v_proj, z)  # (B, T|S, C)
    act = layer._act
    if act is not None:
        v = act(v)
    g = None
    if layer.output_gate is not None:
        g = torch.sigmoid(lin(layer.output_gate_proj, x))  # (B, T, C) or (B, T, H)
        if layer.output_gate_granularity == "headwise":
            g = g.repeat_interleave(D, dim=-1)  # head h's scalar on its D coordinates
        if layer.output_gate == "G2":
            v = v * g
        elif layer.output_gate == "G3":
            k = k * g
        elif layer.output_gate == "G4":
            q = q * g
    Bn, Tn, C = x.shape
    Sn = z.shape[1]
    qh = q.reshape(Bn, Tn, H, D)
    kh = k.reshape(Bn, Sn, H, D)
    vh = v.reshape(Bn, Sn, H, D)
    s = torch.einsum("bthd,bshd->bhts", qh, kh) / math.sqrt(D)
    if add_mask is not None:
        s = s + add_mask
    ok = torch.isfinite(s)
    if layer.causal:
        t_idx = torch.arange(Tn)
        ok = ok & (t_idx[None, :] <= t_idx[:, None])
    if kpm is not None:
        ok = ok & ~kpm[:, None, None, :]
    s = torch.where(ok, s, torch.zeros_like(s))
    if layer.score == "softmax":
        e = torch.exp(s - s.amax(-1, keepdim=True)) * ok
        w = e / e.sum(-1, keepdim=True)
    else:
        b = -math.log(Sn) if layer.sigmoid_bias is None else layer.sigmoid_bias
        w = (1.0 / (1.0 + torch.exp(-(s + b)))) * ok
    y = torch.einsum("bhts,bshd->bthd", w, vh).reshape(Bn, Tn, C)
    if layer.output_gate == "G1":
        y = y * g
    y = lin(layer.out_proj, y)
    if layer.output_gate == "G5":
        y = y * g
    return y


def copy_from_mha(layer: Attention, mha: torch.nn.MultiheadAttention) -> None:
    C = layer.dim
    with torch.no_grad():
        w, b = mha.in_proj_weight, mha.in_proj_bias
        for i, proj in enumerate((layer.q_proj, layer.k_proj, layer.v_proj)):
            proj.weight.copy_(w[i * C : (i + 1) * C])
            if b is not None:
                proj.bias.copy_(b[i * C : (i + 1) * C])
        layer.out_proj.load_state_dict(mha.out_proj.state_dict())


# --------------------------------------------------------------------------- equality
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_multihead_attention(bias: bool, causal: bool, masked: bool) -> None:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(DIM, HEADS, bias=bias, batch_first=True).double().eval()
    layer = Attention(DIM, HEADS, bias=bias, causal=causal).double().eval()
    copy_from_mha(layer, mha)
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    kpm = _padding_mask() if masked else None
    attn_mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None  # True = blocked
    want = mha(x, x, x, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=False)[0]
    for ref in (False, True):
        torch.testing.assert_close(layer(x, key_padding_mask=kpm, reference=ref), want, rtol=0, atol=1e-12)


def test_identity_activation_equals_plain_layer() -> None:
    torch.manual_seed(1)
    plain = Attention(DIM, HEADS).double()
    ident = Attention(DIM, HEADS, value_activation="identity").double()
    ident.load_state_dict(plain.state_dict())
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    torch.testing.assert_close(ident(x), plain(x), rtol=0, atol=0)
    # a real activation changes the output
    act = Attention(DIM, HEADS, value_activation="relu").double()
    act.load_state_dict(plain.state_dict())
    assert (act(x) - plain(x)).abs().max() > 1e-3


def test_callable_activation_equals_named() -> None:
    torch.manual_seed(2)
    named = Attention(DIM, HEADS, value_activation="tanh").double()
    fn = Attention(DIM, HEADS, value_activation=torch.tanh).double()
    fn.load_state_dict(named.state_dict())
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    torch.testing.assert_close(fn(x), named(x), rtol=0, atol=0)


# --------------------------------------------------------------- fast path vs reference
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("gate,gran", GATE_CONFIGS)
@pytest.mark.parametrize("act", ACTS)
def test_sdpa_reference_naive_agree(
    act: str | None, gate: str | None, gran: str, score: str
) -> None:
    """All option combinations x causal x bias x mask, float64 to 1e-10 and float32 to 1e-5."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        for causal in (False, True):
            for bias in (False, True):
                torch.manual_seed(3)
                layer = Attention(
                    DIM, HEADS, value_activation=act, output_gate=gate, output_gate_granularity=gran,
                    score=score, causal=causal, bias=bias,
                ).to(dtype).eval()
                x = torch.randn(B, T, DIM, dtype=dtype)
                for kpm in (None, _padding_mask()):
                    fast = layer(x, key_padding_mask=kpm, reference=False)
                    ref = layer(x, key_padding_mask=kpm, reference=True)
                    naive = naive_forward(layer, x, kpm)
                    torch.testing.assert_close(fast, ref, rtol=0, atol=tol)
                    torch.testing.assert_close(ref, naive, rtol=0, atol=tol)


def test_sigmoid_bias_explicit_value() -> None:
    torch.manual_seed(4)
    layer = Attention(DIM, HEADS, score="sigmoid", sigmoid_bias=0.5).double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_forward(layer, x, None), rtol=0, atol=1e-12)
    default = Attention(DIM, HEADS, score="sigmoid").double()
    default.load_state_dict(layer.state_dict())
    assert (default(x) - layer(x)).abs().max() > 1e-3  # -log(5) differs from 0.5


# --------------------------------------------------------------- gradients, causality
@pytest.mark.parametrize("name", list_variants() + COMBOS)
def test_every_parameter_gets_gradient(name: str) -> None:
    torch.manual_seed(5)
    layer = Attention(DIM, HEADS, causal=True, **attention_kwargs(name))
    x = torch.randn(B, T, DIM, requires_grad=True)
    y = layer(x, key_padding_mask=_padding_mask()[:, [0, 1, 2, 3, 0]])  # no fully-masked query rows
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "name", ["softmax", "sigmoid", "active-gelu+gated-g1", "gated-g3-headwise"]
)
@pytest.mark.parametrize("reference", [False, True])
def test_causal_no_future_leak(name: str, reference: bool) -> None:
    torch.manual_seed(6)
    layer = Attention(DIM, HEADS, causal=True, **attention_kwargs(name)).double()
    x = torch.randn(B, 7, DIM, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(B, 3, DIM, dtype=torch.float64) * 10
    y, y2 = layer(x, reference=reference), layer(x2, reference=reference)
    torch.testing.assert_close(y[:, :4], y2[:, :4], rtol=0, atol=1e-13)
    assert (y[:, 4:] - y2[:, 4:]).abs().max() > 1e-3


def test_padding_mask_ignores_masked_keys() -> None:
    torch.manual_seed(7)
    for score in ("softmax", "sigmoid"):
        layer = Attention(DIM, HEADS, score=score, sigmoid_bias=0.0 if score == "sigmoid" else None)
        layer = layer.double()
        x = torch.randn(B, T, DIM, dtype=torch.float64)
        kpm = _padding_mask()
        x2 = x.clone()
        x2[1, 3:] = 5.0  # only masked keys change
        torch.testing.assert_close(
            layer(x, key_padding_mask=kpm)[1, :3], layer(x2, key_padding_mask=kpm)[1, :3],
            rtol=0, atol=1e-13,
        )


def test_dropout_only_in_training() -> None:
    torch.manual_seed(8)
    layer = Attention(DIM, HEADS, dropout=0.5)
    x = torch.randn(B, T, DIM)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x, reference=True))
    layer.train()
    assert (layer(x) - layer(x)).abs().max() > 0


def test_headwise_gate_shape() -> None:
    layer = Attention(DIM, HEADS, output_gate="G1", output_gate_granularity="headwise")
    assert layer.output_gate_proj.weight.shape == (HEADS, DIM)
    assert Attention(DIM, HEADS, output_gate="G1").output_gate_proj.weight.shape == (DIM, DIM)
    assert Attention(DIM, HEADS).output_gate_proj is None


# --------------------------------------------------------------- errors and registry
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"value_activation": "swishy"}, "unknown value_activation"),
        ({"value_activation": 3}, "value_activation must be"),
        ({"output_gate": "G7"}, "unknown output_gate position"),
        ({"output_gate_granularity": "rowwise", "output_gate": "G1"},
         "unknown output_gate_granularity"),
        ({"score": "relu"}, "unknown score"),
        ({"output_gate": "G5", "output_gate_granularity": "headwise"}, "G5"),
        ({"context_dim": 6, "causal": True}, "causal=True with context_dim"),
        ({"context_dim": 6, "output_gate": "G2"}, "output_gate='G2'"),
        ({"sigmoid_bias": -1.0}, "only used with score='sigmoid'"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        Attention(DIM, HEADS, **kwargs)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, 3)
    with pytest.raises(TypeError, match="dim must be an int"):
        Attention(8.0, 2)  # type: ignore[arg-type]
    layer = Attention(DIM, HEADS)
    with pytest.raises(ValueError, match="rank 2"):
        layer(torch.randn(T, DIM))
    with pytest.raises(ValueError, match="features"):
        layer(torch.randn(B, T, DIM + 1))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        layer(torch.randn(B, T, DIM), key_padding_mask=torch.zeros(B, T + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        layer(torch.randn(B, T, DIM), key_padding_mask=torch.zeros(B, T, dtype=torch.long))
    with pytest.raises(TypeError, match="masks go by keyword"):
        layer(torch.randn(B, T, DIM), torch.zeros(B, T, dtype=torch.bool))  # old positional mask


def test_registry_names_and_kwargs() -> None:
    names = list_variants()
    for required in ["softmax", "active-gelu", "active-relu", "gated-g1", "gated-g1-headwise",
                     "gated-g2", "gated-g3", "gated-g4", "gated-g5", "sigmoid"]:
        assert required in names
    assert set(names) == set(VARIANTS)
    for name in names:
        Attention(DIM, HEADS, causal=True, dropout=0.1, **attention_kwargs(name))
    kw = attention_kwargs("active-gelu+gated-g1")
    assert kw == {"value_activation": "gelu", "output_gate": "G1",
                  "output_gate_granularity": "elementwise"}
    assert attention_kwargs("sigmoid")["score"] == "sigmoid"
    kw["output_gate"] = "G2"  # returned dicts are copies
    assert attention_kwargs("gated-g1")["output_gate"] == "G1"


@pytest.mark.parametrize(
    "bad", ["nope", "gated-g1+gated-g2", "softmax+sigmoid", "active-relu+", ""]
)
def test_registry_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        attention_kwargs(bad)


def test_registry_unknown_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="gated-g1-headwise"):
        attention_kwargs("gated-g6")


def test_gelu_matches_functional() -> None:
    # the active-gelu variant is the exact (erf) GELU
    torch.manual_seed(9)
    z = torch.randn(100, dtype=torch.float64)
    torch.testing.assert_close(VALUE_ACTIVATIONS["gelu"](z), 0.5 * z * (1 + torch.erf(z / math.sqrt(2))))
    assert F.gelu is VALUE_ACTIVATIONS["gelu"]


@pytest.mark.parametrize("name", [n for n in list_variants() if n != "sigmoid"] + COMBOS[:1])
def test_softmax_variants_take_the_sdpa_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every softmax option keeps the fused kernel; reference=True and sigmoid never call it."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    layer = Attention(DIM, HEADS, causal=True, **attention_kwargs(name))
    x = torch.randn(B, T, DIM)
    layer(x)
    assert len(calls) == 1
    layer(x, reference=True)
    layer.use_reference = True
    layer(x)
    Attention(DIM, HEADS, score="sigmoid")(x)
    assert len(calls) == 1
