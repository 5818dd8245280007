"""attnmoe.attention: one multi-head attention module with the seed papers' variants.

* :class:`Attention` -- self- or cross-attention; softmax / sigmoid scores, active
  attention (value activation), sigmoid output gates G1..G5; boolean/additive masks, a
  :class:`KVCache` for decoding; SDPA / chunked-sigmoid fast paths and a reference path.
* :func:`from_torch_mha`, :func:`to_torch_mha`, :func:`from_fused_gate_state_dict` --
  weights from/to ``nn.MultiheadAttention`` and the reference gated-attention layout.
* :func:`attention_kwargs`, :data:`VARIANTS`, :func:`list_variants` -- variants by name.
* :func:`as_moe` -- the exact rewrite of each head as a quadratic-gating MoE.
* :class:`AttentionProbes` -- forward-hook probes (first-token share, gate scores, ...).
"""

from .as_moe import AttentionMoE, as_moe, head_outputs
from .attention import (
    OUTPUT_GATE_GRANULARITIES,
    OUTPUT_GATE_POSITIONS,
    SCORES,
    VALUE_ACTIVATIONS,
    Attention,
    KVCache,
)
from .convert import from_fused_gate_state_dict, from_torch_mha, to_torch_mha
from .probes import AttentionProbes
from .variants import VARIANTS, attention_kwargs, list_variants

__all__ = [
    "OUTPUT_GATE_GRANULARITIES",
    "OUTPUT_GATE_POSITIONS",
    "SCORES",
    "VALUE_ACTIVATIONS",
    "VARIANTS",
    "Attention",
    "AttentionMoE",
    "AttentionProbes",
    "KVCache",
    "as_moe",
    "attention_kwargs",
    "from_fused_gate_state_dict",
    "from_torch_mha",
    "head_outputs",
    "list_variants",
    "to_torch_mha",
]
