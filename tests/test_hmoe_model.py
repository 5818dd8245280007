"""attnmoe.moe.hierarchical: the attention-shaped hierarchical MoE family.

References: an :class:`~attnmoe.attention.Attention` layer's own forward (one output coordinate,
headwise gates) and a loop over replicates, samples, heads and tokens written from the formula.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnmoe.attention import Attention
from attnmoe.moe import HierarchicalLayout, HierarchicalSpec, hierarchical_forward
from attnmoe.moe.hierarchical import tokens_last


def _layer_params(layer: Attention, m: int, spec: HierarchicalSpec) -> dict[str, torch.Tensor]:
    """The family's parameters (R = 1) for output coordinate m of ``layer`` (module docstring)."""
    C, H, D = layer.dim, layer.heads, layer.head_dim
    Wq = layer.q_proj.weight.detach().T.reshape(C, H, D)  # (C, H, D)
    Wk = layer.k_proj.weight.detach().T.reshape(C, H, D)
    Wv = layer.v_proj.weight.detach().T.reshape(C, H, D)
    wo = layer.out_proj.weight.detach()[m].reshape(H, D)  # (H, D)
    out = {
        "M": torch.einsum("phd,qhd->hpq", Wq, Wk) / math.sqrt(D),
        "a": torch.einsum("phd,hd->hp", Wv, wo),
    }
    if spec.key_bias:
        bq = layer.q_proj.bias.detach().reshape(H, D)
        out["u"] = torch.einsum("qhd,hd->hq", Wk, bq) / math.sqrt(D)
    if spec.expert_bias:
        out["alpha"] = (layer.v_proj.bias.detach().reshape(H, D) * wo).sum(-1)
    if layer.output_gate is not None:
        g = layer.output_gate_proj
        w = g.weight.detach()  # (H, C) headwise
        b = g.bias.detach() if g.bias is not None else torch.zeros(H, dtype=w.dtype)
        key = {"G1": ("beta", "beta0"), "G2": ("theta_v", "tau_v"),
               "G3": ("theta_s", "tau_s"), "G4": ("theta_s", "tau_s")}[layer.output_gate]
        out[key[0]], out[key[1]] = w, b
    return {k: v.unsqueeze(0) for k, v in out.items()}


SPECS = {
    None: {}, "G1": {"outer": "sigmoid"}, "G2": {"expert": "value-gated"},
    "G3": {"score_gate": "key"}, "G4": {"score_gate": "query"},
}


@pytest.mark.parametrize("gate", list(SPECS))
@pytest.mark.parametrize("bias", [False, True])
def test_family_is_one_output_of_a_headwise_gated_layer(gate: str | None, bias: bool) -> None:
    if gate == "G3" and bias:
        pytest.skip("G3 with projection biases gates query-only terms the family omits (docstring)")
    torch.manual_seed(0)
    C, H, T, B = 6, 3, 5, 7  # awkward sizes: head dim 2, 5 tokens
    layer = Attention(C, H, output_gate=gate, output_gate_granularity="headwise", bias=bias).double()
    x = torch.randn(B, T, C, dtype=torch.float64)
    want = layer(x)[:, -1, :].detach()  # (B, C): the query is the last token
    spec = HierarchicalSpec(H, T, C, key_bias=bias, expert_bias=bias, **SPECS[gate])
    for m in (0, 4):
        params = _layer_params(layer, m, spec)
        got = hierarchical_forward(spec, params, tokens_last(x.unsqueeze(0)))[0]  # (B,)
        if bias:
            got = got + layer.out_proj.bias.detach()[m]
        torch.testing.assert_close(got, want[:, m], rtol=0, atol=1e-10)


def _naive(spec: HierarchicalSpec, params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """The formula of the module docstring, one replicate, sample, head and token at a time."""
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    acts = {"linear": lambda z: z, "tanh": math.tanh, "sigmoid": sig,
            "value-gated": lambda z: z}
    R, n, T, d = X.shape
    out = torch.zeros(R, n, dtype=torch.float64)
    for r in range(R):
        p = {k: v[r].tolist() for k, v in params.items()}
        for j in range(n):
            x = X[r, j].tolist()
            xq = x[-1]
            dot = lambda w, v: sum(a * b for a, b in zip(w, v))  # noqa: E731
            outer = []
            for h in range(spec.heads):
                outer.append(dot(p["beta"][h], xq) + p["beta0"][h] if spec.outer != "sum" else 0.0)
            total = 0.0
            for h in range(spec.heads):
                logits = []
                for i in range(T):
                    lg = sum(xq[a] * p["M"][h][a][b] * x[i][b] for a in range(d) for b in range(d))
                    if spec.key_bias:
                        lg += dot(p["u"][h], x[i])
                    if spec.score_gate == "query":
                        lg *= sig(dot(p["theta_s"][h], xq) + p["tau_s"][h])
                    elif spec.score_gate == "key":
                        lg *= sig(dot(p["theta_s"][h], x[i]) + p["tau_s"][h])
                    logits.append(lg)
                mx = max(logits)
                ws = [math.exp(v - mx) for v in logits]
                head = 0.0
                for i in range(T):
                    e = acts[spec.expert](dot(p["a"][h], x[i]) + (p["alpha"][h] if spec.expert_bias else 0.0))
                    if spec.expert == "value-gated":
                        e *= sig(dot(p["theta_v"][h], x[i]) + p["tau_v"][h])
                    head += ws[i] / sum(ws) * e
                if spec.outer == "sigmoid":
                    head *= sig(outer[h])
                elif spec.outer == "softmax":
                    mo = max(outer)
                    head *= math.exp(outer[h] - mo) / sum(math.exp(o - mo) for o in outer)
                total += head
            out[r, j] = total
    return out


@pytest.mark.parametrize("outer", ["sum", "softmax", "sigmoid"])
@pytest.mark.parametrize("expert,score", [("linear", "key"), ("tanh", None), ("sigmoid", "query"),
                                          ("value-gated", None)])
def test_family_matches_the_formula(outer: str, expert: str, score: str | None) -> None:
    torch.manual_seed(1)
    spec = HierarchicalSpec(2, 3, 2, outer=outer, score_gate=score, expert=expert,
                            key_bias=True, expert_bias=True)
    layout = HierarchicalLayout(spec)
    R, n = 2, 5
    flat = torch.randn(R, layout.n_params, dtype=torch.float64)
    X = torch.randn(R, n, 3, 2, dtype=torch.float64)
    params = layout.unpack(flat)
    torch.testing.assert_close(layout.forward(flat, X), _naive(spec, params, X), rtol=0, atol=1e-12)
    # pack/unpack round trip; a softmax outer level's common shift leaves f unchanged
    shifted = dict(params)
    if outer == "softmax":
        assert bool((params["beta"][:, 0] == 0).all())
        shifted["beta"] = params["beta"] + torch.randn(R, 1, 2, dtype=torch.float64)
        shifted["beta0"] = params["beta0"] + 3.0
    torch.testing.assert_close(layout.forward(layout.pack(shifted), X), layout.forward(flat, X),
                               rtol=0, atol=1e-12)


def test_bad_structure_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="unknown outer gate"):
        HierarchicalSpec(2, 3, 2, outer="G7")
    with pytest.raises(ValueError, match="unknown score gate"):
        HierarchicalSpec(2, 3, 2, score_gate="value")
    with pytest.raises(ValueError, match="unknown expert"):
        HierarchicalSpec(2, 3, 2, expert="quadratic")
    with pytest.raises(ValueError, match="heads must be"):
        HierarchicalSpec(0, 3, 2)
    with pytest.raises(ValueError, match="flat must be"):
        HierarchicalLayout(HierarchicalSpec(2, 3, 2)).unpack(torch.zeros(1, 3))
