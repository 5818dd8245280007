"""Weights in and out of :class:`Attention`: ``nn.MultiheadAttention`` and fused-gate checkpoints.

* :func:`from_torch_mha` -- an ``Attention`` with the weights of an ``nn.MultiheadAttention``
  (``in_proj_weight`` rows ``[0:E]``, ``[E:2E]``, ``[2E:3E]`` are the query, key and value
  projections; separate ``q/k/v_proj_weight`` when ``kdim``/``vdim`` differ from ``E``).
* :func:`to_torch_mha` -- the reverse, for a plain (softmax, ungated, no value activation)
  layer.
* :func:`from_fused_gate_state_dict` -- one attention layer of the reference gated-attention
  code of Qiu et al. (arXiv 2505.06708, github.com/qiuzh20/gated_attention, a modified Qwen3
  attention), where the G1 output-gate rows live inside ``q_proj``.  Layout read from that
  code's ``Qwen3Attention.forward`` (our reading; see ``docs/attention.md``)::

      q_proj.weight: (H*D + H*Dg, hidden), Dg = D (elementwise) or 1 (headwise)
      rows grouped by key/value head: for each of the KV = num_key_value_heads groups,
      first the g*D query rows of its g = H/KV heads, then their g*Dg gate rows
      (the output is viewed as (B, T, KV, g*D + g*Dg) and split on the last axis)
      k_proj/v_proj.weight: (KV*D, hidden); o_proj.weight: (hidden, H*D)
      y = o_proj(attention(q, k, v) * sigmoid(gate))      # gate per head (and coordinate)

  With KV < H (grouped-query attention) each key/value head is shared by g consecutive
  query heads; the loaded layer keeps ``kv_heads=KV``.  The reference layer also applies
  rotary position embeddings (no weights; pass its base as ``rope``) and, optionally,
  RMSNorm on q and k (``q_norm``/``k_norm``, loaded when present).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .attention import Attention

__all__ = ["from_fused_gate_state_dict", "from_torch_mha", "to_torch_mha"]


def _copy_linear(dst: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
    if dst.weight.shape != weight.shape:
        raise ValueError(f"weight of shape {tuple(weight.shape)} for {tuple(dst.weight.shape)}")
    with torch.no_grad():
        dst.weight.copy_(weight)
        if dst.bias is not None:
            if bias is None:
                dst.bias.zero_()
            else:
                dst.bias.copy_(bias)


def from_torch_mha(mha: nn.MultiheadAttention, **options: Any) -> Attention:
    """An :class:`Attention` computing what ``mha`` computes, on batch-first inputs.

    ``layer(x, context, attn_mask=..., key_padding_mask=...)`` equals
    ``mha(x, context, context, attn_mask=..., key_padding_mask=...)[0]`` (self-attention:
    ``mha(x, x, x)``) for batch-first inputs, masks in ``nn.MultiheadAttention``'s convention
    (bool True = may not attend, or additive float); a 3-D ``(B*H, T, S)`` mask must be
    reshaped to ``(B, H, T, S)``.  If ``mha.batch_first`` is False, feed the layer
    ``x.transpose(0, 1)`` -- the layer itself is always batch-first.

    Args:
        mha: the module to copy (dtype and device are kept).
        **options: further ``Attention`` options (``value_activation``, ``output_gate``,
            ``causal``, ...); parameters that ``mha`` lacks (an output gate) keep their
            fresh initialisation.

    Raises:
        ValueError: ``add_bias_kv``/``add_zero_attn`` (no counterpart) or ``kdim != vdim``.
    """
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"from_torch_mha needs an nn.MultiheadAttention, got {type(mha).__name__}")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("add_bias_kv / add_zero_attn have no counterpart in attnmoe's Attention")
    if mha.kdim != mha.vdim:
        raise ValueError(f"kdim={mha.kdim} != vdim={mha.vdim} is not supported")
    E = mha.embed_dim
    context_dim = None if mha.kdim == E else mha.kdim
    has_bias = mha.in_proj_bias is not None
    options.setdefault("dropout", mha.dropout)
    ref = mha.out_proj.weight
    layer = Attention(E, mha.num_heads, bias=has_bias, context_dim=context_dim, **options)
    layer = layer.to(device=ref.device, dtype=ref.dtype)
    if mha._qkv_same_embed_dim:
        weights = mha.in_proj_weight.chunk(3, dim=0)
    else:
        weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
    biases = mha.in_proj_bias.chunk(3) if has_bias else (None, None, None)
    for proj, w, b in zip((layer.q_proj, layer.k_proj, layer.v_proj), weights, biases):
        _copy_linear(proj, w, b)
    _copy_linear(layer.out_proj, mha.out_proj.weight, mha.out_proj.bias)
    return layer


def to_torch_mha(
    layer: Attention, *, batch_first: bool = True, drop_causal: bool = False
) -> nn.MultiheadAttention:
    """An ``nn.MultiheadAttention`` with the weights of a plain ``layer``.

    Args:
        layer: softmax scores, no output gate, no value activation (or "identity").
        batch_first: layout of the returned module's inputs.
        drop_causal: ``nn.MultiheadAttention`` has no causal option; a causal layer is
            refused unless this is True (then pass ``attn_mask``/``is_causal`` at call time).

    Raises:
        ValueError: a variant ``nn.MultiheadAttention`` cannot compute.
    """
    if not isinstance(layer, Attention):
        raise TypeError(f"to_torch_mha needs an attnmoe Attention, got {type(layer).__name__}")
    extra = []
    if layer.score != "softmax":
        extra.append(f"score={layer.score!r}")
    if layer.output_gate is not None:
        extra.append(f"output_gate={layer.output_gate!r}")
    if layer._act is not None and layer.value_activation_name != "identity":
        extra.append(f"value_activation={layer.value_activation!r}")
    if extra:
        raise ValueError(f"nn.MultiheadAttention cannot compute {', '.join(extra)}")
    if layer.causal and not drop_causal:
        raise ValueError(
            "nn.MultiheadAttention has no causal option; pass drop_causal=True and give it "
            "a causal attn_mask (or is_causal=True) at call time"
        )
    ref = layer.out_proj.weight
    kdim = layer.context_dim
    mha = nn.MultiheadAttention(
        layer.dim, layer.heads, dropout=layer.dropout, bias=layer.bias, kdim=kdim, vdim=kdim,
        batch_first=batch_first, device=ref.device, dtype=ref.dtype,
    )
    projs = (layer.q_proj, layer.k_proj, layer.v_proj)
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            mha.in_proj_weight.copy_(torch.cat([p.weight for p in projs]))
        else:
            for dst, p in zip((mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight), projs):
                dst.copy_(p.weight)
        if layer.bias:
            mha.in_proj_bias.copy_(torch.cat([p.bias for p in projs]))
    _copy_linear(mha.out_proj, layer.out_proj.weight, layer.out_proj.bias)
    return mha


def from_fused_gate_state_dict(
    state_dict: dict[str, Tensor],
    heads: int,
    *,
    num_key_value_heads: int | None = None,
    causal: bool = True,
    prefix: str = "",
    rope: float | None = None,
    qk_norm_eps: float = 1e-6,
) -> Attention:
    """An ``Attention`` (output gate G1) from one layer of the reference gated-attention code.

    Args:
        state_dict: tensors ``{prefix}q_proj.weight``, ``{prefix}k_proj.weight``,
            ``{prefix}v_proj.weight``, ``{prefix}o_proj.weight`` and, when the layer has
            biases, the matching ``.bias`` entries (see the module docstring for the layout).
        heads: number of query heads ``H`` (``num_attention_heads``).
        num_key_value_heads: ``KV`` (default ``H``); must divide ``H``.
        causal: the reference layer is a causal language-model layer (default True).
        prefix: key prefix, e.g. ``"model.layers.3.self_attn."``.
        rope: the reference model's rotary base (``rope_theta``); None: a layer without RoPE.
        qk_norm_eps: epsilon of the q/k RMSNorm (``rms_norm_eps``), used when
            ``q_norm.weight``/``k_norm.weight`` are present.

    Returns:
        ``Attention(hidden, H, output_gate="G1", output_gate_granularity=...)`` (granularity
        read from the number of ``q_proj`` rows; no gate if there are no gate rows).

    Raises:
        KeyError: a required tensor is missing.
        ValueError: shapes that fit no layout, only one of the q/k norms.
    """
    def get(name: str) -> Tensor | None:
        return state_dict.get(prefix + name)

    norms = [get(n) for n in ("q_norm.weight", "k_norm.weight")]
    if (norms[0] is None) != (norms[1] is None):
        raise ValueError(f"{prefix}: q_norm and k_norm must both be present or both absent")
    missing = [n for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
               if get(n) is None]
    if missing:
        raise KeyError(f"missing {', '.join(prefix + m for m in missing)}")
    kv = heads if num_key_value_heads is None else num_key_value_heads
    if kv <= 0 or heads % kv:
        raise ValueError(f"num_key_value_heads={kv} must divide heads={heads}")
    g = heads // kv
    qw, kw, ow = (get(n) for n in ("q_proj.weight", "k_proj.weight", "o_proj.weight"))
    hidden = qw.shape[1]
    if kw.shape[0] % kv:
        raise ValueError(f"k_proj has {kw.shape[0]} rows, not a multiple of KV={kv}")
    D = kw.shape[0] // kv
    gate_rows = qw.shape[0] - heads * D
    granularity = {0: None, heads: "headwise", heads * D: "elementwise"}.get(gate_rows, "bad")
    if granularity == "bad":
        raise ValueError(
            f"q_proj has {qw.shape[0]} rows; expected H*D={heads * D} (no gate), "
            f"H*D+H={heads * D + heads} (headwise) or 2*H*D={2 * heads * D} (elementwise)"
        )
    has_bias = get("q_proj.bias") is not None
    layer = Attention(
        hidden, heads, causal=causal, bias=has_bias,
        output_gate=None if granularity is None else "G1",
        output_gate_granularity=granularity or "elementwise",
        kv_heads=kv, head_dim=D, rope=rope, qk_norm=norms[0] is not None,
        qk_norm_eps=qk_norm_eps, out_bias=get("o_proj.bias") is not None,
    ).to(device=qw.device, dtype=qw.dtype)

    def split_q(t: Tensor) -> tuple[Tensor, Tensor]:
        """Query rows ``(H*D, ...)`` and gate rows ``(H*Dg, ...)`` from fused ``q_proj`` rows."""
        grouped = t.reshape(kv, t.shape[0] // kv, *t.shape[1:])  # (KV, g*D + g*Dg, ...)
        q, gate = grouped.split([g * D, grouped.shape[1] - g * D], dim=1)
        return q.reshape(heads * D, *t.shape[1:]), gate.reshape(-1, *t.shape[1:])

    q_w, gate_w = split_q(qw)
    qb = get("q_proj.bias")
    q_b, gate_b = split_q(qb) if qb is not None else (None, None)
    _copy_linear(layer.q_proj, q_w, q_b)
    for proj, name in ((layer.k_proj, "k_proj"), (layer.v_proj, "v_proj")):
        b = get(f"{name}.bias")
        _copy_linear(proj, get(f"{name}.weight"), b)
    _copy_linear(layer.out_proj, ow, get("o_proj.bias"))
    if layer.q_norm is not None and layer.k_norm is not None:
        with torch.no_grad():
            layer.q_norm.weight.copy_(norms[0])
            layer.k_norm.weight.copy_(norms[1])
    if layer.output_gate_proj is not None:
        _copy_linear(layer.output_gate_proj, gate_w, gate_b)
    return layer
