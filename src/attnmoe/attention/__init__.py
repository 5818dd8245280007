"""attnmoe.attention: one multi-head attention module with the seed papers' variants.

* :class:`Attention` -- softmax / sigmoid scores, active attention (value activation),
  sigmoid gates G1..G5; SDPA fast path and explicit reference path.
* :func:`attention_kwargs`, :data:`VARIANTS`, :func:`list_variants` -- variants by name.
* :func:`as_moe` -- the exact rewrite of each head as a quadratic-gating MoE.
* :class:`AttentionProbes` -- forward-hook probes (first-token share, gate scores, ...).
"""

from .as_moe import AttentionMoE, as_moe, head_outputs
from .attention import ACTIVATIONS, GATE_GRANULARITIES, GATE_POSITIONS, SCORES, Attention
from .probes import AttentionProbes
from .variants import VARIANTS, attention_kwargs, list_variants

__all__ = [
    "ACTIVATIONS",
    "GATE_GRANULARITIES",
    "GATE_POSITIONS",
    "SCORES",
    "VARIANTS",
    "Attention",
    "AttentionMoE",
    "AttentionProbes",
    "as_moe",
    "attention_kwargs",
    "head_outputs",
    "list_variants",
]
