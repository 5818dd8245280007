"""Modern-decoder options of ``Attention``: kv_heads (GQA), head_dim, rope, qk_norm.

Every variant x every option combination is checked against ``reference`` below: a plain
per-head loop written from the formulas (RoPE from its angle formula on coordinate pairs,
RMSNorm by hand, key/value head ``h // (H / KV)``), sharing nothing with the layer's code but
its parameters.  float64, tolerance 1e-10 (the layer's SDPA, chunked-sigmoid and explicit
paths); the cache is checked against full recomputation; ``as_moe`` and the probes too.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnmoe.attention import Attention, AttentionProbes, KVCache, attention_kwargs, list_variants
from attnmoe.attention.as_moe import as_moe, head_outputs

F64 = torch.float64
DIM, HEADS, B, T = 16, 4, 2, 7
# (kv_heads, head_dim, rope, qk_norm)
CONFIGS = [
    (2, None, None, False),  # grouped-query only
    (4, 6, None, False),  # head_dim != dim / heads
    (4, None, 10000.0, False),  # rope only
    (4, None, None, True),  # q/k norm only
    (1, 6, 500.0, True),  # multi-query + everything
    (2, 6, 10000.0, True),
]
VARIANTS = list_variants() + ["active-gelu+gated-g1", "sigmoid+gated-g3-headwise",
                              "active-tanh+gated-g4", "sigmoid+gated-g2"]


@pytest.fixture(autouse=True)
def _small_sigmoid_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks, so these tiny layers take the chunked sigmoid path over several blocks."""
    import attnmoe.attention.sigmoid_chunked as sc

    monkeypatch.setattr(sc, "CHUNK_ELEMENTS", 16)


def _layer(name: str, cfg: tuple, *, causal: bool, bias: bool = True, seed: int = 0) -> Attention:
    kv, hd, rope, qk = cfg
    torch.manual_seed(seed)
    layer = Attention(DIM, HEADS, kv_heads=kv, head_dim=hd, rope=rope, qk_norm=qk, causal=causal,
                      bias=bias, **attention_kwargs(name)).double().eval()
    with torch.no_grad():  # non-trivial norm weights and gate biases
        for m in (layer.q_norm, layer.k_norm):
            if m is not None:
                m.weight.uniform_(0.5, 1.5)
    return layer


def _rope_ref(u: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate pairs (c, c + D/2) of ``u`` ``(T, D)`` by ``pos * base^(-2c/D)`` (loop over c)."""
    D = u.shape[-1]
    out = u.clone()
    for c in range(D // 2):
        ang = pos.to(F64) * base ** (-2.0 * c / D)
        a, b = u[:, c], u[:, c + D // 2]
        out[:, c] = a * torch.cos(ang) - b * torch.sin(ang)
        out[:, c + D // 2] = b * torch.cos(ang) + a * torch.sin(ang)
    return out


def reference(layer: Attention, x: torch.Tensor, kpm: torch.Tensor | None = None,
              positions: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's output from its formulas, one batch element and head at a time."""
    Bn, Tn, _ = x.shape
    H, KV, D = layer.heads, layer.kv_heads, layer.head_dim
    g = H // KV

    def lin(m, z):
        return z @ m.weight.T + (m.bias if m.bias is not None else 0.0)

    def rms(u, m):
        return u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + m.eps) * m.weight

    act = layer._act or (lambda t: t)
    pos = torch.arange(Tn) if positions is None else positions
    outs = []
    for b in range(Bn):
        xb = x[b]
        gp = layer.output_gate_proj
        gate = None if gp is None else torch.sigmoid(lin(gp, xb))
        heads_out = []
        for h in range(H):
            kvh = h // g
            q = lin(layer.q_proj, xb)[:, h * D:(h + 1) * D]
            k = lin(layer.k_proj, xb)[:, kvh * D:(kvh + 1) * D]
            v = act(lin(layer.v_proj, xb)[:, kvh * D:(kvh + 1) * D])
            if layer.qk_norm:
                q, k = rms(q, layer.q_norm), rms(k, layer.k_norm)
            if layer.rope is not None:
                q, k = _rope_ref(q, pos, layer.rope), _rope_ref(k, pos, layer.rope)

            def gate_of(head, gate=gate):
                if layer.output_gate_granularity == "headwise":
                    return gate[:, head:head + 1]
                return gate[:, head * D:(head + 1) * D]

            pos_gate = layer.output_gate
            if pos_gate == "G2":
                v = v * gate_of(kvh)
            elif pos_gate == "G3":
                k = k * gate_of(kvh)
            elif pos_gate == "G4":
                q = q * gate_of(h)
            s = q @ k.T / math.sqrt(D)
            allowed = torch.ones(Tn, Tn, dtype=torch.bool)
            if layer.causal:
                allowed &= torch.ones(Tn, Tn, dtype=torch.bool).tril()
            if kpm is not None:
                allowed &= ~kpm[b][None, :]
            if layer.score == "softmax":
                w = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
            else:
                w = torch.sigmoid(s - math.log(Tn)) * allowed
            y = w @ v
            if pos_gate == "G1":
                y = y * gate_of(h)
            heads_out.append(y)
        o = lin(layer.out_proj, torch.cat(heads_out, -1))
        if layer.output_gate == "G5":
            o = o * gate
        outs.append(o)
    return torch.stack(outs)


def _kpm() -> torch.Tensor:
    return torch.tensor([[False] * T, [False] * (T - 2) + [True] * 2])


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_matches_reference(name: str, cfg: tuple) -> None:
    for causal in (True, False):
        layer = _layer(name, cfg, causal=causal)
        x = torch.randn(B, T, DIM, dtype=F64)
        for kpm in (None, _kpm()):
            want = reference(layer, x, kpm)
            for ref in (False, True):
                got = layer(x, key_padding_mask=kpm, reference=ref)
                torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_no_bias_and_shapes(cfg: tuple) -> None:
    kv, hd, _, qk = cfg
    layer = _layer("gated-g2-headwise", cfg, causal=True, bias=False)
    D = hd or DIM // HEADS
    assert layer.q_proj.weight.shape == (HEADS * D, DIM)
    assert layer.k_proj.weight.shape == (kv * D, DIM)
    assert layer.out_proj.weight.shape == (DIM, HEADS * D)
    assert layer.output_gate_proj.weight.shape == (kv, DIM)  # G2 gates key/value heads
    assert (layer.q_norm is not None) == qk
    x = torch.randn(B, T, DIM, dtype=F64)
    torch.testing.assert_close(layer(x), reference(layer, x), rtol=0, atol=1e-10)


def test_explicit_positions_and_rope_is_relative() -> None:
    cfg = (2, 6, 10000.0, True)
    layer = _layer("softmax", cfg, causal=True)
    x = torch.randn(B, T, DIM, dtype=F64)
    pos = torch.arange(T) + 5
    got = layer(x, positions=pos)
    torch.testing.assert_close(got, reference(layer, x, positions=pos), rtol=0, atol=1e-10)
    torch.testing.assert_close(got, layer(x), rtol=0, atol=1e-10)  # a shift changes nothing
    per_batch = torch.stack([pos, torch.arange(T) * 2])  # (B, T): scaled positions differ
    y2 = layer(x, positions=per_batch)
    torch.testing.assert_close(y2[0], got[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(y2[1], reference(layer, x[1:], positions=per_batch[1])[0],
                               rtol=0, atol=1e-10)
    cos_sin = layer.rotary(T, 0, per_batch, dtype=F64)  # a host model's precomputed cos/sin
    torch.testing.assert_close(layer(x, rotary=cos_sin), y2, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("name", VARIANTS)
def test_cache_equals_full_recomputation(name: str, cfg: tuple) -> None:
    """Decoding in chunks (positions continue through the cache) = the full sequence's rows."""
    layer = _layer(name, cfg, causal=True)
    if layer.score == "sigmoid":
        layer.sigmoid_bias = -1.0  # the default -log(n) depends on the number of keys
    x = torch.randn(B, T, DIM, dtype=F64)
    full = layer(x)
    cache, start = KVCache(), 0
    for n in (3, 1, 2, 1):
        y = layer(x[:, start:start + n], cache=cache)
        torch.testing.assert_close(y, full[:, start:start + n], rtol=0, atol=1e-10)
        start += n
    assert cache.k.shape == (B, layer.kv_heads, T, layer.head_dim)


@pytest.mark.parametrize("cfg", CONFIGS[2:], ids=str)
@pytest.mark.parametrize("name", ["softmax", "sigmoid", "gated-g3", "active-gelu+gated-g4"])
def test_non_causal_cache_equals_prefix_recomputation(name: str, cfg: tuple) -> None:
    """Without causality a chunk sees every cached key: its rows equal those of the whole
    prefix recomputed (sigmoid's default bias -log(n) then counts the same keys)."""
    layer = _layer(name, cfg, causal=False)
    x = torch.randn(B, T, DIM, dtype=F64)
    cache, start = KVCache(), 0
    for n in (3, 1, 3):
        y = layer(x[:, start:start + n], cache=cache)
        want = reference(layer, x[:, :start + n])[:, start:]
        torch.testing.assert_close(y, want, rtol=0, atol=1e-10)
        start += n


@pytest.mark.parametrize("gate", [None, "G1", "G4", "G5"])
def test_cross_attention_with_gqa_head_dim_and_norm(gate: str | None) -> None:
    """Cross-attention (no rope: no shared positions) with KV heads, head_dim and q/k norm,
    against the formulas written out here."""
    torch.manual_seed(4)
    layer = Attention(DIM, HEADS, kv_heads=2, head_dim=6, qk_norm=True, context_dim=5,
                      output_gate=gate).double()
    x, ctx = torch.randn(B, T, DIM, dtype=F64), torch.randn(B, 4, 5, dtype=F64)
    kpm = torch.tensor([[False] * 4, [False, False, False, True]])

    def rms(u, m):
        return u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + m.eps) * m.weight

    q = rms(layer.q_proj(x).view(B, T, HEADS, 6), layer.q_norm)  # (B, T, H, D)
    k = rms(layer.k_proj(ctx).view(B, 4, 2, 6), layer.k_norm)  # (B, S, KV, D)
    v = layer.v_proj(ctx).view(B, 4, 2, 6)
    gate_v = None if gate is None else torch.sigmoid(layer.output_gate_proj(x))
    if gate == "G4":
        q = q * gate_v.view(B, T, HEADS, 6)
    heads = []
    for h in range(HEADS):
        s = torch.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h // 2]) / math.sqrt(6)
        w = torch.softmax(s.masked_fill(kpm[:, None, :], float("-inf")), -1)
        y = torch.einsum("bts,bsd->btd", w, v[:, :, h // 2])
        if gate == "G1":
            y = y * gate_v[..., h * 6:(h + 1) * 6]
        heads.append(y)
    want = layer.out_proj(torch.cat(heads, -1))
    if gate == "G5":
        want = want * gate_v
    for ref in (False, True):
        got = layer(x, ctx, key_padding_mask=kpm, reference=ref)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


GATES = [(None, "elementwise"), ("G1", "elementwise"), ("G2", "headwise"), ("G3", "elementwise"),
         ("G3", "headwise"), ("G4", "elementwise"), ("G4", "headwise"), ("G5", "elementwise")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("gate,gran", GATES)
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_as_moe_exact_with_modern_options(cfg: tuple, gate: str | None, gran: str,
                                          score: str) -> None:
    kv, hd, rope, qk = cfg
    torch.manual_seed(3)
    layer = Attention(8, 2, kv_heads=min(kv, 2), head_dim=hd and 4, rope=rope, qk_norm=qk,
                      output_gate=gate, output_gate_granularity=gran, score=score,
                      value_activation="gelu", causal=True).double()
    x = torch.randn(2, 3, 8, dtype=F64)
    kpm = torch.tensor([[False] * 3, [False, False, True]])
    moe = as_moe(layer, x, kpm)
    torch.testing.assert_close(moe(), head_outputs(layer, x, kpm), rtol=0, atol=1e-10)
    torch.testing.assert_close(moe.output(), layer(x, key_padding_mask=kpm).detach(),
                               rtol=0, atol=1e-10)


def test_as_moe_gate_weights_with_rope_and_norm() -> None:
    layer = _layer("softmax", (2, 6, 100.0, True), causal=True)
    x = torch.randn(1, 3, DIM, dtype=F64)
    moe = as_moe(layer, x)
    torch.testing.assert_close(moe.gate_weights(moe.x_tilde), layer.weights(x), rtol=0, atol=1e-10)


def test_probes_first_token_share_with_gqa_rope() -> None:
    layer = _layer("gated-g1", (2, 6, 10000.0, True), causal=True)
    x = torch.randn(B, T, DIM, dtype=F64)
    pos = torch.arange(T) + 3
    with AttentionProbes(layer) as probes:
        layer(x, positions=pos)
    share = probes.summary()["<root>"]["first_token_share"]
    # independent: the weights from the reference formulas, read off a one-hot value
    q = layer.q_proj(x).view(B, T, HEADS, 6).transpose(1, 2)
    k = layer.k_proj(x).view(B, T, 2, 6).transpose(1, 2)
    q = torch.stack([torch.stack([_rope_ref(layer.q_norm(q[b, h]), pos, 10000.0)
                                  for h in range(HEADS)]) for b in range(B)])
    k = torch.stack([torch.stack([_rope_ref(layer.k_norm(k[b, h // 2]), pos, 10000.0)
                                  for h in range(HEADS)]) for b in range(B)])
    s = (q @ k.transpose(-1, -2) / math.sqrt(6)).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    want = torch.softmax(s, -1)[..., 0].mean().item()
    assert abs(share - want) < 1e-10


def test_gradients_reach_every_parameter() -> None:
    layer = Attention(DIM, HEADS, kv_heads=2, head_dim=6, rope=10000.0, qk_norm=True,
                      output_gate="G3", causal=True)
    layer(torch.randn(B, T, DIM)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_out_bias_and_repr() -> None:
    layer = Attention(DIM, HEADS, kv_heads=2, rope=10000.0, qk_norm=True, out_bias=False)
    assert layer.out_proj.bias is None and layer.q_proj.bias is not None
    assert "kv_heads=2" in repr(layer) and "rope=10000.0" in repr(layer)


@pytest.mark.parametrize("kwargs,match", [
    ({"kv_heads": 3}, "must divide heads"),
    ({"kv_heads": 0}, "kv_heads must be positive"),
    ({"head_dim": 5, "rope": 10000.0}, "head_dim must be even"),
    ({"rope": 1.0}, "rotary base"),
    ({"rope": True}, "rotary base"),
    ({"rope": 10000.0, "context_dim": 8}, "rope is for self-attention"),
    ({"qk_norm": 1}, "qk_norm must be a bool"),
    ({"qk_norm": True, "qk_norm_eps": 0.0}, "qk_norm_eps"),
])
def test_invalid_options_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        Attention(DIM, HEADS, **kwargs)


def test_head_dim_lifts_divisibility_and_call_errors() -> None:
    Attention(10, 4, head_dim=3)  # dim need not divide by heads with an explicit head_dim
    with pytest.raises(ValueError, match="or give head_dim"):
        Attention(10, 4)
    x = torch.randn(1, 3, DIM)
    with pytest.raises(ValueError, match="without rope"):
        Attention(DIM, HEADS)(x, positions=torch.arange(3))
    with pytest.raises(ValueError, match="positions must be"):
        Attention(DIM, HEADS, rope=10000.0)(x, positions=torch.arange(4))
    with pytest.raises(ValueError, match="rope is for self-attention"):
        Attention(DIM, HEADS, rope=10000.0)(x, torch.randn(1, 2, DIM))
