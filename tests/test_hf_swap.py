"""swap_attention on tiny random ``transformers`` models (built from configs; no download).

The independent computation is the unswapped model itself: its own attention code (SDPA
or eager) on the same weights.  float32; the issue's bar is 1e-5 max abs on the logits and
the same greedy tokens from ``generate`` (which runs the host's KV cache through the adapter).
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnmoe.attention import Attention, AttentionProbes, list_variants
from attnmoe.integrations.transformers import (
    HFAttention,
    _HostCache,
    swap_attention,
)

V, T = 61, 9


def _tiny(family: str, impl: str = "sdpa", **extra) -> torch.nn.Module:
    small = {"vocab_size": V, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
                 "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if family == "llama":
        cfg = transformers.LlamaConfig(**small, **extra)
        cls = transformers.LlamaForCausalLM
    elif family == "mistral":  # its default sliding window (4096) is longer than these inputs
        cfg = transformers.MistralConfig(**small, **extra)
        cls = transformers.MistralForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**small, **extra)
        cls = transformers.Qwen2ForCausalLM
    elif family == "qwen3":  # head_dim != hidden / heads, q/k norms
        cfg = transformers.Qwen3Config(**small, head_dim=12, **extra)
        cls = transformers.Qwen3ForCausalLM
    else:
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0, **extra)
        cls = transformers.GPT2LMHeadModel
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():  # random q/k norm weights, so that copying them matters
        for name, p in model.named_parameters():
            if "q_norm" in name or "k_norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt2"]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_swap_reproduces_forward_with_padding(family: str, impl: str) -> None:
    model = _tiny(family, impl)
    swapped = swap_attention(copy.deepcopy(model), "softmax")
    n = sum(isinstance(m, HFAttention) for m in swapped.modules())
    assert n == 2
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = swapped(input_ids=ids, attention_mask=mask).logits
    # the padded query rows see no key; eager's additive mask makes them uniform over every
    # key, attnmoe's causal mask over the earlier ones: compare the real tokens' rows
    real = mask.bool()
    assert (got - want)[real].abs().max() <= 1e-5
    if impl == "sdpa":
        assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_swap_reproduces_greedy_generation(family: str, monkeypatch) -> None:
    model = _tiny(family)
    swapped = swap_attention(copy.deepcopy(model), "softmax")
    ids, mask = _batch()
    appended = []
    orig = _HostCache.append
    monkeypatch.setattr(_HostCache, "append",
                        lambda self, k, v: appended.append(k.shape[-2]) or orig(self, k, v))
    kw = {"attention_mask": mask, "max_new_tokens": 10, "do_sample": False, "pad_token_id": 0}
    want = model.generate(ids, **kw)
    got = swapped.generate(ids, **kw)
    assert torch.equal(got, want)
    assert appended.count(1) >= 2 * 9  # decoding went through the host cache, token by token
    with torch.no_grad():  # and the logits of the generated sequence agree
        m2 = (got != 0).long()
        m2[:, :T] = mask
        diff = model(input_ids=got, attention_mask=m2).logits - swapped(
            input_ids=got, attention_mask=m2).logits
    assert diff[m2.bool()].abs().max() <= 1e-5


GATED = [v for v in list_variants() if v.startswith("gated-")]


@pytest.mark.parametrize("variant", GATED)
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_preserve_init_starts_at_the_original_function(family: str, variant: str) -> None:
    model = _tiny(family)
    swapped = swap_attention(copy.deepcopy(model), variant)
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        got = swapped(input_ids=ids, attention_mask=mask).logits
    assert (got - want).abs().max() <= 1e-5
    for m in swapped.modules():
        if isinstance(m, Attention):
            assert m.output_gate_proj.weight.abs().max() == 0  # gate = sigmoid(0) = 1/2


def test_half_and_random_init_change_the_function() -> None:
    model = _tiny("llama")
    ids, mask = _batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        for how in ("half", "random"):
            got = swap_attention(copy.deepcopy(model), "gated-g1", gate_init=how)(
                input_ids=ids, attention_mask=mask).logits
            assert (got - want).abs().max() > 1e-3
    half = swap_attention(copy.deepcopy(model), "gated-g5", gate_init="half")
    # G5 with a 0.5 gate and no compensation: each attention output exactly halved
    layer = half.model.layers[0].self_attn.attn
    orig = model.model.layers[0].self_attn
    x = torch.randn(1, 4, 32)
    cos_sin = model.model.rotary_emb(x, torch.arange(4)[None])
    with torch.no_grad():
        torch.testing.assert_close(layer(x, rotary=cos_sin),
                                   0.5 * orig(x, position_embeddings=cos_sin,
                                              attention_mask=None)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["active-gelu", "sigmoid", "active-silu+gated-g1"])
def test_other_variants_train_and_generate(variant: str) -> None:
    model = swap_attention(_tiny("qwen3"), variant)
    ids, mask = _batch()
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             pad_token_id=0)
    assert gen.shape == (3, T + 4)


def test_reload_recipe_of_docs() -> None:
    """A trained swapped model's state dict loads into a fresh original + the same swap."""
    trained = swap_attention(_tiny("qwen3"), "gated-g2-headwise")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fresh = swap_attention(_tiny("qwen3"), "gated-g2-headwise")
    fresh.load_state_dict(trained.state_dict())
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids, attention_mask=mask).logits,
                                   trained(input_ids=ids, attention_mask=mask).logits,
                                   rtol=0, atol=0)


def test_probes_see_swapped_layers() -> None:
    model = swap_attention(_tiny("llama"), "gated-g1")
    ids, mask = _batch()
    with AttentionProbes(model) as probes, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    table = probes.summary()
    assert len(table) == 2
    for row in table.values():
        assert 0.0 < row["first_token_share"] <= 1.0
        assert row["mean_output_gate"] == pytest.approx(0.5)


def test_swap_errors() -> None:
    with pytest.raises(ValueError, match="model_type"):
        swap_attention(torch.nn.Linear(2, 2))
    model = _tiny("llama")
    with pytest.raises(ValueError, match="gate_init"):
        swap_attention(copy.deepcopy(model), "gated-g1", gate_init="ones")
    with pytest.raises(ValueError, match="unknown attention variant"):
        swap_attention(copy.deepcopy(model), "gated-g9")
    with pytest.raises(ValueError, match="read from the model"):
        swap_attention(copy.deepcopy(model), "softmax", kv_heads=1)
    swap_attention(model)
    with pytest.raises(ValueError, match="already"):
        swap_attention(model)
    with pytest.raises(ValueError, match="static"):
        model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2, do_sample=False,
                       cache_implementation="static")
    flex = _tiny("llama")
    flex.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation 'flex_attention'"):
        swap_attention(flex)
    with pytest.raises(ValueError, match="sliding-window attention"):
        swap_attention(_tiny("qwen2", use_sliding_window=True, sliding_window=4,
                             max_window_layers=0))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        swap_attention(_tiny("gpt2", scale_attn_by_inverse_layer_idx=True))


def test_example_hf_variants_runs(tmp_path, monkeypatch, capsys) -> None:
    """examples/hf_variants.py end to end on a tiny text: both models start at the same
    validation loss (preserve init) and the tables are printed."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "hf_variants.py"
    spec = importlib.util.spec_from_file_location("hf_variants_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", [
        "hf_variants.py", "--tiny", "--text", str(text), "--steps", "2", "--seeds", "0", "1",
        "--seq", "16", "--batch", "2", "--val-batches", "1", "--out", str(out)])
    example.main()
    printed = capsys.readouterr().out
    assert "| layer |" in printed and "swapped - original" in printed
    rows = json.loads(out.read_text())["seeds"]
    assert len(rows) == 2
    for r in rows:
        assert abs(r["swapped_val_step0"] - r["original_val_step0"]) < 1e-5
        assert len(r["swapped_share"]) == 4
