"""Attention options by name: value activations, output-gate positions, scores, and checks.

:func:`validate_options` checks the options of :class:`~attnmoe.attention.Attention` and
raises ValueError/TypeError naming the problem; the variant registry
(:mod:`attnmoe.attention.variants`) checks every variant with it before any layer is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from attnmoe.moe.experts import EXPERT_ACTIVATIONS

__all__ = [
    "OUTPUT_GATE_GRANULARITIES",
    "OUTPUT_GATE_POSITIONS",
    "SCORES",
    "VALUE_ACTIVATIONS",
    "ActivationFn",
    "check_input",
    "resolve_activation",
    "validate_options",
]

ActivationFn = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


VALUE_ACTIVATIONS: dict[str, ActivationFn] = {
    # the expert non-linearities of attnmoe.moe (one definition: the same functions) ...
    **{name: fn for name, fn in EXPERT_ACTIVATIONS.items() if fn is not None},
    # ... and value activations that have no MoE expert family
    "silu": F.silu,
    "elu": F.elu,
    "softplus": F.softplus,
    "identity": _identity,
}
"""Value activations by name (active attention, arXiv 2410.11222).  Names shared with
``attnmoe.moe.experts.EXPERT_ACTIVATIONS`` map to the same functions."""

OUTPUT_GATE_POSITIONS: tuple[str, ...] = ("G1", "G2", "G3", "G4", "G5")
"""Output-gate positions of Qiu et al. (arXiv 2505.06708)."""

OUTPUT_GATE_GRANULARITIES: tuple[str, ...] = ("elementwise", "headwise")
SCORES: tuple[str, ...] = ("softmax", "sigmoid")

_KEY_SIDE_GATES = ("G2", "G3")  # gates computed from each key token's own layer input


def resolve_activation(value_activation: str | ActivationFn | None) -> ActivationFn | None:
    """Return the elementwise function named by ``value_activation`` (None stays None).

    Raises:
        ValueError: unknown name.
        TypeError: neither a string, a callable nor None.
    """
    if value_activation is None:
        return None
    if isinstance(value_activation, str):
        try:
            return VALUE_ACTIVATIONS[value_activation.lower()]
        except KeyError:
            raise ValueError(
                f"unknown value_activation {value_activation!r}; "
                f"choose one of {sorted(VALUE_ACTIVATIONS)} or pass a callable"
            ) from None
    if callable(value_activation):
        return value_activation
    raise TypeError(
        "value_activation must be a name, a callable or None, "
        f"got {type(value_activation).__name__}"
    )


def _check_positive_int(name: str, val: object) -> None:
    if isinstance(val, bool) or not isinstance(val, int):
        raise TypeError(f"{name} must be an int, got {type(val).__name__}")
    if val <= 0:
        raise ValueError(f"{name} must be positive, got {val}")


def validate_options(
    dim: int,
    heads: int,
    *,
    value_activation: str | ActivationFn | None = None,
    output_gate: str | None = None,
    output_gate_granularity: str = "elementwise",
    score: str = "softmax",
    sigmoid_bias: float | None = None,
    dropout: float = 0.0,
    causal: bool = False,
    context_dim: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    rope: float | None = None,
    qk_norm: bool = False,
    qk_norm_eps: float = 1e-6,
) -> None:
    """Raise ValueError/TypeError naming the problem if the options do not make a layer."""
    _check_positive_int("dim", dim)
    _check_positive_int("heads", heads)
    if head_dim is None and dim % heads != 0:
        raise ValueError(f"dim={dim} is not divisible by heads={heads} (or give head_dim)")
    if head_dim is not None:
        _check_positive_int("head_dim", head_dim)
    if kv_heads is not None:
        _check_positive_int("kv_heads", kv_heads)
        if heads % kv_heads != 0:
            raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
    if rope is not None:
        if isinstance(rope, bool) or not isinstance(rope, (int, float)) or not (
            math.isfinite(rope) and rope > 1
        ):
            raise ValueError(f"rope is the rotary base (e.g. 10000.0), got {rope!r}")
        if (dim // heads if head_dim is None else head_dim) % 2:
            raise ValueError("rope rotates coordinate pairs: head_dim must be even")
        if context_dim is not None:
            raise ValueError("rope is for self-attention; a cross-attention layer has no positions")
    if not isinstance(qk_norm, bool):
        raise TypeError(f"qk_norm must be a bool, got {type(qk_norm).__name__}")
    if not (isinstance(qk_norm_eps, (int, float)) and qk_norm_eps > 0):
        raise ValueError(f"qk_norm_eps must be positive, got {qk_norm_eps!r}")
    resolve_activation(value_activation)
    gate = output_gate
    if gate is not None and (
        not isinstance(gate, str) or gate.upper() not in OUTPUT_GATE_POSITIONS
    ):
        raise ValueError(
            f"unknown output_gate position {gate!r}; choose None or one of {OUTPUT_GATE_POSITIONS}"
        )
    if output_gate_granularity not in OUTPUT_GATE_GRANULARITIES:
        raise ValueError(
            f"unknown output_gate_granularity {output_gate_granularity!r}; "
            f"choose one of {OUTPUT_GATE_GRANULARITIES}"
        )
    if gate is not None and gate.upper() == "G5" and output_gate_granularity == "headwise":
        raise ValueError(
            "output_gate='G5' with output_gate_granularity='headwise' is undefined: G5 acts "
            "after out_proj, where the heads are already mixed; use elementwise G5 or a "
            "headwise gate at G1..G4"
        )
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {SCORES}")
    if sigmoid_bias is not None:
        if score != "sigmoid":
            raise ValueError("sigmoid_bias is only used with score='sigmoid'")
        if not isinstance(sigmoid_bias, (int, float)) or not math.isfinite(sigmoid_bias):
            raise ValueError(f"sigmoid_bias must be a finite number, got {sigmoid_bias!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if context_dim is not None:
        _check_positive_int("context_dim", context_dim)
        if causal:
            raise ValueError(
                "causal=True with context_dim: a causal mask is for self-attention; "
                "give a cross-attention layer an attn_mask instead"
            )
        if gate is not None and gate.upper() in _KEY_SIDE_GATES:
            raise ValueError(_cross_gate_message(gate.upper()))


def _cross_gate_message(gate: str) -> str:
    return (
        f"output_gate={gate!r} gates each key/value token with sigmoid of that token's own "
        "layer input, which cross-attention keys (context tokens) do not have; use G1, G4 "
        "or G5 (read from the query input) for cross-attention"
    )


def check_input(layer: Any, x: Tensor, context: Tensor | None = None) -> None:
    """Raise TypeError/ValueError if ``x`` (and ``context``) do not fit ``layer`` (an Attention)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, T, dim), got rank {x.dim()} {tuple(x.shape)}")
    if x.shape[-1] != layer.dim:
        raise ValueError(f"x has {x.shape[-1]} features, layer dim is {layer.dim}")
    if context is None:
        if layer.context_dim is not None:
            raise ValueError(
                f"this layer reads keys/values from a context of {layer.context_dim} "
                "features (context_dim); pass context=..."
            )
        return
    if not isinstance(context, Tensor) or not context.is_floating_point():
        kind = type(context).__name__ if not isinstance(context, Tensor) else context.dtype
        raise TypeError(
            f"context must be a floating-point (B, S, features) tensor, got {kind}; "
            "masks go by keyword: key_padding_mask=..., attn_mask=..."
        )
    want = layer.dim if layer.context_dim is None else layer.context_dim
    if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != want:
        raise ValueError(
            f"context must have shape (B={x.shape[0]}, S, {want}), got {tuple(context.shape)}"
        )
    if layer.causal:
        raise ValueError("causal=True is for self-attention; for cross-attention give an attn_mask")
    if layer.rope is not None:
        raise ValueError("rope is for self-attention; a cross-attention call has no positions")
    if layer.output_gate in _KEY_SIDE_GATES:
        raise ValueError(_cross_gate_message(layer.output_gate))
