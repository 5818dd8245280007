"""One multi-head self-attention module whose options are the seed papers' variants.

Plain multi-head self-attention (Vaswani et al., arXiv 1706.03762) for an input
``X`` of shape ``(B, T, dim)`` with ``H`` heads of size ``D = dim / H``::

    Q = X W_Q + b_Q,  K = X W_K + b_K,  V = X W_V + b_V          # (B, T, dim) each
    Y_h = softmax(Q_h K_h^T / sqrt(D) + M) V_h                     # (B, T, D) per head h
    out = concat_h(Y_h) W_O + b_O                                  # (B, T, dim)

(``M`` is 0 where a key may be attended to and -inf where it is masked.)  Options,
one per paper:

* ``value_activation`` -- **active attention** (arXiv 2410.11222):
  ``Y_h = softmax(Q_h K_h^T / sqrt(D)) sigma(X W_V + b_V)_h``; sigma acts
  elementwise on the value projection *after* its bias, so every key token becomes a
  non-linear expert ``sigma(W_V^T x_i + b_V)``.
* ``gate`` -- **gated attention** (Qiu et al., arXiv 2505.06708; hierarchical-MoE
  reading in arXiv 2602.01468): ``Y' = Y * sigmoid(X W_theta + b_theta)`` where X is
  the layer input (the pre-norm hidden state that also feeds ``q_proj``), applied at
  G1 (each head's SDPA output, before concatenation and ``out_proj``), G2 (the
  values, after the value activation if any), G3 (the keys), G4 (the queries) or G5
  (after ``out_proj``).  ``gate_granularity="elementwise"`` gives one gate per
  coordinate (``W_theta`` is ``dim x dim``); ``"headwise"`` one scalar per head and
  token (``W_theta`` is ``dim x H``), broadcast over the head's ``D`` coordinates.
* ``score="sigmoid"`` -- **sigmoid attention** (Ramapuram et al., arXiv 2409.04431;
  sample-complexity analysis by Yan, Nguyen, Akbarian et al.,
  "Sigmoid Self-Attention has Lower Sample Complexity than Softmax Self-Attention", 2025):
  ``Y_h = sigmoid(Q_h K_h^T / sqrt(D) + b) V_h`` with ``b = -log(n)`` by default,
  ``n`` the number of keys; masked keys get weight exactly 0.

Two computation paths give the same numbers (tests check it to 1e-10 in float64):

* the fast path calls ``F.scaled_dot_product_attention`` for softmax scores; value
  activations and gates G2/G3/G4 transform V/K/Q before it and G1/G5 transform its
  result, so every softmax option keeps the fused kernel;
* the reference path forms the ``(B, H, T, T)`` weight matrix explicitly
  (``reference=True`` in ``forward`` or ``layer.use_reference = True``).  Sigmoid
  scores have no fused kernel and always take this path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "GATE_GRANULARITIES",
    "GATE_POSITIONS",
    "SCORES",
    "Attention",
    "resolve_activation",
    "validate_options",
]

ActivationFn = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


ACTIVATIONS: dict[str, ActivationFn] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "softplus": F.softplus,
    "identity": _identity,
}
"""Value activations by name (active attention, arXiv 2410.11222)."""

GATE_POSITIONS: tuple[str, ...] = ("G1", "G2", "G3", "G4", "G5")
"""Gate positions of Qiu et al. (arXiv 2505.06708)."""

GATE_GRANULARITIES: tuple[str, ...] = ("elementwise", "headwise")
SCORES: tuple[str, ...] = ("softmax", "sigmoid")


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
            return ACTIVATIONS[value_activation.lower()]
        except KeyError:
            raise ValueError(
                f"unknown value_activation {value_activation!r}; "
                f"choose one of {sorted(ACTIVATIONS)} or pass a callable"
            ) from None
    if callable(value_activation):
        return value_activation
    raise TypeError(
        "value_activation must be a name, a callable or None, "
        f"got {type(value_activation).__name__}"
    )


def validate_options(
    dim: int,
    heads: int,
    *,
    value_activation: str | ActivationFn | None = None,
    gate: str | None = None,
    gate_granularity: str = "elementwise",
    score: str = "softmax",
    sigmoid_bias: float | None = None,
    dropout: float = 0.0,
) -> None:
    """Raise ValueError/TypeError naming the problem if the options do not make a layer."""
    for name, val in (("dim", dim), ("heads", heads)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise TypeError(f"{name} must be an int, got {type(val).__name__}")
        if val <= 0:
            raise ValueError(f"{name} must be positive, got {val}")
    if dim % heads != 0:
        raise ValueError(f"dim={dim} is not divisible by heads={heads}")
    resolve_activation(value_activation)
    if gate is not None and (not isinstance(gate, str) or gate.upper() not in GATE_POSITIONS):
        raise ValueError(f"unknown gate position {gate!r}; choose None or one of {GATE_POSITIONS}")
    if gate_granularity not in GATE_GRANULARITIES:
        raise ValueError(
            f"unknown gate_granularity {gate_granularity!r}; choose one of {GATE_GRANULARITIES}"
        )
    if gate is not None and gate.upper() == "G5" and gate_granularity == "headwise":
        raise ValueError(
            "gate='G5' with gate_granularity='headwise' is undefined: G5 acts after out_proj, "
            "where the heads are already mixed; use elementwise G5 or a headwise gate at G1..G4"
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


class Attention(nn.Module):
    """Multi-head self-attention with the seed papers' variants as options.

    Input and output are ``(B, T, dim)``.  With every option off this is
    ``nn.MultiheadAttention(dim, heads, batch_first=True)`` used as self-attention
    (same parameters, split into ``q_proj``/``k_proj``/``v_proj``).  See the module
    docstring for the formulas and sources.

    Args:
        dim: model width; input and output feature size.
        heads: number of heads ``H``; must divide ``dim``.
        value_activation: active attention (arXiv 2410.11222). A name in
            ``ACTIVATIONS`` (relu, gelu, silu, sigmoid, tanh, elu, softplus, identity) or
            a callable, applied elementwise to ``X W_V + b_V`` before the weighted sum.
        gate: sigmoid gate position (arXiv 2505.06708): None, "G1" (SDPA output per
            head), "G2" (values), "G3" (keys), "G4" (queries) or "G5" (after out_proj).
        gate_granularity: "elementwise" (one gate per coordinate) or "headwise" (one
            scalar per head and token; not with G5).
        score: "softmax" or "sigmoid" (sigmoid attention, arXiv 2409.04431).
        sigmoid_bias: constant ``b`` added to the sigmoid logits; None means
            ``-log(n)`` with ``n`` the number of keys. Only with ``score="sigmoid"``.
        causal: mask future keys (query t sees keys ``<= t``).
        bias: biases on the q/k/v/out (and gate) projections.
        dropout: dropout probability on the attention weights (training only).

    Attributes:
        use_reference: if True, ``forward`` takes the explicit reference path.

    Raises:
        ValueError / TypeError: at construction, for any invalid option or combination.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        value_activation: str | ActivationFn | None = None,
        gate: Literal["G1", "G2", "G3", "G4", "G5"] | None = None,
        gate_granularity: Literal["elementwise", "headwise"] = "elementwise",
        score: Literal["softmax", "sigmoid"] = "softmax",
        sigmoid_bias: float | None = None,
        causal: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        validate_options(
            dim,
            heads,
            value_activation=value_activation,
            gate=gate,
            gate_granularity=gate_granularity,
            score=score,
            sigmoid_bias=sigmoid_bias,
            dropout=dropout,
        )
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.value_activation = value_activation
        self._act = resolve_activation(value_activation)
        self.gate = None if gate is None else gate.upper()
        self.gate_granularity = gate_granularity
        self.score = score
        self.sigmoid_bias = None if sigmoid_bias is None else float(sigmoid_bias)
        self.causal = bool(causal)
        self.bias = bool(bias)
        self.dropout = float(dropout)
        self.use_reference = False

        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.gate_proj: nn.Linear | None = None
        if self.gate is not None:
            gate_out = heads if gate_granularity == "headwise" else dim
            self.gate_proj = nn.Linear(dim, gate_out, bias=bias)

    def extra_repr(self) -> str:
        act = self.value_activation
        act_name = getattr(act, "__name__", act) if not isinstance(act, str) else act
        return (
            f"dim={self.dim}, heads={self.heads}, value_activation={act_name}, gate={self.gate}, "
            f"gate_granularity={self.gate_granularity}, score={self.score}, "
            f"sigmoid_bias={self.sigmoid_bias}, causal={self.causal}, bias={self.bias}, "
            f"dropout={self.dropout}"
        )

    # ------------------------------------------------------------------ pieces
    def _split(self, y: Tensor) -> Tensor:
        B, T, _ = y.shape
        return y.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def _check_input(self, x: Tensor, key_padding_mask: Tensor | None) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"x must have shape (B, T, dim), got rank {x.dim()} {tuple(x.shape)}")
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has {x.shape[-1]} features, layer dim is {self.dim}")
        if key_padding_mask is not None:
            if key_padding_mask.dtype != torch.bool:
                raise TypeError("key_padding_mask must be a bool tensor (True = ignore the key)")
            if key_padding_mask.shape != x.shape[:2]:
                raise ValueError(
                    f"key_padding_mask must have shape (B, T)={tuple(x.shape[:2])}, "
                    f"got {tuple(key_padding_mask.shape)}"
                )

    def gate_scores(self, x: Tensor) -> Tensor | None:
        """Sigmoid gate ``sigmoid(X W_theta + b_theta)`` shaped to broadcast at its position.

        Returns ``(B, H, T, D)`` (elementwise) or ``(B, H, T, 1)`` (headwise) for G1..G4,
        ``(B, T, dim)`` for G5, None without a gate.
        """
        if self.gate_proj is None:
            return None
        g = torch.sigmoid(self.gate_proj(x))  # (B, T, dim) or (B, T, H)
        if self.gate == "G5":
            return g  # (B, T, dim)
        if self.gate_granularity == "headwise":
            return g.transpose(1, 2).unsqueeze(-1)  # (B, H, T, 1)
        return self._split(g)  # (B, H, T, D)

    def allowed_keys(
        self, key_padding_mask: Tensor | None, T: int, device: torch.device
    ) -> Tensor | None:
        """Bool ``(B or 1, 1, T, T)``, True where query t may attend to key s; None = all."""
        allowed = None
        if self.causal:
            allowed = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]
            # allowed: (1, 1, T, T)
        if key_padding_mask is not None:
            kp = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
            allowed = kp if allowed is None else allowed & kp  # (B, 1, T, T)
        return allowed

    def _sigmoid_bias_value(self, n_keys: int) -> float:
        return -math.log(n_keys) if self.sigmoid_bias is None else self.sigmoid_bias

    def attention_weights(self, q: Tensor, k: Tensor, allowed: Tensor | None) -> Tensor:
        """Explicit weights ``(B, H, T, T)`` from (possibly gated) queries/keys ``(B, H, T, D)``.

        softmax: ``softmax(q k^T / sqrt(D))`` over allowed keys (masked -> weight 0);
        sigmoid: ``sigmoid(q k^T / sqrt(D) + b)`` with masked keys set to weight 0.
        No dropout is applied here.
        """
        # scale the (B, H, T, D) queries rather than the (B, H, T, T) logits; the in-place
        # edits below are safe for autograd (the product's backward does not need its output)
        logits = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)  # (B, H, T, T)
        if self.score == "sigmoid":
            logits.add_(self._sigmoid_bias_value(k.shape[-2]))
        if allowed is not None:
            logits.masked_fill_(~allowed, float("-inf"))
        if self.score == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)  # sigmoid(-inf) = 0 exactly

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Queries, keys, values ``(B, H, T, D)`` after activation and G2/G3/G4 gates; the gate."""
        q = self._split(self.q_proj(x))  # (B, H, T, D)
        k = self._split(self.k_proj(x))  # (B, H, T, D)
        v = self._split(self.v_proj(x))  # (B, H, T, D)
        if self._act is not None:
            v = self._act(v)  # active attention: sigma(X W_V + b_V)
        g = self.gate_scores(x)
        if self.gate == "G2":
            v = v * g  # gate after the value activation
        elif self.gate == "G3":
            k = k * g
        elif self.gate == "G4":
            q = q * g
        return q, k, v, g

    def weights(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Attention weights ``(B, H, T, T)`` the layer uses on input ``x`` (no dropout)."""
        self._check_input(x, key_padding_mask)
        q, k, _, _ = self.project(x)
        allowed = self.allowed_keys(key_padding_mask, x.shape[1], x.device)
        return self.attention_weights(q, k, allowed)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        *,
        reference: bool | None = None,
    ) -> Tensor:
        """Self-attention on ``x`` ``(B, T, dim)`` -> ``(B, T, dim)``.

        Args:
            x: input hidden states.
            key_padding_mask: optional bool ``(B, T)``, True = ignore that key (the
                ``nn.MultiheadAttention`` convention). A query whose keys are all masked
                gives NaN with softmax scores (as ``nn.MultiheadAttention``) and 0 with
                sigmoid scores.
            reference: force the explicit path (True) or the SDPA path (False); None
                uses ``self.use_reference``. Sigmoid scores always use the explicit path.
        """
        self._check_input(x, key_padding_mask)
        B, T, C = x.shape
        use_ref = self.use_reference if reference is None else reference
        q, k, v, g = self.project(x)
        p_drop = self.dropout if self.training else 0.0
        if self.score == "softmax" and not use_ref:
            # causal without padding: let SDPA build the mask (keeps the fused kernel)
            only_causal = self.causal and key_padding_mask is None
            allowed = None if only_causal else self.allowed_keys(key_padding_mask, T, x.device)
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=allowed,
                dropout_p=p_drop,
                is_causal=only_causal,
            )  # (B, H, T, D)
        else:
            allowed = self.allowed_keys(key_padding_mask, T, x.device)
            w = self.attention_weights(q, k, allowed)  # (B, H, T, T)
            if p_drop > 0.0:
                w = F.dropout(w, p=p_drop)
            y = w @ v  # (B, H, T, D)
        if self.gate == "G1":
            y = y * g  # gate each head's output before concatenation
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, dim)
        y = self.out_proj(y)
        if self.gate == "G5":
            y = y * g
        return y
