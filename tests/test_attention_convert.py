"""Converters: nn.MultiheadAttention <-> Attention, and the fused-gate (Qiu et al.) layout.

Independent computations: torch's own ``nn.MultiheadAttention`` forward, and
``fused_reference`` below, which follows the reference gated-attention forward
(github.com/qiuzh20/gated_attention, ``Qwen3Attention.forward``, with or without RoPE and
q/k norms): it splits the *activations* of the fused ``q_proj``, where the loader splits its
*weights*; RoPE there is a complex rotation of the (c, c + D/2) pairs.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnmoe.attention import (
    Attention,
    attention_kwargs,
    from_fused_gate_state_dict,
    from_torch_mha,
    to_torch_mha,
)

DIM, HEADS, B, T = 8, 2, 2, 5
F64 = torch.float64


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_round_trip_state_dict(bias: bool, kdim: int | None) -> None:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(DIM, HEADS, bias=bias, kdim=kdim, vdim=kdim,
                                      batch_first=True, dropout=0.1)
    back = to_torch_mha(from_torch_mha(mha))
    assert back.dropout == 0.1
    a, b = mha.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("cross", [False, True])
def test_to_torch_mha_outputs(cross: bool) -> None:
    """A random Attention, converted: same outputs with a float mask and bool padding."""
    torch.manual_seed(1)
    layer = Attention(DIM, HEADS, context_dim=6 if cross else None).double().eval()
    mha = to_torch_mha(layer).eval()
    x = torch.randn(B, T, DIM, dtype=F64)
    ctx = torch.randn(B, 7, 6, dtype=F64) if cross else x
    S = ctx.shape[1]
    am = torch.randn(T, S, dtype=F64)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[1, -2:] = True
    want = mha(x, ctx, ctx, attn_mask=am, key_padding_mask=kpm.to(F64) * -1e9,
               need_weights=False)[0]
    got = layer(x, ctx if cross else None, attn_mask=am, key_padding_mask=kpm)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_sequence_first_mha() -> None:
    torch.manual_seed(2)
    mha = torch.nn.MultiheadAttention(DIM, HEADS).double().eval()  # (T, B, E) inputs
    layer = from_torch_mha(mha)
    x = torch.randn(T, B, DIM, dtype=F64)
    want = mha(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(layer(x.transpose(0, 1)).transpose(0, 1), want, rtol=0, atol=1e-12)


def test_from_torch_mha_with_options_keeps_shared_weights() -> None:
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=True)
    layer = from_torch_mha(mha, causal=True, **attention_kwargs("active-gelu+gated-g1"))
    assert layer.causal and layer.output_gate == "G1" and layer.value_activation == "gelu"
    assert torch.equal(layer.v_proj.weight, mha.in_proj_weight[2 * DIM :])


def test_converter_errors() -> None:
    with pytest.raises(ValueError, match="add_bias_kv"):
        from_torch_mha(torch.nn.MultiheadAttention(DIM, HEADS, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_zero_attn"):
        from_torch_mha(torch.nn.MultiheadAttention(DIM, HEADS, add_zero_attn=True))
    with pytest.raises(ValueError, match="kdim=3 != vdim=4"):
        from_torch_mha(torch.nn.MultiheadAttention(DIM, HEADS, kdim=3, vdim=4))
    with pytest.raises(TypeError, match="nn.MultiheadAttention"):
        from_torch_mha(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    for name in ("sigmoid", "gated-g1", "active-relu"):
        with pytest.raises(ValueError, match="cannot compute"):
            to_torch_mha(Attention(DIM, HEADS, **attention_kwargs(name)))
    with pytest.raises(ValueError, match="drop_causal"):
        to_torch_mha(Attention(DIM, HEADS, causal=True))
    mha = to_torch_mha(Attention(DIM, HEADS, causal=True), drop_causal=True)
    assert isinstance(mha, torch.nn.MultiheadAttention)
    to_torch_mha(Attention(DIM, HEADS, value_activation="identity"))  # identity is plain


# --------------------------------------------------------------------- fused-gate layout
def _fused_state(H: int, KV: int, D: int, gran: str | None, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = H * D
    gate_rows = {"elementwise": H * D, "headwise": H, None: 0}[gran]

    def lin(rows: int, cols: int) -> dict[str, torch.Tensor]:
        out = {"weight": torch.randn(rows, cols, generator=g, dtype=F64) / math.sqrt(cols)}
        if bias:
            out["bias"] = torch.randn(rows, generator=g, dtype=F64) * 0.1
        return out

    sd = {}
    for name, (rows, cols) in {"q_proj": (H * D + gate_rows, hidden), "k_proj": (KV * D, hidden),
                               "v_proj": (KV * D, hidden), "o_proj": (hidden, H * D)}.items():
        for key, t in lin(rows, cols).items():
            sd[f"layer.{name}.{key}"] = t
    return sd


def _rope_complex(u, base):
    """``(B, H, T, D)`` as complex numbers ``u_c + i u_{c+D/2}``, times ``e^{i t theta_c}``."""
    Tn, D = u.shape[-2], u.shape[-1]
    theta = base ** (-torch.arange(0, D, 2, dtype=F64) / D)
    z = torch.complex(u[..., : D // 2], u[..., D // 2 :])
    angle = torch.arange(Tn, dtype=F64)[:, None] * theta
    z = z * torch.polar(torch.ones(Tn, D // 2, dtype=F64), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def fused_reference(sd, x, H, KV, D, gran, rope=None, eps=1e-6):
    """The reference forward, written from its description (activations split, not weights)."""
    def lin(name, z):
        y = z @ sd[f"layer.{name}.weight"].T
        return y + sd[f"layer.{name}.bias"] if f"layer.{name}.bias" in sd else y

    Bn, Tn, _ = x.shape
    grp = H // KV
    q = lin("q_proj", x).view(Bn, Tn, KV, -1)
    if gran is not None:
        dg = D if gran == "elementwise" else 1
        q, gate = torch.split(q, [D * grp, dg * grp], dim=-1)
        gate = gate.reshape(Bn, Tn, H, dg)
    q = q.reshape(Bn, Tn, H, D).transpose(1, 2)
    k = lin("k_proj", x).view(Bn, Tn, KV, D).transpose(1, 2)
    v = lin("v_proj", x).view(Bn, Tn, KV, D).transpose(1, 2)
    if "layer.q_norm.weight" in sd:
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + eps) * sd["layer.q_norm.weight"]
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + eps) * sd["layer.k_norm.weight"]
    if rope is not None:
        q, k = _rope_complex(q, rope), _rope_complex(k, rope)
    k = k.repeat_interleave(grp, dim=1)
    v = v.repeat_interleave(grp, dim=1)
    s = q @ k.transpose(-2, -1) / math.sqrt(D)
    s = s.masked_fill(torch.ones(Tn, Tn, dtype=torch.bool).triu(1), float("-inf"))
    y = (torch.softmax(s, -1) @ v).transpose(1, 2)  # (B, T, H, D)
    if gran is not None:
        y = y * torch.sigmoid(gate)
    return lin("o_proj", y.reshape(Bn, Tn, H * D))


@pytest.mark.parametrize("gran", ["elementwise", "headwise", None])
@pytest.mark.parametrize("KV", [4, 2, 1])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_gate_loader_matches_reference_forward(gran, KV, bias) -> None:
    H, D = 4, 3
    sd = _fused_state(H, KV, D, gran, bias)
    layer = from_fused_gate_state_dict(sd, H, num_key_value_heads=KV, prefix="layer.")
    assert layer.output_gate == (None if gran is None else "G1")
    if gran is not None:
        assert layer.output_gate_granularity == gran
    x = torch.randn(B, T, H * D, dtype=F64)
    want = fused_reference(sd, x, H, KV, D, gran)
    for ref in (False, True):
        torch.testing.assert_close(layer(x, reference=ref), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("KV", [4, 2])
def test_fused_gate_loader_with_rope_and_qk_norm(KV) -> None:
    """The reference layer as it really runs: RoPE and q/k RMSNorm, head_dim != hidden/H."""
    H, D = 4, 4
    sd = _fused_state(H, KV, D, "elementwise", False)
    sd = {k: v[:, :12] if k.endswith("_proj.weight") and "o_proj" not in k else v
          for k, v in sd.items()}  # hidden 12 != H*D = 16
    sd["layer.o_proj.weight"] = sd["layer.o_proj.weight"][:12]
    g = torch.Generator().manual_seed(5)
    sd["layer.q_norm.weight"] = torch.rand(D, generator=g, dtype=F64) + 0.5
    sd["layer.k_norm.weight"] = torch.rand(D, generator=g, dtype=F64) + 0.5
    layer = from_fused_gate_state_dict(sd, H, num_key_value_heads=KV, prefix="layer.",
                                       rope=1000.0, qk_norm_eps=1e-6)
    assert layer.kv_heads == KV and layer.head_dim == D and layer.qk_norm
    x = torch.randn(B, T, 12, dtype=F64)
    want = fused_reference(sd, x, H, KV, D, "elementwise", rope=1000.0)
    for ref in (False, True):
        torch.testing.assert_close(layer(x, reference=ref), want, rtol=0, atol=1e-12)


def test_fused_gate_loader_errors() -> None:
    sd = _fused_state(4, 4, 3, "headwise", False)
    with pytest.raises(ValueError, match="q_norm and k_norm"):
        from_fused_gate_state_dict({**sd, "layer.q_norm.weight": torch.ones(3)}, 4,
                                   prefix="layer.")
    with pytest.raises(KeyError, match="layer.o_proj.weight"):
        from_fused_gate_state_dict({k: v for k, v in sd.items() if "o_proj" not in k}, 4,
                                   prefix="layer.")
    with pytest.raises(ValueError, match="q_proj has 14 rows"):
        bad = dict(sd)
        bad["layer.q_proj.weight"] = sd["layer.q_proj.weight"][:14]
        from_fused_gate_state_dict(bad, 4, prefix="layer.")
    with pytest.raises(ValueError, match="must divide"):
        from_fused_gate_state_dict(sd, 4, num_key_value_heads=3, prefix="layer.")


def test_old_gate_proj_checkpoints_still_load() -> None:
    """State dicts written before the gate -> output_gate rename load into the new layer."""
    torch.manual_seed(4)
    layer = Attention(DIM, HEADS, **attention_kwargs("gated-g2"))
    old = {k.replace("output_gate_proj", "gate_proj"): v for k, v in layer.state_dict().items()}
    assert "gate_proj.weight" in old
    fresh = Attention(DIM, HEADS, **attention_kwargs("gated-g2"))
    fresh.load_state_dict(old)  # strict
    x = torch.randn(B, T, DIM)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    model = torch.nn.Sequential(fresh)  # nested prefix "0."
    model.load_state_dict({f"0.{k}": v for k, v in old.items()})
