"""Tests of attnmoe.attention.probes: hooks leave outputs alone and measure what they claim."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnmoe.attention import Attention
from attnmoe.attention.probes import AttentionProbes

DIM, HEADS, B, T = 8, 2, 3, 6




class TinyModel(nn.Module):
    """Two pre-norm attention blocks, one gated, to probe through a parent module."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn1 = Attention(DIM, HEADS, causal=True)
        self.attn2 = Attention(DIM, HEADS, output_gate="G1", value_activation="gelu")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        return x + self.attn2(self.norm2(x), key_padding_mask=mask)


def test_hooks_do_not_change_outputs_or_grads() -> None:
    torch.manual_seed(0)
    model = TinyModel()
    x = torch.randn(B, T, DIM)
    y0 = model(x)
    y0.sum().backward()
    g0 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with AttentionProbes(model) as probes:
        y1 = model(x)
        y1.sum().backward()
    assert torch.equal(y0, y1)
    for a, p in zip(g0, model.parameters(), strict=True):
        assert torch.equal(a, p.grad)
    assert set(probes.summary()) == {"attn1", "attn2"}
    # after exit the hooks are gone: nothing more is recorded
    calls = probes.summary()["attn1"]["calls"]
    model(x)
    assert probes.summary()["attn1"]["calls"] == calls == 1


def _hand_weights(layer: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    D = DIM // HEADS
    q = (x @ layer.q_proj.weight.T + layer.q_proj.bias).view(B, T, HEADS, D)
    k = (x @ layer.k_proj.weight.T + layer.k_proj.bias).view(B, T, HEADS, D)
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) if layer.score == "softmax" else torch.sigmoid(s - math.log(T))


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("causal", [False, True])
def test_first_token_share_by_hand(score: str, causal: bool) -> None:
    torch.manual_seed(1)
    layer = Attention(DIM, HEADS, score=score, causal=causal, output_gate="G1").double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    with AttentionProbes(layer, threshold=0.05) as probes:
        layer(x)
    got = probes.summary()["<root>"]
    with torch.no_grad():
        w = _hand_weights(layer, x, causal)
        share = (w[..., 0] / w.sum(-1)).mean().item()
        gate = torch.sigmoid(x @ layer.output_gate_proj.weight.T + layer.output_gate_proj.bias)  # (B, T, dim)
        v = (x @ layer.v_proj.weight.T + layer.v_proj.bias).view(B, T, HEADS, -1)
        heads = torch.einsum("bhts,bshd->bthd", w, v).reshape(B, T, DIM) * gate
        small = (heads.abs() < 0.05).double().mean().item()
    assert got["first_token_share"] == pytest.approx(share, abs=1e-12)
    assert got["mean_output_gate"] == pytest.approx(gate.mean().item(), abs=1e-12)
    assert got["small_output_fraction"] == pytest.approx(small, abs=1e-12)
    assert got["max_abs_hidden"] == pytest.approx(x.abs().max().item())
    assert got["max_abs_output"] == pytest.approx(layer(x).abs().max().item())


def test_running_average_over_calls_and_masks() -> None:
    """Two calls of different sizes average with element weights; masked rows are handled."""
    torch.manual_seed(2)
    model = TinyModel().double()
    x1 = torch.randn(B, T, DIM, dtype=torch.float64)
    x2 = torch.randn(1, T, DIM, dtype=torch.float64)
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, 0] = True  # the first token is ignored: its share must be 0 in attn2
    with AttentionProbes(model) as probes:
        model(x2, mask)
    assert probes.summary()["attn2"]["first_token_share"] == 0.0
    probes.reset()
    with probes:
        model(x1)
        model(x2)
    s = probes.summary()["attn1"]
    assert s["calls"] == 2
    p1, p2 = AttentionProbes(model), AttentionProbes(model)
    with p1:
        model(x1)
    with p2:
        model(x2)
    a, b = p1.summary()["attn1"]["first_token_share"], p2.summary()["attn1"]["first_token_share"]
    assert s["first_token_share"] == pytest.approx((a * B + b * 1) / (B + 1), abs=1e-12)
    assert s["mean_output_gate"] is None  # attn1 is not gated


def test_probe_errors() -> None:
    with pytest.raises(ValueError, match="no attnmoe.attention.Attention"):
        AttentionProbes(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        AttentionProbes("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        AttentionProbes(Attention(DIM, HEADS), threshold=0.0)


def test_cross_attention_masks_and_cache() -> None:
    """Masks and context passed by keyword reach the recomputed weights; cached calls are
    counted apart (their earlier keys are not in the call's inputs)."""
    from attnmoe.attention import KVCache

    torch.manual_seed(3)
    layer = Attention(DIM, HEADS).double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    ctx = torch.randn(B, T + 2, DIM, dtype=torch.float64)
    am = torch.randn(T, T + 2, dtype=torch.float64)
    with AttentionProbes(layer) as probes:
        layer(x, ctx, attn_mask=am)
    with torch.no_grad():
        q = layer.q_proj(x).view(B, T, HEADS, -1).transpose(1, 2)
        k = layer.k_proj(ctx).view(B, T + 2, HEADS, -1).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(DIM // HEADS) + am, -1)
    got = probes.summary()["<root>"]
    assert got["first_token_share"] == pytest.approx(w[..., 0].mean().item(), abs=1e-12)
    causal = Attention(DIM, HEADS, causal=True)
    cache = KVCache()
    with AttentionProbes(causal) as probes:
        causal(x.float()[:, :3], cache=cache)
        causal(x.float()[:, 3:4], cache=cache)
    s = probes.summary()["<root>"]
    # the first call filled an empty cache: all its keys are in its input, so it is counted
    assert s["calls"] == 2 and s["cached_calls"] == 1
    with torch.no_grad():
        x3 = x.float()[:, :3]
        q = causal.q_proj(x3).view(B, 3, HEADS, -1).transpose(1, 2)
        k = causal.k_proj(x3).view(B, 3, HEADS, -1).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / math.sqrt(DIM // HEADS)
        w = torch.softmax(logits.masked_fill(~torch.ones(3, 3).bool().tril(), float("-inf")), -1)
    assert s["first_token_share"] == pytest.approx(w[..., 0].mean().item(), abs=1e-6)
