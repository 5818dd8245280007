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

Modern-decoder options (any variant combines with each): ``kv_heads`` (grouped-query
attention, arXiv 2305.13245), ``head_dim``, ``rope`` (rotary positions, arXiv 2104.09864,
:mod:`attnmoe.attention.rope`) and ``qk_norm`` (per-head RMSNorm of q and k).

Option checks live in :mod:`attnmoe.attention.options`, :class:`KVCache` and the mask
helpers in :mod:`attnmoe.attention.cache` (re-exported here).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sigmoid_chunked
from .cache import KVCache, Mask, _and_masks, _as_additive, causal_allowed, user_masks
from .options import (
    _KEY_SIDE_GATES,
    OUTPUT_GATE_GRANULARITIES,
    OUTPUT_GATE_POSITIONS,
    SCORES,
    VALUE_ACTIVATIONS,
    ActivationFn,
    _check_positive_int,  # noqa: F401  (moved; still importable here)
    _identity,  # noqa: F401
    check_input,
    resolve_activation,
    validate_options,
)
from .rope import apply_rotary, rotary_at

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
        heads: number of (query) heads ``H``; must divide ``dim`` unless ``head_dim`` is given.
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
        kv_heads: number of key/value heads ``KV`` (grouped-query attention, arXiv
            2305.13245; 1 = multi-query); must divide ``heads``.  Query head h reads key/value
            head ``h // (heads / KV)``.  None: ``heads``.
        head_dim: per-head size ``D`` (None: ``dim // heads``); q/k/v project to
            ``heads * D`` / ``KV * D`` features and ``out_proj`` maps ``heads * D -> dim``.
        rope: rotary position embedding on q and k (arXiv 2104.09864, rotate-half layout,
            :mod:`attnmoe.attention.rope`) with this base (e.g. 10000.0); None: none.
            Positions are ``0..T-1`` plus the cache length unless ``forward`` gets ``positions``.
        qk_norm: RMSNorm (learnable weight, ``qk_norm_eps``) of each head's query and key
            over its D coordinates, before RoPE (as in Qwen3 and arXiv 2505.06708).
        qk_norm_eps: epsilon of the q/k RMSNorm.
        out_bias: bias on ``out_proj``; None: ``bias`` (Qwen2 has q/k/v biases only).

    Order inside the layer: projection -> q/k norm -> RoPE -> G3/G4 gate (so an elementwise
    gate multiplies the rotated coordinates the score sums over) -> scores.

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
        kv_heads: int | None = None,
        head_dim: int | None = None,
        rope: float | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        out_bias: bool | None = None,
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
            kv_heads=kv_heads,
            head_dim=head_dim,
            rope=rope,
            qk_norm=qk_norm,
            qk_norm_eps=qk_norm_eps,
        )
        self.dim = dim
        self.heads = heads
        self.kv_heads = heads if kv_heads is None else kv_heads
        self.head_dim = dim // heads if head_dim is None else head_dim
        self.rope = None if rope is None else float(rope)
        self.qk_norm = qk_norm
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
        inner, kv_inner = heads * self.head_dim, self.kv_heads * self.head_dim
        self.q_proj = nn.Linear(dim, inner, bias=bias)
        self.k_proj = nn.Linear(kv_in, kv_inner, bias=bias)
        self.v_proj = nn.Linear(kv_in, kv_inner, bias=bias)
        self.out_proj = nn.Linear(inner, dim, bias=bias if out_bias is None else out_bias)
        self.q_norm: nn.RMSNorm | None = None
        self.k_norm: nn.RMSNorm | None = None
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=float(qk_norm_eps))
            self.k_norm = nn.RMSNorm(self.head_dim, eps=float(qk_norm_eps))
        self.output_gate_proj: nn.Linear | None = None
        if self.output_gate is not None:
            gate_heads = self.kv_heads if self.output_gate in _KEY_SIDE_GATES else heads
            gate_out = {"G5": dim}.get(
                self.output_gate,
                gate_heads if output_gate_granularity == "headwise" else gate_heads * self.head_dim,
            )
            self.output_gate_proj = nn.Linear(dim, gate_out, bias=bias)

    def extra_repr(self) -> str:
        act = self.value_activation
        act_name = getattr(act, "__name__", act) if not isinstance(act, str) else act
        ctx = "" if self.context_dim is None else f", context_dim={self.context_dim}"
        if self.kv_heads != self.heads:
            ctx += f", kv_heads={self.kv_heads}"
        if self.head_dim * self.heads != self.dim:
            ctx += f", head_dim={self.head_dim}"
        if self.rope is not None:
            ctx += f", rope={self.rope}"
        if self.qk_norm:
            ctx += ", qk_norm=True"
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
    def _split(self, y: Tensor, heads: int | None = None) -> Tensor:
        B, T, _ = y.shape
        return y.view(B, T, heads or self.heads, -1).transpose(1, 2)  # (B, H|KV, T, D)

    def _check_input(self, x: Tensor, context: Tensor | None = None) -> None:
        check_input(self, x, context)

    # ------------------------------------------------------------------ pieces
    def output_gate_scores(self, x: Tensor) -> Tensor | None:
        """Sigmoid gate ``sigmoid(X W_theta + b_theta)`` shaped to broadcast at its position.

        Returns ``(B, H, T, D)`` (elementwise) or ``(B, H, T, 1)`` (headwise) for G1 and
        G4, the same with ``KV`` heads for G2/G3 (they gate key/value heads), ``(B, T, dim)``
        for G5, None without a gate.
        """
        if self.output_gate_proj is None:
            return None
        g = torch.sigmoid(self.output_gate_proj(x))  # (B, T, H*D | KV*D | H | KV | dim)
        if self.output_gate == "G5":
            return g  # (B, T, dim)
        if self.output_gate_granularity == "headwise":
            return g.transpose(1, 2).unsqueeze(-1)  # (B, H|KV, T, 1)
        return self._split(g, g.shape[-1] // self.head_dim)  # (B, H|KV, T, D)

    def _sigmoid_bias_value(self, n_keys: int) -> float:
        return -math.log(n_keys) if self.sigmoid_bias is None else self.sigmoid_bias

    def attention_weights(self, q: Tensor, k: Tensor, mask: Mask = None) -> Tensor:
        """Explicit weights ``(B, H, T, S)`` from queries ``(B, H, T, D)`` and keys ``(B, H, S, D)``.

        ``mask``: None, bool (True = may attend) or additive float, broadcastable to
        ``(B, H, T, S)``.  softmax: ``softmax(q k^T / sqrt(D) + M)``; sigmoid:
        ``sigmoid(q k^T / sqrt(D) + b + M)`` (hidden keys get weight exactly 0).
        No dropout is applied here.
        """
        if k.shape[1] != q.shape[1]:
            k = self._expand_kv(k)  # (B, H, S, D): query head h reads key head h // (H/KV)
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

    def _expand_kv(self, t: Tensor) -> Tensor:
        """``(B, KV, S, D)`` -> ``(B, H, S, D)`` (each key/value head serves H/KV query heads)."""
        group = self.heads // self.kv_heads
        return t if group == 1 else t.repeat_interleave(group, dim=1)

    def rotary(
        self, T: int, offset: int = 0, positions: Tensor | None = None, *, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """RoPE ``cos``/``sin`` ``(B|1, 1, T, D)`` at ``positions`` (default offset + 0..T-1)."""
        if self.rope is None:
            raise ValueError("this layer has no rope")
        dev = self.q_proj.weight.device
        return rotary_at(self.head_dim, self.rope, T, offset, positions, dtype=dtype, device=dev)

    def project(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        offset: int = 0,
        positions: Tensor | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Queries ``(B, H, T, D)``, keys/values ``(B, KV, S, D)`` after activation, q/k norm,
        RoPE and G2/G3/G4 gates, and the gate scores (from ``x``).

        RoPE positions: ``positions``, else ``offset + 0..T-1``; ``rotary`` = precomputed
        ``(cos, sin)`` broadcastable to ``(B, 1, T, D)`` replaces both (e.g. a host model's).
        """
        kv_in = x if context is None else context
        q = self._split(self.q_proj(x))  # (B, H, T, D)
        k = self._split(self.k_proj(kv_in), self.kv_heads)  # (B, KV, S, D)
        v = self._split(self.v_proj(kv_in), self.kv_heads)  # (B, KV, S, D)
        if self._act is not None:
            v = self._act(v)  # active attention: sigma(Z W_V + b_V)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            if rotary is None:
                rotary = self.rotary(x.shape[1], offset, positions, dtype=q.dtype)
            cos, sin = (t if t.dim() == 4 else t.unsqueeze(-3) for t in rotary)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        elif positions is not None or rotary is not None:
            raise ValueError("positions/rotary given to a layer without rope")
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
        positions: Tensor | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attention weights ``(B, H, T, S)`` the layer uses on input ``x`` (no dropout, no cache)."""
        self._check_input(x, context)
        q, k, _, _ = self.project(x, context, positions=positions, rotary=rotary)
        B, T, S = x.shape[0], q.shape[-2], k.shape[-2]
        mask = user_masks(attn_mask, key_padding_mask, (B, self.heads, T, S), q.dtype)
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
        positions: Tensor | None = None,
        rotary: tuple[Tensor, Tensor] | None = None,
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
            positions: RoPE positions ``(T,)`` or ``(B, T)`` of the new tokens; default
                ``len(cache) + 0..T-1``.  Only with ``rope``.
            rotary: precomputed RoPE ``(cos, sin)``, each ``(B|1, T, D)`` or
                ``(B|1, 1, T, D)``, used instead of the layer's own (e.g. the host model's
                rotary embedding, with its scaling).  Only with ``rope``.
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
        B, T, _ = x.shape
        use_ref = self.use_reference if reference is None else reference
        offset = 0 if cache is None else len(cache)
        q, k, v, g = self.project(x, context, offset=offset, positions=positions, rotary=rotary)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, KV, S, D), S = offset + T
        S = k.shape[-2]
        user = user_masks(attn_mask, key_padding_mask, (B, self.heads, T, S), q.dtype)
        y = self._attend(q, k, v, user, offset if self.causal else None, use_ref)  # (B, H, T, D)
        if self.output_gate == "G1":
            y = y * g  # gate each head's output before concatenation
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*D)
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
        """Per-head outputs ``(B, H, T, D)`` on the fastest path the options allow.

        ``k``/``v`` have ``KV`` heads; SDPA reads them grouped (``enable_gqa``) where no mask
        is given (the fused kernels), other paths repeat them to ``H`` heads."""
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
            gqa = self.kv_heads != self.heads
            if gqa and mask is not None:
                k, v, gqa = self._expand_kv(k), self._expand_kv(v), False
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p_drop, is_causal=is_causal, enable_gqa=gqa
            )
        k, v = self._expand_kv(k), self._expand_kv(v)  # (B, H, S, D)
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
