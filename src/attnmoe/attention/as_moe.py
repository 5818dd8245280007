"""The exact rewrite of an ``Attention`` layer's heads as quadratic-gating MoEs.

Following arXiv 2410.11222 (Sec. "self-attention as quadratic gating MoE"), stack one
input sequence ``X`` ``(T, dim)`` into ``x~ = vec(X)`` ``(N,)`` with ``N = T * dim``
(row-major: ``x~[i*dim:(i+1)*dim] = x_i``) and let ``P_i`` ``(dim, N)`` be the selection
matrix with ``P_i x~ = x_i``.  Writing the projections column-wise
(``q_j = W_Q^T x_j + b_Q`` with ``W_Q = q_proj.weight.T`` restricted to head h's
``d_k = D`` columns, likewise K, V), the output of head h at query position j is::

    y_j(x~) = sum_i  pi_ij(x~) E_i(x~)                      (sum over allowed keys i)
    l_ij(x~) = x~^T A_ij x~ + b_ij^T x~ + c_ij                  # quadratic gate logits
    A_ij  = P_j^T W_Q W_K^T P_i / sqrt(d_k)                     # (N, N)
    b_ij  = (P_i^T W_K b_Q + P_j^T W_Q b_K) / sqrt(d_k)         # (N,)
    c_ij  = b_Q^T b_K / sqrt(d_k)  (+ b, the sigmoid-attention bias)
    pi_ij = softmax_i(l_ij)  or  sigmoid(l_ij)                   # score="softmax" / "sigmoid"
    E_i(x~) = sigma(W_V^T P_i x~ + b_V)                          # (D,) one expert per key

Without projection biases ``b_ij = 0`` and ``c_ij = 0``: a quadratic *monomial* gate;
with them a quadratic *polynomial* gate.  Masked keys (causal, padding) are experts
with weight 0.  Gates (arXiv 2505.06708, hierarchical reading arXiv 2602.01468):

* G1: ``y_j <- sigmoid(W_theta^T P_j x~ + b_theta) * y_j`` -- an outer sigmoid
  gate over the whole mixture of query j;
* G2: ``E_i <- sigmoid(W_theta^T P_i x~ + b_theta) * E_i`` -- a sigmoid gate on
  each expert.

(These are the attention layer's *output gates*, ``Attention(output_gate=...)``; "gate"
alone means the MoE gating function ``pi_ij`` here, as in :mod:`attnmoe.moe`.)

G3/G4 (gates on keys/queries) make the logits cubic/quartic in ``x~`` and G5 mixes
heads, so they have no per-head quadratic rewrite; ``as_moe`` rejects them.

Gate logits are evaluated by :mod:`attnmoe.moe`'s quadratic monomial/polynomial gate
(replicates = (head, query)); experts by its scalar experts (replicates = (head,
output coordinate)); the masking, normalisation, weighted sum and G1/G2 gates are
written here (``attnmoe.moe.mixture_forward`` has no masks and one replicate axis for
gate and experts).  See ``docs/attention_as_moe.md``.

All tensors are dense: ``A`` holds ``H*T*T*N*N`` numbers, so this is a tool for
checking and studying small layers, not for running models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnmoe.moe import EXPERTS, make_expert, make_gate

from .attention import Attention

__all__ = ["AttentionMoE", "as_moe", "head_outputs"]


def _moe_expert_name(layer: Attention) -> str | None:
    """Name of the ``attnmoe.moe`` expert computing ``sigma(a^T x + alpha)`` for the layer's
    value activation (matched by name; "identity" and no activation are linear), or None."""
    name = layer.value_activation_name
    if layer._act is None or name == "identity":
        return "linear"
    return name if name in EXPERTS else None


MAX_DENSE_ELEMENTS = 50_000_000
"""Largest ``A`` (``H*T*T*N*N`` entries) ``as_moe`` will build."""


@dataclass
class AttentionMoE:
    """Per-head quadratic-gating MoE of one ``Attention`` layer at sequence length T.

    Shapes use ``H`` heads, ``T`` positions, ``N = T * dim``, ``D = dim / H``,
    ``Dg`` = D (elementwise gate) or 1 (headwise gate).  Index order is
    ``[head, query j, key i, ...]``.

    Attributes:
        A: ``(H, T, T, N, N)`` quadratic gate matrices ``A_ij``.
        b: ``(H, T, T, N)`` linear gate terms ``b_ij`` (zeros without biases).
        c: ``(H, T, T)`` gate constants ``c_ij`` (incl. the sigmoid-attention bias).
        allowed: ``(Bm, T, T)`` bool, True where query j may use expert i (Bm = 1 or B).
        normalization: "softmax" or "sigmoid".
        expert_weight: ``(H, T, N, D)`` -- ``W_V^T P_i`` of head h, stored as ``(N, D)``.
        expert_bias: ``(H, D)`` ``b_V`` of head h (zeros without biases).
        activation: the value activation sigma (None = identity).
        expert_name: the ``attnmoe.moe`` expert family evaluating ``sigma(a^T x~ + alpha)``;
            None when ``attnmoe.moe`` has none (sigma is then applied to the linear expert).
        output_gate_position: None, "G1" or "G2" (the attention layer's output gate).
        output_gate_weight: ``(H, T, N, Dg)`` -- ``W_theta^T P_t`` for the token t the
            output gate reads (t = j for G1, t = i for G2); None without one.
        output_gate_bias: ``(H, Dg)``; None without an output gate.
        x_tilde: ``(B, N)`` the vectorised input sequences given to :func:`as_moe`.
    """

    A: Tensor
    b: Tensor
    c: Tensor
    allowed: Tensor
    normalization: str
    expert_weight: Tensor
    expert_bias: Tensor
    activation: Callable[[Tensor], Tensor] | None
    expert_name: str | None
    output_gate_position: str | None
    output_gate_weight: Tensor | None
    output_gate_bias: Tensor | None
    x_tilde: Tensor

    @property
    def gate_name(self) -> str:
        """``"monomial"`` (``x^T A x + c``) without projection biases, else ``"polynomial"``."""
        return "polynomial" if bool((self.b != 0).any()) else "monomial"

    def gate_logits(self, x_tilde: Tensor) -> Tensor:
        """``l_ij(x~) = x~^T A_ij x~ + b_ij^T x~ + c_ij`` -> ``(B, H, T, T)`` for ``x~`` ``(B, N)``.

        Evaluated by :mod:`attnmoe.moe`'s quadratic gate with replicates ``R = (h, j)``
        (one gate per head and query position), ``n = B`` samples and ``k = T`` experts.
        """
        H, T, _, N = self.b.shape
        Bn = x_tilde.shape[0]
        gate = make_gate(self.gate_name, N)
        params = {
            "A": self.A.reshape(H * T, T, N, N),  # (R, k, N, N)
            "b": self.b.reshape(H * T, T, N),  # (R, k, N)
            "c": self.c.reshape(H * T, T),  # (R, k)
        }
        xr = x_tilde.unsqueeze(0).expand(H * T, Bn, N)  # (R, n, N)
        logits = gate.logits(params, xr)  # (R, n, k) = (H*T, B, T)
        return logits.view(H, T, Bn, T).permute(2, 0, 1, 3)  # (B, H, T, T)

    def gate_weights(self, x_tilde: Tensor) -> Tensor:
        """Mixture weights ``pi_ij`` ``(B, H, T, T)``; disallowed experts get exactly 0."""
        logits = self.gate_logits(x_tilde).masked_fill(~self.allowed[:, None], float("-inf"))
        if self.normalization == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)

    def experts(self, x_tilde: Tensor) -> Tensor:
        """Expert outputs ``E_i(x~)`` ``(B, H, T, D)`` (with the G2 gate when present).

        Each output coordinate m of head h is a scalar expert
        ``sigma(a_{i,m}^T x~ + b_V[m])`` with ``a_{i,m} = P_i^T W_V[:, m]``, evaluated by
        :mod:`attnmoe.moe`'s expert with replicates ``R = (h, m)`` and ``k = T`` experts.
        Activations that ``attnmoe.moe`` has no expert for (silu, elu, softplus, callables)
        are applied here to its linear expert's output.
        """
        H, T, N, D = self.expert_weight.shape
        Bn = x_tilde.shape[0]
        moe_name = self.expert_name
        expert = make_expert(moe_name or "linear")
        params = {
            "a": self.expert_weight.permute(0, 3, 1, 2).reshape(H * D, T, N),  # (R, k, N)
            "alpha": self.expert_bias.reshape(H * D, 1).expand(H * D, T),  # (R, k)
        }
        xr = x_tilde.unsqueeze(0).expand(H * D, Bn, N)  # (R, n, N)
        e = expert(params, xr)  # (R, n, k) = (H*D, B, T)
        if moe_name is None and self.activation is not None:
            e = self.activation(e)
        e = e.view(H, D, Bn, T).permute(2, 0, 3, 1)  # (B, H, T, D)
        if self.output_gate_position == "G2":
            e = e * self._output_gate(x_tilde)
        return e

    def _output_gate(self, x_tilde: Tensor) -> Tensor:
        z = torch.einsum("bn,htng->bhtg", x_tilde, self.output_gate_weight)
        z = z + self.output_gate_bias[:, None]
        return torch.sigmoid(z)  # (B, H, T, Dg)

    def __call__(self, x_tilde: Tensor | None = None) -> Tensor:
        """Per-head outputs ``y_j`` ``(B, H, T, D)``; default input: the stored ``x_tilde``."""
        x_tilde = self.x_tilde if x_tilde is None else x_tilde
        y = torch.einsum("bhji,bhid->bhjd", self.gate_weights(x_tilde), self.experts(x_tilde))
        if self.output_gate_position == "G1":
            y = y * self._output_gate(x_tilde)  # outer gate of query j's mixture
        return y  # (B, H, T, D)


def _selection_blocks(weight_cols: Tensor, T: int) -> Tensor:
    """``P_t^T W`` for every t: ``(T, N, k)`` from ``W`` ``(dim, k)`` (block t holds W)."""
    dim, k = weight_cols.shape
    out = weight_cols.new_zeros(T, T, dim, k)  # (t, block, dim, k)
    idx = torch.arange(T)
    out[idx, idx] = weight_cols
    return out.reshape(T, T * dim, k)  # (T, N, k)


def as_moe(layer: Attention, x: Tensor, key_padding_mask: Tensor | None = None) -> AttentionMoE:
    """Rewrite every head of ``layer`` as a quadratic-gating MoE over ``x~ = vec(X)``.

    Args:
        layer: a self-attention :class:`Attention` layer (output gate None, "G1" or "G2").
        x: input sequences ``(T, dim)`` or ``(B, T, dim)``; fixes ``T`` and is stored
            vectorised as ``x_tilde`` ``(B, N)``.
        key_padding_mask: optional bool ``(B, T)``, True = ignore that key.

    Returns:
        An :class:`AttentionMoE`; calling it returns the heads' outputs ``(B, H, T, D)``,
        equal to the layer's per-head outputs (before ``out_proj``) up to rounding.

    Raises:
        TypeError: ``layer`` is not an ``Attention``.
        ValueError: output gate G3/G4/G5, a cross-attention layer (``context_dim``), bad
            input shape, or a rewrite too large to hold densely.
    """
    if not isinstance(layer, Attention):
        raise TypeError(f"as_moe needs an attnmoe.attention.Attention, got {type(layer).__name__}")
    if layer.context_dim is not None:
        raise ValueError("as_moe rewrites self-attention; this layer has a context_dim")
    if layer.output_gate in ("G3", "G4", "G5"):
        raise ValueError(
            f"output gate {layer.output_gate} has no per-head quadratic-gating rewrite "
            "(G3/G4 make the gate logits higher than quadratic; G5 mixes heads); use G1 or G2"
        )
    if x.dim() == 2:
        x = x.unsqueeze(0)
        if key_padding_mask is not None and key_padding_mask.dim() == 1:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    layer._check_input(x)
    if key_padding_mask is not None and (
        key_padding_mask.dtype != torch.bool or key_padding_mask.shape != x.shape[:2]
    ):
        raise ValueError(
            f"key_padding_mask must be a bool (B, T)={tuple(x.shape[:2])} tensor, "
            f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
        )
    Bn, T, C = x.shape
    H, D = layer.heads, layer.head_dim
    N = T * C
    if H * T * T * N * N > MAX_DENSE_ELEMENTS:
        raise ValueError(
            f"dense rewrite needs H*T^2*N^2 = {H * T * T * N * N:.3g} entries "
            f"(> {MAX_DENSE_ELEMENTS:.0e}); use a shorter sequence or a smaller layer"
        )
    dt, dev = x.dtype, x.device
    scale = 1.0 / math.sqrt(D)

    def cols(lin: torch.nn.Linear) -> tuple[Tensor, Tensor]:
        """Column-convention weight ``(dim, H, D)`` and bias ``(H, D)`` (zeros if absent)."""
        w = lin.weight.detach().to(dt).T.reshape(C, H, -1)
        b = lin.bias.detach().to(dt) if lin.bias is not None else w.new_zeros(lin.out_features)
        return w, b.reshape(H, -1)

    Wq, bq = cols(layer.q_proj)  # (C, H, D), (H, D)
    Wk, bk = cols(layer.k_proj)
    Wv, bv = cols(layer.v_proj)

    A_list, b_list, ew_list = [], [], []
    for h in range(H):  # builds parameters once; H is small and this is not a hot path
        PWq = _selection_blocks(Wq[:, h], T)  # (T, N, D): P_j^T W_Q
        PWk = _selection_blocks(Wk[:, h], T)  # (T, N, D): P_i^T W_K
        A_list.append(torch.einsum("jnd,imd->jinm", PWq, PWk) * scale)  # (T, T, N, N)
        b_i = PWk @ bq[h]  # (T, N): P_i^T W_K b_Q
        b_j = PWq @ bk[h]  # (T, N): P_j^T W_Q b_K
        b_list.append((b_i[None, :, :] + b_j[:, None, :]) * scale)  # (T, T, N) [j, i]
        ew_list.append(_selection_blocks(Wv[:, h], T))  # (T, N, D)
    A = torch.stack(A_list)  # (H, T, T, N, N)
    b = torch.stack(b_list)  # (H, T, T, N)
    c = ((bq * bk).sum(-1) * scale)[:, None, None].expand(H, T, T).clone()  # (H, T, T)
    if layer.score == "sigmoid":
        c = c + layer._sigmoid_bias_value(T)

    allowed = torch.ones(1, T, T, dtype=torch.bool, device=dev)
    if layer.causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, :]  # (B, T, T)

    gate_weight = gate_bias = None
    if layer.output_gate_proj is not None:
        Wg, bg = cols(layer.output_gate_proj)  # (C, H, Dg), (H, Dg)
        gate_weight = torch.stack([_selection_blocks(Wg[:, h], T) for h in range(H)])
        # gate_weight: (H, T, N, Dg)
        gate_bias = bg

    return AttentionMoE(
        A=A,
        b=b,
        c=c,
        allowed=allowed,
        normalization=layer.score,
        expert_weight=torch.stack(ew_list),  # (H, T, N, D)
        expert_bias=bv,
        activation=layer._act,
        expert_name=_moe_expert_name(layer),
        output_gate_position=layer.output_gate,
        output_gate_weight=gate_weight,
        output_gate_bias=gate_bias,
        x_tilde=x.detach().reshape(Bn, N),
    )


def head_outputs(layer: Attention, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """The layer's own per-head outputs ``(B, H, T, D)`` (input of ``out_proj``, after G1).

    Read with a forward pre-hook on ``out_proj`` during an ordinary ``layer(x)`` call,
    so it is the layer's own computation (SDPA path unless ``use_reference``).
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
    seen: list[Tensor] = []
    handle = layer.out_proj.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach())
    )
    try:
        layer(x, key_padding_mask=key_padding_mask)
    finally:
        handle.remove()
    Bn, T, _ = seen[0].shape
    return seen[0].view(Bn, T, layer.heads, layer.head_dim).transpose(1, 2)  # (B, H, T, D)
