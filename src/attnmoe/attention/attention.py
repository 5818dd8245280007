"""One multi-head attention module whose options are the seed papers' variants.

Plain multi-head attention (Vaswani et al., arXiv 1706.03762) for queries from ``X``
``(B, T, dim)`` and keys/values from ``Z`` (``Z = X`` for self-attention, the ``context``
for cross-attention, ``(B, S, context_dim)``), ``H`` heads of size ``D = dim / H``::

    Q = X W_Q + b_Q,  K = Z W_K + b_K,  V = Z W_V + b_V           # (B, T|S, dim)
    Y_h = softmax(Q_h K_h^T / sqrt(D) + M) V_h                     # (B, T, D) per head h
    out = concat_h(Y_h) W_O + b_O                                  # (B, T, dim)

``M`` ``(B, H, T, S)`` is 0 where query t may see key s and -inf where it may not (causal,
key padding, a boolean ``attn_mask``) plus any additive float mask.  Options, one per paper:

* ``value_activation`` -- **active attention** (arXiv 2410.11222):
  ``Y_h = softmax(Q_h K_h^T / sqrt(D)) sigma(Z W_V + b_V)_h``; sigma acts elementwise on
  the value projection *after* its bias, so every key token becomes a non-linear expert
  ``sigma(W_V^T z_i + b_V)``.
* ``output_gate`` -- **gated attention** (Qiu et al., arXiv 2505.06708; hierarchical-MoE
  reading in arXiv 2602.01468): a multiplicative sigmoid gate ``Y' = Y * sigmoid(X W_theta
  + b_theta)`` on the output of one step of the layer, where X is the layer input (the
  pre-norm hidden state that also feeds ``q_proj``): G1 (each head's attention output,
  before concatenation and ``out_proj``), G2 (the values, after the value activation if
  any), G3 (the keys), G4 (the queries) or G5 (after ``out_proj``).
  ``output_gate_granularity="elementwise"`` gives one gate per coordinate (``W_theta`` is
  ``dim x dim``); ``"headwise"`` one scalar per head and token (``W_theta`` is
  ``dim x H``), broadcast over the head's ``D`` coordinates.  (Named ``output_gate`` so
  that "gate" keeps one meaning in this project: the gating function of a MoE.)
* ``score="sigmoid"`` -- **sigmoid attention** (Ramapuram et al., arXiv 2409.04431;
  sample-complexity analysis by Yan, Nguyen, Akbarian et al., "Sigmoid Self-Attention has
  Lower Sample Complexity than Softmax Self-Attention", 2025):
  ``Y_h = sigmoid(Q_h K_h^T / sqrt(D) + b) V_h`` with ``b = -log(n)`` by default, ``n`` the
  number of keys in the call (cached keys included); masked keys get weight exactly 0.

``forward(x, context=None, *, attn_mask=None, key_padding_mask=None, cache=None)`` follows
x-transformers' order (``context`` second, for cross-attention) with
``nn.MultiheadAttention``'s mask names and boolean convention (True = may *not* attend);
see ``docs/attention.md`` for the comparison with timm and ``nn.MultiheadAttention``.

Three computation paths; without dropout they give the same numbers up to rounding (tests
check 1e-10 in float64).  With dropout in training mode they do not: each path draws its own
random mask.

* softmax scores: ``F.scaled_dot_product_attention`` (SDPA).  Value activations and gates
  G2/G3/G4 transform V/K/Q before it and G1/G5 transform its result, masks are passed
  to it, so every softmax option keeps the fused kernel;
* sigmoid scores: query chunks with the weights recomputed in backward
  (:mod:`attnmoe.attention.sigmoid_chunked`), no ``(T, S)`` matrix; the reference path
  instead with dropout in training mode, and for calls whose whole ``(B, H, T, S)`` weight
  tensor is no bigger than one chunk (``CHUNK_ELEMENTS``; e.g. decoding one token);
* the reference path forms the ``(B, H, T, S)`` weight matrix explicitly
  (``reference=True`` in ``forward`` or ``layer.use_reference = True``).

The option names and their checks (:func:`validate_options`, :func:`resolve_activation`,
:data:`VALUE_ACTIVATIONS`, ...) live in :mod:`attnmoe.attention.options`, :class:`KVCache`
and the internal mask helpers in :mod:`attnmoe.attention.cache`; this module re-exports
them, so ``from attnmoe.attention.attention import ...`` keeps working.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sigmoid_chunked
from .cache import KVCache, Mask, _and_masks, _as_additive, causal_allowed
from .options import (
    _KEY_SIDE_GATES,
    OUTPUT_GATE_GRANULARITIES,
    OUTPUT_GATE_POSITIONS,
    SCORES,
    VALUE_ACTIVATIONS,
    ActivationFn,
    _cross_gate_message,
    resolve_activation,
    validate_options,
)
from .options import _check_positive_int, _identity  # noqa: F401  (moved; still importable here)

__all__ = [
    "OUTPUT_GATE_GRANULARITIES",
    "OUTPUT_GATE_POSITIONS",
    "SCORES",
    "VALUE_ACTIVATIONS",
    "Attention",
    "KVCache",
    "resolve_activation",
    "validate_options",
]


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention with the seed papers' variants as options.

    Input and output are ``(B, T, dim)``.  With every option off this computes what
    ``nn.MultiheadAttention(dim, heads, batch_first=True)`` computes, with the packed
    ``in_proj_weight`` split into ``q_proj``/``k_proj``/``v_proj``
    (:func:`attnmoe.attention.from_torch_mha` / :func:`~attnmoe.attention.to_torch_mha`
    convert weights).  See the module docstring for the formulas and sources.

    Args:
        dim: model width; query input and output feature size.
        heads: number of heads ``H``; must divide ``dim``.
        value_activation: active attention (arXiv 2410.11222). A name in
            ``VALUE_ACTIVATIONS`` (relu, gelu, silu, sigmoid, tanh, elu, softplus, identity)
            or a callable, applied elementwise to ``Z W_V + b_V`` before the weighted sum.
        output_gate: sigmoid gate position (arXiv 2505.06708): None, "G1" (attention
            output per head), "G2" (values), "G3" (keys), "G4" (queries) or "G5" (after
            out_proj).  G2/G3 need self-attention (see ``forward``).
        output_gate_granularity: "elementwise" (one gate per coordinate) or "headwise" (one
            scalar per head and token; not with G5).
        score: "softmax" or "sigmoid" (sigmoid attention, arXiv 2409.04431).
        sigmoid_bias: constant ``b`` added to the sigmoid logits; None means
            ``-log(n)`` with ``n`` the number of keys in the call. Only with ``score="sigmoid"``.
        causal: mask future keys (query t sees keys ``<= t``); self-attention only.
        bias: biases on the q/k/v/out (and gate) projections.
        dropout: dropout probability on the attention weights (training only).
        context_dim: feature size of the cross-attention context, if it differs from
            ``dim`` (``k_proj``/``v_proj`` then map ``context_dim -> dim``); such a layer
            needs a ``context`` in every call.  None: keys/values read ``dim`` features.

    Attributes:
        use_reference: if True, ``forward`` takes the explicit reference path.
        value_activation_name: the activation's name, or None (none, or a callable).

    Raises:
        ValueError / TypeError: at construction, for any invalid option or combination.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        value_activation: str | ActivationFn | None = None,
        output_gate: Literal["G1", "G2", "G3", "G4", "G5"] | None = None,
        output_gate_granularity: Literal["elementwise", "headwise"] = "elementwise",
        score: Literal["softmax", "sigmoid"] = "softmax",
        sigmoid_bias: float | None = None,
        causal: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        validate_options(
            dim,
            heads,
            value_activation=value_activation,
            output_gate=output_gate,
            output_gate_granularity=output_gate_granularity,
            score=score,
            sigmoid_bias=sigmoid_bias,
            dropout=dropout,
            causal=causal,
            context_dim=context_dim,
        )
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.value_activation = value_activation
        self.value_activation_name = (
            value_activation.lower() if isinstance(value_activation, str) else None
        )
        self._act = resolve_activation(value_activation)
        self.output_gate = None if output_gate is None else output_gate.upper()
        self.output_gate_granularity = output_gate_granularity
        self.score = score
        self.sigmoid_bias = None if sigmoid_bias is None else float(sigmoid_bias)
        self.causal = bool(causal)
        self.bias = bool(bias)
        self.dropout = float(dropout)
        self.context_dim = context_dim
        self.use_reference = False

        kv_in = dim if context_dim is None else context_dim
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(kv_in, dim, bias=bias)
        self.v_proj = nn.Linear(kv_in, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.output_gate_proj: nn.Linear | None = None
        if self.output_gate is not None:
            gate_out = heads if output_gate_granularity == "headwise" else dim
            self.output_gate_proj = nn.Linear(dim, gate_out, bias=bias)

    def extra_repr(self) -> str:
        act = self.value_activation
        act_name = getattr(act, "__name__", act) if not isinstance(act, str) else act
        ctx = "" if self.context_dim is None else f", context_dim={self.context_dim}"
        return (
            f"dim={self.dim}, heads={self.heads}, value_activation={act_name}, "
            f"output_gate={self.output_gate}, "
            f"output_gate_granularity={self.output_gate_granularity}, score={self.score}, "
            f"sigmoid_bias={self.sigmoid_bias}, causal={self.causal}, bias={self.bias}, "
            f"dropout={self.dropout}{ctx}"
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints written before the rename of the attention gate keep loading
        for name in ("weight", "bias"):
            old = f"{prefix}gate_proj.{name}"
            if old in state_dict:
                state_dict[f"{prefix}output_gate_proj.{name}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ------------------------------------------------------------------ checks
    def _split(self, y: Tensor) -> Tensor:
        B, T, _ = y.shape
        return y.view(B, T, self.heads, -1).transpose(1, 2)  # (B, H, T, D)

    def _check_input(self, x: Tensor, context: Tensor | None = None) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"x must have shape (B, T, dim), got rank {x.dim()} {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} features, layer dim is {self.dim}")
        if context is None:
            if self.context_dim is not None:
                raise ValueError(
                    f"this layer reads keys/values from a context of {self.context_dim} "
                    "features (context_dim); pass context=..."
                )
            return
        if not isinstance(context, Tensor) or not context.is_floating_point():
            kind = type(context).__name__ if not isinstance(context, Tensor) else context.dtype
            raise TypeError(
                f"context must be a floating-point (B, S, features) tensor, got {kind}; "
                "masks go by keyword: key_padding_mask=..., attn_mask=..."
            )
        want = self.dim if self.context_dim is None else self.context_dim
        if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != want:
            raise ValueError(
                f"context must have shape (B={x.shape[0]}, S, {want}), got {tuple(context.shape)}"
            )
        if self.causal:
            raise ValueError(
                "causal=True is for self-attention; for cross-attention give an attn_mask"
            )
        if self.output_gate in _KEY_SIDE_GATES:
            raise ValueError(_cross_gate_message(self.output_gate))

    def _user_masks(
        self,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        B: int,
        T: int,
        S: int,
        dtype: torch.dtype,
    ) -> Mask:
        """``attn_mask`` and ``key_padding_mask`` (True = blocked, or additive) in internal form."""
        out: Mask = None
        if key_padding_mask is not None:
            self._check_mask_dtype("key_padding_mask", key_padding_mask)
            if tuple(key_padding_mask.shape) != (B, S):
                raise ValueError(
                    f"key_padding_mask must have shape (B, S)=({B}, {S}) (S = keys: the "
                    f"context, or cached plus new tokens), got {tuple(key_padding_mask.shape)}"
                )
            out = self._internal(key_padding_mask[:, None, None, :], dtype)  # (B, 1, 1, S)
        if attn_mask is not None:
            self._check_mask_dtype("attn_mask", attn_mask)
            ok = 2 <= attn_mask.dim() <= 4
            if ok:
                try:
                    ok = torch.broadcast_shapes(attn_mask.shape, (B, self.heads, T, S)) == (
                        B, self.heads, T, S,
                    )
                except RuntimeError:
                    ok = False
            if not ok:
                raise ValueError(
                    f"attn_mask must broadcast to (B, H, T, S)=({B}, {self.heads}, {T}, {S}) "
                    f"with 2 to 4 dims, got {tuple(attn_mask.shape)} (nn.MultiheadAttention's "
                    "(B*H, T, S) layout: reshape it to (B, H, T, S))"
                )
            out = _and_masks(out, self._internal(attn_mask, dtype))
        return out

    @staticmethod
    def _check_mask_dtype(name: str, mask: Tensor) -> None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise TypeError(
                f"{name} must be bool (True = may not attend) or float (added to the "
                f"logits), got {mask.dtype}"
            )

    @staticmethod
    def _internal(mask: Tensor, dtype: torch.dtype) -> Tensor:
        return ~mask if mask.dtype == torch.bool else mask.to(dtype)

    # ------------------------------------------------------------------ pieces
    def output_gate_scores(self, x: Tensor) -> Tensor | None:
        """Sigmoid gate ``sigmoid(X W_theta + b_theta)`` shaped to broadcast at its position.

        Returns ``(B, H, T, D)`` (elementwise) or ``(B, H, T, 1)`` (headwise) for G1..G4,
        ``(B, T, dim)`` for G5, None without a gate.
        """
        if self.output_gate_proj is None:
            return None
        g = torch.sigmoid(self.output_gate_proj(x))  # (B, T, dim) or (B, T, H)
        if self.output_gate == "G5":
            return g  # (B, T, dim)
        if self.output_gate_granularity == "headwise":
            return g.transpose(1, 2).unsqueeze(-1)  # (B, H, T, 1)
        return self._split(g)  # (B, H, T, D)

    def _sigmoid_bias_value(self, n_keys: int) -> float:
        return -math.log(n_keys) if self.sigmoid_bias is None else self.sigmoid_bias

    def attention_weights(self, q: Tensor, k: Tensor, mask: Mask = None) -> Tensor:
        """Explicit weights ``(B, H, T, S)`` from queries ``(B, H, T, D)`` and keys ``(B, H, S, D)``.

        ``mask``: None, bool (True = may attend) or additive float, broadcastable to
        ``(B, H, T, S)``.  softmax: ``softmax(q k^T / sqrt(D) + M)``; sigmoid:
        ``sigmoid(q k^T / sqrt(D) + b + M)`` (hidden keys get weight exactly 0).
        No dropout is applied here.
        """
        # scale the (B, H, T, D) queries rather than the (B, H, T, S) logits; the in-place
        # edits below are safe for autograd (the product's backward does not need its output)
        logits = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)  # (B, H, T, S)
        if self.score == "sigmoid":
            logits.add_(self._sigmoid_bias_value(k.shape[-2]))
        if mask is not None:
            if mask.dtype == torch.bool:
                logits.masked_fill_(~mask, float("-inf"))
            else:
                logits = logits + mask
        if self.score == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)  # sigmoid(-inf) = 0 exactly

    def project(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Queries ``(B, H, T, D)``, keys/values ``(B, H, S, D)`` after activation and G2/G3/G4
        gates, and the gate scores (from ``x``)."""
        kv_in = x if context is None else context
        q = self._split(self.q_proj(x))  # (B, H, T, D)
        k = self._split(self.k_proj(kv_in))  # (B, H, S, D)
        v = self._split(self.v_proj(kv_in))  # (B, H, S, D)
        if self._act is not None:
            v = self._act(v)  # active attention: sigma(Z W_V + b_V)
        g = self.output_gate_scores(x)
        if self.output_gate == "G2":
            v = v * g  # gate after the value activation (self-attention: S = T)
        elif self.output_gate == "G3":
            k = k * g
        elif self.output_gate == "G4":
            q = q * g
        return q, k, v, g

    def weights(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attention weights ``(B, H, T, S)`` the layer uses on input ``x`` (no dropout, no cache)."""
        self._check_input(x, context)
        q, k, _, _ = self.project(x, context)
        B, T, S = x.shape[0], q.shape[-2], k.shape[-2]
        mask = self._user_masks(attn_mask, key_padding_mask, B, T, S, q.dtype)
        if self.causal:
            mask = _and_masks(mask, causal_allowed(T, S, 0, x.device))
        return self.attention_weights(q, k, mask)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        cache: KVCache | None = None,
        reference: bool | None = None,
    ) -> Tensor:
        """Attention from ``x`` ``(B, T, dim)`` to itself or to ``context`` -> ``(B, T, dim)``.

        Args:
            x: query-side hidden states (and keys/values for self-attention).
            context: optional ``(B, S, dim or context_dim)``: cross-attention, keys and values
                from the context.  Not with ``causal``, gates G2/G3 or a cache.
            attn_mask: optional mask broadcastable to ``(B, H, T, S)`` (2 to 4 dims, e.g.
                ``(T, S)``): bool, True = query t may *not* attend to key s (the
                ``nn.MultiheadAttention`` convention, the opposite of SDPA's), or float,
                added to the logits (``-inf`` hides a key).
            key_padding_mask: optional ``(B, S)``, bool True = ignore that key, or float
                added to the logits.  With a cache, S counts cached plus new tokens.
                A query whose keys are all hidden gives NaN with softmax scores (as
                ``nn.MultiheadAttention``) and 0 with sigmoid scores.
            cache: a :class:`KVCache` for incremental self-attention decoding: the new
                tokens attend to the cached ones and their own (causally, with ``causal``),
                and their keys/values are appended to it.
            reference: force the explicit path (True) or the fast path (False); None uses
                ``self.use_reference``.
        """
        self._check_input(x, context)
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
            if context is not None:
                raise ValueError(
                    "cache is for incremental self-attention decoding; cross-attention keys "
                    "do not grow, call the layer with the same context instead"
                )
        B, T, C = x.shape
        use_ref = self.use_reference if reference is None else reference
        q, k, v, g = self.project(x, context)
        offset = 0
        if cache is not None:
            offset = len(cache)
            k, v = cache.append(k, v)  # (B, H, S, D), S = offset + T
        S = k.shape[-2]
        user = self._user_masks(attn_mask, key_padding_mask, B, T, S, q.dtype)
        y = self._attend(q, k, v, user, offset if self.causal else None, use_ref)  # (B, H, T, D)
        if self.output_gate == "G1":
            y = y * g  # gate each head's output before concatenation
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, dim)
        y = self.out_proj(y)
        if self.output_gate == "G5":
            y = y * g
        return y

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        user: Mask,
        causal_offset: int | None,
        use_ref: bool,
    ) -> Tensor:
        """Per-head outputs ``(B, H, T, D)`` on the fastest path the options allow."""
        T, S = q.shape[-2], k.shape[-2]
        p_drop = self.dropout if self.training else 0.0
        # a causal mask that hides nothing: one new token after the cache, or no causality
        causal_trivial = causal_offset is None or (T == 1 and causal_offset == S - 1)
        if self.score == "softmax" and not use_ref:
            if causal_trivial:
                mask, is_causal = user, False
            elif user is None and causal_offset == 0 and T == S:
                mask, is_causal = None, True  # SDPA builds the mask (keeps the fused kernel)
            else:
                mask = _and_masks(user, causal_allowed(T, S, causal_offset, q.device))
                is_causal = False
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p_drop, is_causal=is_causal
            )
        grad_mask = user is not None and user.requires_grad
        # a problem no bigger than one block (e.g. decoding one token) is cheaper explicitly
        small = q.shape[0] * q.shape[1] * T * S <= sigmoid_chunked.CHUNK_ELEMENTS
        if self.score == "sigmoid" and not (use_ref or small or grad_mask or p_drop > 0.0):
            return sigmoid_chunked.sigmoid_attention_chunked(
                q,
                k,
                v,
                bias=self._sigmoid_bias_value(S),
                scale=1.0 / math.sqrt(self.head_dim),
                mask=_as_additive(user, q.dtype),
                causal_offset=None if causal_trivial else causal_offset,
            )
        mask = user
        if not causal_trivial:
            mask = _and_masks(mask, causal_allowed(T, S, causal_offset, q.device))
        w = self.attention_weights(q, k, mask)  # (B, H, T, S)
        if p_drop > 0.0:
            w = F.dropout(w, p=p_drop)
        return w @ v  # (B, H, T, D)
