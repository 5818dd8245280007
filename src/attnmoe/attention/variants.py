"""Attention variants by name: a small registry mapping names to ``Attention`` kwargs.

Task models build their attention as
``Attention(dim, heads, causal=..., dropout=..., **attention_kwargs(name))``.

Base names (see ``list_variants()``):

* ``softmax`` -- plain softmax attention (arXiv 1706.03762).
* ``active-<act>`` -- active attention, value activation ``<act>`` (arXiv 2410.11222),
  e.g. ``active-gelu``, ``active-relu``.
* ``gated-g1`` .. ``gated-g5`` -- elementwise sigmoid output gate at position G1..G5 and
  ``gated-g1-headwise`` .. ``gated-g4-headwise`` -- one gate per head (arXiv 2505.06708).
* ``sigmoid`` -- sigmoid attention with bias ``-log(n)`` (arXiv 2409.04431).

Base names combine with ``+`` when they set different options, e.g.
``active-gelu+gated-g1`` or ``sigmoid+gated-g1``; two names setting the same option
(``gated-g1+gated-g2``, ``softmax+sigmoid``, ``active-relu+active-gelu``) are rejected.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from .attention import OUTPUT_GATE_POSITIONS, VALUE_ACTIVATIONS, validate_options

__all__ = ["VARIANTS", "attention_kwargs", "list_variants"]


def _build_registry() -> dict[str, dict[str, Any]]:
    reg: dict[str, dict[str, Any]] = {"softmax": {"score": "softmax"}}
    for act in VALUE_ACTIVATIONS:
        if act != "identity":
            reg[f"active-{act}"] = {"value_activation": act}
    for pos in OUTPUT_GATE_POSITIONS:
        reg[f"gated-{pos.lower()}"] = {
            "output_gate": pos,
            "output_gate_granularity": "elementwise",
        }
        if pos != "G5":  # a headwise gate after out_proj is undefined (heads are mixed)
            reg[f"gated-{pos.lower()}-headwise"] = {
                "output_gate": pos,
                "output_gate_granularity": "headwise",
            }
    reg["sigmoid"] = {"score": "sigmoid"}
    return reg


VARIANTS: MappingProxyType[str, dict[str, Any]] = MappingProxyType(_build_registry())
"""Base variant name -> ``Attention`` keyword arguments (read-only; copy before editing)."""

# which option "slot" each kwarg belongs to, to reject conflicting combinations
_SLOT = {
    "score": "score",
    "value_activation": "activation",
    "output_gate": "output gate",
    "output_gate_granularity": "output gate",
}


def list_variants() -> list[str]:
    """Base variant names, sorted; combine them with ``+``."""
    return sorted(VARIANTS)


def attention_kwargs(name: str) -> dict[str, Any]:
    """``Attention`` keyword arguments for a variant name (``+`` joins base names).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown base name (the message lists the valid ones) or two parts
            that set the same option.
    """
    if not isinstance(name, str):
        raise TypeError(f"variant name must be a str, got {type(name).__name__}")
    parts = [p.strip().lower() for p in name.split("+")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"empty part in variant name {name!r}")
    kwargs: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for part in parts:
        if part not in VARIANTS:
            raise ValueError(
                f"unknown attention variant {part!r} (in {name!r}); valid names: "
                f"{', '.join(list_variants())}; join them with '+'"
            )
        for key, val in VARIANTS[part].items():
            slot = _SLOT[key]
            if slot in owner and owner[slot] != part:
                raise ValueError(
                    f"variant {name!r}: {owner[slot]!r} and {part!r} both set the {slot}"
                )
            owner[slot] = part
            kwargs[key] = val
    validate_options(8, 2, **kwargs)  # catches invalid combinations before a model is built
    return kwargs
