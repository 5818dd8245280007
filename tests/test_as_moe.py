"""Tests of attnmoe.attention.as_moe: the quadratic-gating MoE rewrite reproduces the layer.

The reference is always the layer's own forward (SDPA path), read through a pre-hook on
``out_proj`` -- an independent computation from the dense ``A_ij``/``b_ij``/experts.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnmoe.attention import Attention
from attnmoe.attention.as_moe import AttentionMoE, as_moe, head_outputs

DIM, HEADS, B, T = 6, 2, 2, 4


ACTS = [None, "relu", "gelu", "silu", "sigmoid", "tanh", "elu", "softplus", "identity"]


def _mask() -> torch.Tensor:
    return torch.tensor([[False] * T, [False, False, True, True]])


GATES = [(None, "elementwise"), ("G1", "elementwise"), ("G1", "headwise"),
         ("G2", "elementwise"), ("G2", "headwise"), ("G3", "elementwise"), ("G3", "headwise"),
         ("G4", "elementwise"), ("G4", "headwise"), ("G5", "elementwise")]


@pytest.mark.parametrize("gate,gran", GATES)
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("act", ACTS)
def test_as_moe_reproduces_layer(act: str | None, score: str, gate: str | None, gran: str) -> None:
    for causal in (False, True):
        for bias in (False, True):
            for masked in (False, True):
                torch.manual_seed(0)
                layer = Attention(DIM, HEADS, value_activation=act, score=score,
                                  output_gate=gate, output_gate_granularity=gran,
                                  causal=causal, bias=bias).double()
                x = torch.randn(B, T, DIM, dtype=torch.float64)
                kpm = _mask() if masked else None
                moe = as_moe(layer, x, kpm)
                torch.testing.assert_close(moe(), head_outputs(layer, x, kpm), rtol=0, atol=1e-10)
                # the outer level over heads: the whole layer's output
                want = layer(x, key_padding_mask=kpm).detach()
                torch.testing.assert_close(moe.output(), want, rtol=0, atol=1e-10)


def test_gate_logits_are_query_key_products() -> None:
    """x~^T A_ij x~ + b_ij^T x~ + c_ij equals q_j . k_i / sqrt(D) from the projections."""
    torch.manual_seed(1)
    layer = Attention(DIM, HEADS).double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    moe = as_moe(layer, x)
    q = layer.q_proj(x).view(B, T, HEADS, -1)
    k = layer.k_proj(x).view(B, T, HEADS, -1)
    want = torch.einsum("bjhd,bihd->bhji", q, k) / math.sqrt(DIM // HEADS)
    torch.testing.assert_close(moe.gate_logits(moe.x_tilde), want.detach(), rtol=0, atol=1e-12)


def test_gate_weights_equal_layer_weights() -> None:
    torch.manual_seed(2)
    for score in ("softmax", "sigmoid"):
        layer = Attention(DIM, HEADS, score=score, causal=True).double()
        x = torch.randn(B, T, DIM, dtype=torch.float64)
        moe = as_moe(layer, x, _mask())
        want = layer.weights(x, key_padding_mask=_mask()).detach()
        torch.testing.assert_close(moe.gate_weights(moe.x_tilde), want, rtol=0, atol=1e-12)


def test_monomial_without_bias_and_structure() -> None:
    """No projection biases -> b = c = 0 (monomial gate); A_ij is non-zero only in block (j, i)."""
    torch.manual_seed(3)
    layer = Attention(DIM, HEADS, bias=False).double()
    moe = as_moe(layer, torch.randn(T, DIM, dtype=torch.float64))
    assert isinstance(moe, AttentionMoE)
    N = T * DIM
    assert moe.A.shape == (HEADS, T, T, N, N)
    assert moe.b.abs().max() == 0 and moe.c.abs().max() == 0
    j, i, h = 1, 3, 0
    blocks = moe.A[h, j, i].reshape(T, DIM, T, DIM)
    off = blocks.clone()
    off[j, :, i, :] = 0
    assert off.abs().max() == 0
    D = DIM // HEADS
    wq = layer.q_proj.weight[h * D : (h + 1) * D].T  # (dim, D)
    wk = layer.k_proj.weight[h * D : (h + 1) * D].T
    torch.testing.assert_close(blocks[j, :, i, :], (wq @ wk.T / math.sqrt(D)).detach())
    # with biases the gate is polynomial
    moe_b = as_moe(Attention(DIM, HEADS).double(), torch.randn(T, DIM, dtype=torch.float64))
    assert moe_b.b.abs().max() > 0 and moe_b.c.abs().max() > 0


def test_evaluates_new_inputs() -> None:
    """The rewrite depends on the weights only: it reproduces the layer on any x~."""
    torch.manual_seed(4)
    layer = Attention(DIM, HEADS, value_activation="tanh", output_gate="G1").double()
    moe = as_moe(layer, torch.zeros(1, T, DIM, dtype=torch.float64))
    x = torch.randn(3, T, DIM, dtype=torch.float64)
    torch.testing.assert_close(moe(x.reshape(3, -1)), head_outputs(layer, x), rtol=0, atol=1e-10)


def test_as_moe_errors() -> None:
    x = torch.randn(T, DIM)
    # a gate position or granularity that does not exist is refused by the layer, in one line
    for kwargs, match in (({"output_gate": "G6"}, "unknown output_gate position"),
                          ({"output_gate": "G1", "output_gate_granularity": "rowwise"},
                           "unknown output_gate_granularity"),
                          ({"output_gate": "G5", "output_gate_granularity": "headwise"},
                           "G5.*headwise")):
        with pytest.raises(ValueError, match=match) as err:
            as_moe(Attention(DIM, HEADS, **kwargs), x)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="dense rewrite"):  # G3/G4 components count too
        as_moe(Attention(16, 2, output_gate="G3"), torch.randn(12, 16))
    with pytest.raises(TypeError, match="Attention"):
        as_moe(torch.nn.Linear(DIM, DIM), x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dense rewrite"):
        as_moe(Attention(64, 4), torch.randn(64, 64))
    with pytest.raises(ValueError, match="rank"):
        as_moe(Attention(DIM, HEADS), torch.randn(1, 1, T, DIM))
    with pytest.raises(ValueError, match="context_dim"):
        as_moe(Attention(DIM, HEADS, context_dim=3), x)


def test_expert_family_chosen_by_name_not_function_identity() -> None:
    """A named activation uses attnmoe.moe's expert of that name; a callable (even the same
    function object) is applied to the linear expert -- both reproduce the layer."""
    torch.manual_seed(6)
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    named = Attention(DIM, HEADS, value_activation="gelu").double()
    assert as_moe(named, x).expert_name == "gelu"
    as_callable = Attention(DIM, HEADS, value_activation=torch.nn.functional.gelu).double()
    as_callable.load_state_dict(named.state_dict())
    moe = as_moe(as_callable, x)
    assert moe.expert_name is None
    torch.testing.assert_close(moe(), as_moe(named, x)(), rtol=0, atol=1e-12)
    assert as_moe(Attention(DIM, HEADS, value_activation="silu").double(), x).expert_name is None
    assert as_moe(Attention(DIM, HEADS, value_activation="identity").double(), x).expert_name == (
        "linear"
    )


def test_score_gate_components_sum_to_the_quadratic_gate() -> None:
    """Elementwise G3/G4 keep the D rank-one components of A, b, c: they add up to them."""
    torch.manual_seed(7)
    for g in ("G3", "G4"):
        layer = Attention(DIM, HEADS, output_gate=g, score="sigmoid").double()
        moe = as_moe(layer, torch.randn(B, T, DIM, dtype=torch.float64))
        assert moe.A_parts is not None and moe.A_parts.shape[3] == DIM // HEADS
        torch.testing.assert_close(moe.A_parts.sum(3), moe.A, rtol=0, atol=1e-13)
        torch.testing.assert_close(moe.b_parts.sum(3), moe.b, rtol=0, atol=1e-13)
        torch.testing.assert_close(moe.c_parts.sum(3) + moe.score_offset, moe.c, rtol=0, atol=1e-13)


def test_gated_logits_are_gated_query_key_products() -> None:
    """G4: the logits are (g_j * q_j) . k_i / sqrt(D); G3: q_j . (g_i * k_i) / sqrt(D)."""
    torch.manual_seed(8)
    for g, gran in (("G3", "elementwise"), ("G4", "elementwise"), ("G3", "headwise"), ("G4", "headwise")):
        layer = Attention(DIM, HEADS, output_gate=g, output_gate_granularity=gran).double()
        x = torch.randn(B, T, DIM, dtype=torch.float64)
        q, k, _, _ = layer.project(x)  # (B, H, T, D), gates applied by the layer
        want = (q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)).detach()
        moe = as_moe(layer, x)
        torch.testing.assert_close(moe.gate_logits(moe.x_tilde), want, rtol=0, atol=1e-12)


def test_heads_through_out_proj_give_layer_output() -> None:
    """Multi-head reading: out_proj(concat_h y_h) of the MoE outputs is the layer output."""
    torch.manual_seed(5)
    layer = Attention(DIM, HEADS, value_activation="softplus", output_gate="G2", causal=True).double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    y = as_moe(layer, x)()  # (B, H, T, D)
    out = layer.out_proj(y.transpose(1, 2).reshape(B, T, DIM))
    torch.testing.assert_close(out, layer(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("gate", [None, "G1", "G2", "G3", "G4", "G5"])
def test_whole_layer_at_awkward_sizes(gate: str | None) -> None:
    """dim 9, 3 heads of 3, 5 tokens, 3 sequences, causal + padding: the outer level over heads
    (out_proj and G5) reproduces the layer's output."""
    torch.manual_seed(9)
    layer = Attention(9, 3, output_gate=gate, causal=True, value_activation="tanh").double()
    x = torch.randn(3, 5, 9, dtype=torch.float64)
    kpm = torch.tensor([[False] * 5, [False, False, False, False, True], [False, True, False, True, False]])
    torch.testing.assert_close(as_moe(layer, x, kpm).output(), layer(x, key_padding_mask=kpm),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("act", [None, "sigmoid", "gelu"])
def test_sigmoid_head_is_the_sigmoid_attention_study_model(act: str | None) -> None:
    """Each (head, query, output coordinate) of a sigmoid-attention layer, read by as_moe, is
    the model the sigmoid-attention study fits: mixture_forward(polynomial gate, expert,
    normalization="sigmoid"), compared with the layer's own head outputs (issue 11)."""
    from attnmoe.moe import make_expert, make_gate, mixture_forward

    torch.manual_seed(3)
    layer = Attention(DIM, HEADS, value_activation=act, score="sigmoid", bias=True).double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)
    moe = as_moe(layer, x)
    want = head_outputs(layer, x).detach()  # (B, H, T, D)
    H, _, N, D = moe.expert_weight.shape
    gate, expert = make_gate("polynomial", N), make_expert("linear" if act is None else act)
    xr = moe.x_tilde.unsqueeze(0)  # (1, B, N): one replicate, B samples
    for h in range(H):
        for j in range(T):
            for m in range(D):
                params = {"A": moe.A[h, j][None], "b": moe.b[h, j][None], "c": moe.c[h, j][None],
                          "a": moe.expert_weight[h, :, :, m][None],
                          "alpha": moe.expert_bias[h, m].expand(1, T)}
                got = mixture_forward(gate, expert, params, xr, "sigmoid")[0]  # (B,)
                torch.testing.assert_close(got, want[:, h, j, m], rtol=0, atol=1e-10)
