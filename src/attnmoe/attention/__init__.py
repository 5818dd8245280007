"""attnmoe.attention: one multi-head attention module with the seed papers' variants.

* :class:`Attention` -- softmax / sigmoid scores, active attention (value activation),
  sigmoid gates G1..G5; SDPA fast path and explicit reference path.
* :func:`attention_kwargs`, :data:`VARIANTS`, :func:`list_variants` -- variants by name.
"""

from .attention import ACTIVATIONS, GATE_GRANULARITIES, GATE_POSITIONS, SCORES, Attention
from .variants import VARIANTS, attention_kwargs, list_variants

__all__ = [
    "ACTIVATIONS",
    "GATE_GRANULARITIES",
    "GATE_POSITIONS",
    "SCORES",
    "Attention",
    "VARIANTS",
    "attention_kwargs",
    "list_variants",
]
