"""attnmoe.moe: gates, experts and the mixture against naive per-sample reference loops; the
shared top-K sparse softmax, score transforms and input maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnmoe.moe import (
    INPUT_MAPS,
    LINEAR_SCORES,
    MixtureOfExperts,
    ParameterLayout,
    make_expert,
    make_gate,
    make_input_map,
    make_linear_score,
    mixture_forward,
    topk_log_weights,
    topk_softmax,
)

R, N, K, D = 2, 5, 3, 2


def _params(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    return {"A": r(R, K, D, D), "b": r(R, K, D), "c": r(R, K), "a": r(R, K, D), "alpha": r(R, K)}


def _naive(gate: str, expert: str, p: dict, x: torch.Tensor, normalization: str) -> torch.Tensor:
    act = {"linear": lambda z: z, "sigmoid": lambda z: 1 / (1 + math.exp(-z)), "tanh": math.tanh,
           "relu": lambda z: max(z, 0.0), "gelu": lambda z: 0.5 * z * (1 + math.erf(z / math.sqrt(2)))}[expert]
    out = torch.zeros(x.shape[:2], dtype=torch.float64)
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            xv = x[r, j].tolist()
            logits, values = [], []
            for i in range(K):
                g = float(p["c"][r, i])
                if gate in ("polynomial", "monomial"):
                    g += sum(xv[u] * float(p["A"][r, i, u, v]) * xv[v] for u in range(D) for v in range(D))
                if gate in ("polynomial", "linear"):
                    g += sum(float(p["b"][r, i, u]) * xv[u] for u in range(D))
                logits.append(g)
                values.append(act(sum(float(p["a"][r, i, u]) * xv[u] for u in range(D)) + float(p["alpha"][r, i])))
            if normalization == "softmax":
                z = sum(math.exp(g) for g in logits)
                w = [math.exp(g) / z for g in logits]
            else:
                w = [1 / (1 + math.exp(-g)) for g in logits]
            out[r, j] = sum(wi * vi for wi, vi in zip(w, values))
    return out


@pytest.mark.parametrize("gate", ["linear", "polynomial", "monomial"])
@pytest.mark.parametrize("expert", ["linear", "sigmoid", "tanh", "gelu", "relu"])
def test_mixture_matches_naive_loop(gate: str, expert: str) -> None:
    gen = torch.Generator().manual_seed(0)
    p = _params(gen)
    x = torch.randn(R, N, D, generator=gen, dtype=torch.float64)
    for normalization in ("softmax", "sigmoid"):
        fast = mixture_forward(make_gate(gate, D), make_expert(expert), p, x, normalization)
        assert fast.shape == (R, N)
        torch.testing.assert_close(fast, _naive(gate, expert, p, x, normalization), rtol=1e-12, atol=1e-12)


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(ValueError, match="monomial"):
        make_gate("cubic", 2)
    with pytest.raises(ValueError, match="sigmoid"):
        make_expert("swish")
    with pytest.raises(ValueError, match="normalization"):
        MixtureOfExperts("monomial", "linear", 2, 2, normalization="sparsemax")
    with pytest.raises(ValueError, match="n_experts"):
        MixtureOfExperts("monomial", "linear", 0, 2)
    with pytest.raises(ValueError, match="dim"):
        make_gate("linear", 0)
    with pytest.raises(ValueError, match=r"\(R, n, 2\)"):
        make_gate("linear", 2).logits({"b": torch.zeros(1, 2, 2), "c": torch.zeros(1, 2)}, torch.zeros(4, 2))


def test_module_gradients_and_fixed_reference() -> None:
    model = MixtureOfExperts("polynomial", "gelu", K, D, replicates=R, generator=torch.Generator().manual_seed(1))
    x = torch.randn(R, N, D, dtype=torch.float64)
    out = model(x)
    assert out.shape == (R, N) and out.dtype == torch.float64 and torch.isfinite(out).all()
    out.square().sum().backward()
    for name, p in model.params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        if name in ("A", "b", "c"):
            assert p.grad[:, 0].abs().max() == 0  # reference expert's gating is fixed
            assert p.grad[:, 1:].abs().max() > 0
        else:
            assert p.grad.abs().max() > 0
    # functional form with the module's effective params gives the same output
    torch.testing.assert_close(out, mixture_forward(model.gate, model.expert, model.natural_params(), x))


@pytest.mark.parametrize("gate", ["linear", "polynomial", "monomial"])
def test_layout_roundtrip_and_invariance(gate: str) -> None:
    layout = ParameterLayout(gate, "tanh", K, D)
    ntri = D * (D + 1) // 2
    per_gate = {"linear": D + 1, "polynomial": ntri + D + 1, "monomial": ntri + 1}[gate]
    assert layout.n_params == (K - 1) * per_gate + K * (D + 1)
    gen = torch.Generator().manual_seed(2)
    flat = torch.randn(R, layout.n_params, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(layout.pack(layout.unpack(flat)), flat)
    # packing arbitrary params (non-symmetric A, non-zero reference) keeps the function
    p = {k: v for k, v in _params(gen).items() if k in (*layout.gate.param_names, "a", "alpha")}
    x = torch.randn(R, N, D, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(layout.forward(layout.pack(p), x), mixture_forward(layout.gate, layout.expert, p, x))
    unpacked = layout.unpack(layout.pack(p))
    for key in layout.gate.param_names:
        assert unpacked[key][:, 0].abs().max() == 0
    if "A" in unpacked:
        torch.testing.assert_close(unpacked["A"], unpacked["A"].transpose(-1, -2))


def _topk_by_hand(u: np.ndarray, K: int) -> np.ndarray:
    """TopK(u) of one logit vector by sorting: exp(u_i) 1[i in top_K] / sum_{top_K} exp(u_l)."""
    keep = np.argsort(-u)[:K]
    w = np.zeros_like(u)
    e = np.exp(u[keep] - u[keep].max())
    w[keep] = e / e.sum()
    return w


@pytest.mark.parametrize("layout", ["likelihood (k, n), dim 0", "mixture (R, n, k), dim -1"])
@pytest.mark.parametrize("top_k", [1, 2, 3, 4, None])
def test_topk_sparse_softmax_matches_a_numpy_loop(layout: str, top_k: int | None) -> None:
    gen = torch.Generator().manual_seed(11)
    k = 4
    if layout.startswith("likelihood"):
        u, dim = 3 * torch.randn(k, 17, generator=gen, dtype=torch.float64), 0
        columns = [(slice(None), j) for j in range(17)]
    else:
        u, dim = 3 * torch.randn(2, 9, k, generator=gen, dtype=torch.float64), -1
        columns = [(r, j, slice(None)) for r in range(2) for j in range(9)]
    logw, mask = topk_log_weights(u, top_k, dim=dim)
    w = topk_softmax(u, top_k, dim=dim)
    assert logw.shape == u.shape and w.shape == u.shape and torch.isfinite(logw).all()
    assert (mask is None) == (top_k in (None, k))
    K = k if top_k is None else top_k
    un = u.numpy()
    for col in columns:
        v = un[col]
        assert len(np.unique(v)) == k  # no ties
        ref = _topk_by_hand(v, K)
        kept = np.zeros(k, dtype=bool) if mask is not None else np.ones(k, dtype=bool)
        if mask is not None:
            kept[np.argsort(-v)[:K]] = True
            assert np.array_equal(mask[col].numpy(), kept)
        assert np.allclose(np.where(kept, np.exp(logw[col].numpy()), 0.0), ref, rtol=1e-12, atol=0)
        assert np.allclose(w[col].numpy(), ref, rtol=1e-12, atol=0)


def test_topk_and_gate_registries_refuse_bad_input_with_one_line() -> None:
    u = torch.zeros(3, 5, dtype=torch.float64)
    for K in (0, 4, -1, True, 1.5):
        for fn in (topk_log_weights, topk_softmax):
            with pytest.raises(ValueError, match=r"1 <= K <= k") as err:
                fn(u, K, dim=0)
            assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown gate score 'cosine'.*'temperature'") as err:
        make_linear_score("cosine")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"unknown input map 'relu'.*'tanh'") as err:
        make_input_map("relu")
    assert "\n" not in str(err.value)


def test_linear_scores_and_input_maps_are_their_formulas() -> None:
    gen = torch.Generator().manual_seed(12)
    lin = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    tau = torch.tensor(0.7, dtype=torch.float64)
    assert sorted(LINEAR_SCORES) == ["activation", "softmax", "temperature"]
    assert sorted(INPUT_MAPS) == ["identity", "tanh"]
    assert torch.equal(make_linear_score("softmax")(lin, None), lin)
    assert torch.equal(make_linear_score("temperature")(lin, tau), lin / tau)
    assert torch.equal(make_linear_score("activation")(lin, tau), torch.tanh(lin) / tau)
    assert torch.equal(make_input_map("identity")(lin), lin)
    assert torch.equal(make_input_map("tanh")(lin), torch.tanh(lin))
