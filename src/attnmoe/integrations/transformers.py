"""Put an attnmoe attention variant into a Hugging Face ``transformers`` causal LM, in place.

::

    from attnmoe.integrations.transformers import swap_attention
    model = AutoModelForCausalLM.from_pretrained(path)          # Llama, Qwen2, Qwen3, GPT-2
    swap_attention(model, "gated-g1")                            # any attnmoe variant name

:func:`swap_attention` replaces every self-attention module of the model by
:class:`HFAttention`, a thin adapter around :class:`attnmoe.attention.Attention` that copies
the original weights (q/k/v/o projections, GPT-2's fused ``c_attn``, Qwen3's q/k norms),
takes the host model's rotary ``(cos, sin)`` (so every RoPE scaling the host supports is
kept), its attention mask and its ``Cache`` (keys/values go through ``cache.update``, so
``model.generate`` works unchanged).  With ``variant="softmax"`` the swapped model computes
the original function (tests: logits within 1e-5 in float32 with padding, and the same
greedy tokens from ``generate``).

**Initialisation of what the variant adds** (``gate_init``):

* ``"preserve"`` (default): the output-gate projection ``W_theta`` (and its bias, if the
  layer has biases) starts at zero, so every gate is ``sigmoid(0) = 0.5`` exactly, and the
  projection that the gate's factor passes through is doubled: ``out_proj`` weight for G1
  and G2, ``out_proj`` weight and bias for G5, the queries (G4) or keys (G3) -- through the
  q/k norm weight when there is one, else through ``q_proj``/``k_proj``.  Multiplying by
  0.5 and 2 is exact in floating point, so **at step 0 the gated model computes exactly the
  original function**, and the gate's gradient is at the steepest point of the sigmoid
  (``sigmoid'(0) = 1/4``).
* ``"half"``: zero gate projection, no compensation: the gate is 0.5 everywhere at step 0
  (G1/G2/G5 halve the attention output; G3/G4 halve the logits, i.e. double the temperature).
* ``"random"``: ``nn.Linear``'s default initialisation of the gate projection.

Active attention (``active-<act>``) applies ``sigma`` to the copied value projection and
sigmoid attention (``sigmoid``) replaces the softmax by ``sigmoid(. - log n)``; neither can
be made equal to the original at step 0, so these variants start from a different function
(``examples/hf_variants.py`` reports how far, as the validation loss at step 0).

State dicts: the adapter keeps the attention under ``<module>.attn.`` (``q_proj``, ...,
``out_proj``); to reload a fine-tuned swapped model, build the original from its config,
call :func:`swap_attention` with the same arguments, then ``load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnmoe.attention import Attention, KVCache, attention_kwargs

__all__ = ["GATE_INITS", "SUPPORTED_MODEL_TYPES", "HFAttention", "swap_attention"]

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
"""``config.model_type`` values whose attention modules :func:`swap_attention` knows."""

GATE_INITS: tuple[str, ...] = ("preserve", "half", "random")


class _HostCache(KVCache):
    """A ``transformers`` ``Cache`` seen as one layer's :class:`KVCache` (update = append)."""

    def __init__(self, cache: Any, layer_idx: int, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.cache, self.layer_idx, self.kwargs = cache, layer_idx, kwargs

    def __len__(self) -> int:
        return int(self.cache.get_seq_length(self.layer_idx))

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.cache.update(k, v, self.layer_idx, kwargs=self.kwargs)


class HFAttention(nn.Module):
    """Adapter with the call signature of a ``transformers`` attention module.

    ``forward(hidden_states, position_embeddings=None, attention_mask=None, cache=None, ...)``
    returns ``(output, None)`` (no attention weights).  The host's mask (bool, True = may
    attend, or additive float; None = causal) is converted to attnmoe's convention; the host's
    ``(cos, sin)`` are used as the RoPE of ``attn`` (``rotary=``).

    Attributes:
        attn: the :class:`~attnmoe.attention.Attention` doing the work (what
            :class:`~attnmoe.attention.AttentionProbes` and :func:`~attnmoe.attention.as_moe`
            read).
        layer_idx: the host layer index (the key of this layer in the host cache).
        resid_dropout: dropout after the output projection (GPT-2's ``resid_pdrop``; identity
            for the other families).
    """

    def __init__(self, attn: Attention, layer_idx: int, resid_dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = attn
        self.layer_idx = layer_idx
        self.is_causal = True
        self.resid_dropout = nn.Dropout(resid_dropout) if resid_dropout > 0 else nn.Identity()

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        for name in ("position_ids", "use_cache", "output_attentions", "cache_position"):
            kwargs.pop(name, None)
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError("HFAttention is self-attention; cross-attention is not swapped")
        if cache is not None and hasattr(cache, "self_attention_cache"):
            cache = cache.self_attention_cache  # an EncoderDecoderCache (GPT-2 may get one)
        if cache is not None and getattr(cache, "is_compileable", False):
            raise ValueError(
                f"{type(cache).__name__}: HFAttention works with the dynamic cache "
                "(generate's default), not with static (fixed-length) caches"
            )
        kv_cache = None if cache is None else _HostCache(cache, self.layer_idx, kwargs)
        mask = attention_mask
        if mask is not None:
            S = (0 if kv_cache is None else len(kv_cache)) + hidden_states.shape[1]
            mask = mask[..., :S]
            mask = ~mask if mask.dtype == torch.bool else mask  # attnmoe: True = may not attend
        rotary = position_embeddings if self.attn.rope is not None else None
        y = self.attn(hidden_states, attn_mask=mask, cache=kv_cache, rotary=rotary)
        return self.resid_dropout(y), None


# ---------------------------------------------------------------------- weights per family
def _linear_weights(m: nn.Module) -> dict[str, tuple[Tensor, Tensor | None]]:
    """``{q, k, v, o: (weight (out, in), bias)}`` of a Llama/Qwen attention module."""
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    return {key: (getattr(m, n).weight, getattr(m, n).bias) for key, n in names.items()}


def _gpt2_weights(m: nn.Module) -> dict[str, tuple[Tensor, Tensor | None]]:
    """The same from GPT-2's ``Conv1D`` modules (weights stored ``(in, out)``)."""
    w, b = m.c_attn.weight.T, m.c_attn.bias  # (3E, E), (3E,)
    (wq, wk, wv), (bq, bk, bv) = w.chunk(3, dim=0), b.chunk(3)
    return {"q": (wq, bq), "k": (wk, bk), "v": (wv, bv), "o": (m.c_proj.weight.T, m.c_proj.bias)}


def _rope_base(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" not in params and params:
        params = next(iter(params.values()))  # per layer type
    base = params.get("rope_theta") if isinstance(params, dict) else None
    return float(base if base is not None else getattr(config, "rope_theta", 10000.0))


def _build(
    module: nn.Module, model_type: str, config: Any, variant_kwargs: dict[str, Any]
) -> HFAttention:
    gpt2 = model_type == "gpt2"
    if gpt2:
        if getattr(module, "is_cross_attention", False):
            raise ValueError("GPT-2 cross-attention modules are not swapped")
        if module.scale_attn_by_inverse_layer_idx or not module.scale_attn_weights:
            raise ValueError(
                "GPT-2 with scale_attn_by_inverse_layer_idx=True or scale_attn_weights=False "
                "scales scores by other than 1/sqrt(head_dim); not supported"
            )
        weights = _gpt2_weights(module)
        heads = kv_heads = module.num_heads
        dropout, resid = module.attn_dropout.p, module.resid_dropout.p
    else:
        if getattr(module, "sliding_window", None):
            raise ValueError(f"layer {module.layer_idx}: sliding-window attention is not supported")
        weights = _linear_weights(module)
        heads = config.num_attention_heads
        kv_heads = config.num_key_value_heads
        dropout, resid = float(getattr(config, "attention_dropout", 0.0)), 0.0
    wq, bq = weights["q"]
    wo, bo = weights["o"]
    qn, kn = getattr(module, "q_norm", None), getattr(module, "k_norm", None)
    attn = Attention(
        wo.shape[0], heads, kv_heads=kv_heads, head_dim=module.head_dim,
        rope=None if gpt2 else _rope_base(config),
        qk_norm=qn is not None, qk_norm_eps=float(getattr(qn, "variance_epsilon", 1e-6)),
        bias=bq is not None, out_bias=bo is not None, dropout=dropout, causal=True,
        **variant_kwargs,
    ).to(device=wq.device, dtype=wq.dtype)
    with torch.no_grad():
        for key, proj in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj),
                          ("o", attn.out_proj)):
            w, b = weights[key]
            proj.weight.copy_(w)
            if proj.bias is not None and b is not None:
                proj.bias.copy_(b)
        if attn.q_norm is not None and attn.k_norm is not None:
            attn.q_norm.weight.copy_(qn.weight)
            attn.k_norm.weight.copy_(kn.weight)
    return HFAttention(attn, module.layer_idx, resid_dropout=resid)


@torch.no_grad()
def _init_gate(attn: Attention, how: str) -> None:
    """Apply ``gate_init`` (module docstring) to a freshly built, weight-copied layer."""
    gate = attn.output_gate_proj
    if gate is None or how == "random":
        return
    gate.weight.zero_()
    if gate.bias is not None:
        gate.bias.zero_()
    if how == "half":
        return
    pos = attn.output_gate  # "preserve": undo the factor 0.5 exactly with a factor 2
    if pos in ("G1", "G2", "G5"):
        attn.out_proj.weight.mul_(2.0)
        if pos == "G5" and attn.out_proj.bias is not None:
            attn.out_proj.bias.mul_(2.0)
    else:  # G4 queries, G3 keys: the gate acts after norm and RoPE, both linear in this factor
        norm = attn.q_norm if pos == "G4" else attn.k_norm
        proj = attn.q_proj if pos == "G4" else attn.k_proj
        targets = [norm.weight] if norm is not None else [proj.weight, proj.bias]
        for t in targets:
            if t is not None:
                t.mul_(2.0)


def _attention_classes() -> tuple[type, ...]:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention
    from transformers.models.llama.modeling_llama import LlamaAttention
    from transformers.models.mistral.modeling_mistral import MistralAttention
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention

    return (LlamaAttention, MistralAttention, Qwen2Attention, Qwen3Attention, GPT2Attention)


def swap_attention(
    model: nn.Module,
    variant: str = "softmax",
    *,
    gate_init: str = "preserve",
    **opts: Any,
) -> nn.Module:
    """Replace every self-attention module of ``model`` by the attnmoe ``variant``, in place.

    Args:
        model: a ``transformers`` model of a family in :data:`SUPPORTED_MODEL_TYPES`
            (``config.model_type``), e.g. ``LlamaForCausalLM``, loaded with
            ``attn_implementation`` "sdpa" (the default) or "eager".
        variant: an attnmoe variant name (:func:`attnmoe.attention.list_variants`, joined
            with ``+``), e.g. ``"softmax"``, ``"gated-g1"``, ``"active-gelu"``, ``"sigmoid"``.
        gate_init: ``"preserve"``, ``"half"`` or ``"random"`` (module docstring).
        **opts: further :class:`~attnmoe.attention.Attention` options, e.g.
            ``sigmoid_bias=-2.0``; they override the variant's.

    Returns:
        ``model`` (modified in place; each swapped module is an :class:`HFAttention`).

    Raises:
        ValueError: an unsupported model type or layer, an unknown variant or ``gate_init``,
            a model already swapped, or options that do not make a layer.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"swap_attention supports config.model_type in {SUPPORTED_MODEL_TYPES}, "
            f"got {model_type!r}"
        )
    impl = getattr(config, "_attn_implementation", None)
    if impl not in (None, "sdpa", "eager"):
        raise ValueError(
            f"attn_implementation {impl!r}: swap_attention reads the masks of 'sdpa' and "
            "'eager' models; load the model with attn_implementation='sdpa'"
        )
    if gate_init not in GATE_INITS:
        raise ValueError(f"unknown gate_init {gate_init!r}; choose one of {GATE_INITS}")
    if any(isinstance(m, HFAttention) for m in model.modules()):
        raise ValueError("model already has swapped attention; swap the original model")
    kwargs = {**attention_kwargs(variant), **opts}
    for bad in ("causal", "context_dim", "kv_heads", "head_dim", "rope", "qk_norm", "bias"):
        if bad in opts:
            raise ValueError(f"{bad} is read from the model; do not pass it to swap_attention")
    classes = _attention_classes()
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, classes)]
    if not targets:
        raise ValueError("no attention module of a supported family found in model")
    for name, module in targets:
        new = _build(module, model_type, config, kwargs)
        _init_gate(new.attn, gate_init)
        new.train(module.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model
