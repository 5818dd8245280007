"""The exact rewrite of an ``Attention`` layer as a hierarchical MoE: heads -> tokens -> experts.

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
with them a quadratic *polynomial* gate.  Modern-decoder options keep the rewrite exact:
grouped-query attention reads key/value head ``h // (H/KV)`` for query head h; RoPE and
the q/k norm weights enter as ``M_ij = diag(w_q) R_j^T R_i diag(w_k)`` between the
projections (``A_ij = P_j^T W_Q M_ij W_K^T P_i / sqrt(d_k)``, likewise in ``b_ij``,
``c_ij``); q/k RMSNorm divides the quadratic logit by ``rms(q_j) rms(k_i)`` of the raw
projections (a token-dependent temperature).  Masked keys (causal, padding) are experts
with weight 0.  Gates (arXiv 2505.06708, hierarchical reading arXiv 2602.01468):

* G1: ``y_j <- sigmoid(W_theta^T P_j x~ + b_theta) * y_j`` -- an outer sigmoid
  gate over the whole mixture of query j;
* G2: ``E_i <- sigmoid(W_theta^T P_i x~ + b_theta) * E_i`` -- a sigmoid gate on
  each expert;
* G4 (queries) / G3 (keys): the logit becomes ``sum_c g_c(x_t) l^(c)_ij(x~)`` with
  ``l^(c)_ij = (q_jc)(k_ic) / sqrt(d_k)`` the rank-one quadratic component of coordinate c
  (``sum_c l^(c) = l``) and ``g = sigmoid(W_theta^T P_t x~ + b_theta)`` read at the query
  token t = j (G4) or the key token t = i (G3): a quadratic gate whose D components are
  re-weighted by sigmoids of a token -- no longer a quadratic form in ``x~`` (headwise: one
  weight for the whole logit, a query-dependent temperature (G4) or a key-dependent scale (G3));
* G5: ``o_j <- sigmoid(W_theta^T P_j x~ + b_theta) * o_j`` after ``out_proj``, one gate per
  output coordinate over the whole sum of heads.

(These are the attention layer's *output gates*, ``Attention(output_gate=...)``; "gate"
alone means the MoE gating function ``pi_ij`` here, as in :mod:`attnmoe.moe`.)

The outer level (arXiv 2602.01468's heads level): output coordinate m of query j is
``o_jm = sum_h sum_c W_O[m, (h, c)] y^(h)_jc + b_O[m]`` -- a sum over (head, head
coordinate) with constant weights, made input-dependent by G1 (per (h, c) elementwise, per h
headwise) and, for all heads at once, by G5. :meth:`AttentionMoE.output` evaluates it and
reproduces the whole layer.

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
from .rope import rotation_matrices

__all__ = ["AttentionMoE", "as_moe", "head_outputs"]


def _moe_expert_name(layer: Attention) -> str | None:
    """Name of the ``attnmoe.moe`` expert computing ``sigma(a^T x + alpha)`` for the layer's
    value activation (matched by name; "identity" and no activation are linear), or None."""
    name = layer.value_activation_name
    if layer._act is None or name == "identity":
        return "linear"
    return name if name in EXPERTS else None


@dataclass
class _NormScale:
    """Raw (pre-norm) query/key coordinates ``W^T P_t x~ + b`` of every head, for q/k norm.

    ``q_weight``/``k_weight``: ``(H, T, N, D)``; ``q_bias``/``k_bias``: ``(H, D)``.
    """

    q_weight: Tensor
    q_bias: Tensor
    k_weight: Tensor
    k_bias: Tensor
    q_eps: float
    k_eps: float

    def factor(self, x_tilde: Tensor) -> Tensor:
        """``1 / (rms(q_j) rms(k_i))`` ``(B, H, T, T)`` ``[b, h, j, i]``."""
        def rms(w: Tensor, b: Tensor, eps: float) -> Tensor:
            u = torch.einsum("bn,htnd->bhtd", x_tilde, w) + b[:, None]
            return (u.pow(2).mean(-1) + eps).sqrt()  # (B, H, T)

        rq = rms(self.q_weight, self.q_bias, self.q_eps)
        rk = rms(self.k_weight, self.k_bias, self.k_eps)
        return 1.0 / (rq[..., :, None] * rk[..., None, :])


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
        output_gate_position: None or "G1".."G5" (the attention layer's output gate).
        output_gate_weight: ``(H, T, N, Dg)`` -- ``W_theta^T P_t`` for the token t the
            output gate reads (t = j for G1/G4/G5, t = i for G2/G3); for G5 ``(1, T, N, C)``
            (one gate per output coordinate); None without one.
        output_gate_bias: ``(H, Dg)`` (G5: ``(1, C)``); None without an output gate.
        x_tilde: ``(B, N)`` the vectorised input sequences given to :func:`as_moe`.
        out_weight: ``(H, D, C)`` the outer level's weights ``W_O[m, (h, c)]``.
        out_bias: ``(C,)`` ``b_O`` (zeros without biases).
        score_offset: the constant of ``c`` that no score gate multiplies (the sigmoid-attention
            bias; 0 for softmax scores).
        A_parts, b_parts, c_parts: elementwise G3/G4 only: the D rank-one components
            ``(H, T, T, D, N, N)``, ``(H, T, T, D, N)``, ``(H, T, T, D)`` of A, b and
            ``c - score_offset`` (they sum to them); None otherwise.
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
    out_weight: Tensor | None = None
    out_bias: Tensor | None = None
    score_offset: float = 0.0
    A_parts: Tensor | None = None
    b_parts: Tensor | None = None
    c_parts: Tensor | None = None
    norm: _NormScale | None = None

    @property
    def gate_name(self) -> str:
        """``"monomial"`` (``x^T A x + c``) without projection biases, else ``"polynomial"``."""
        return "polynomial" if bool((self.b != 0).any()) else "monomial"

    def gate_logits(self, x_tilde: Tensor) -> Tensor:
        """The gate logits ``(B, H, T, T)`` ``[b, h, j, i]`` for ``x~`` ``(B, N)``.

        Without a score gate: ``l_ij(x~) = x~^T A_ij x~ + b_ij^T x~ + c_ij``, evaluated by
        :mod:`attnmoe.moe`'s quadratic gate with replicates ``R = (h, j)`` (one gate per head
        and query position), ``n = B`` samples and ``k = T`` experts. With G4/G3 the quadratic
        part is multiplied by the sigmoid gate of the query/key token (headwise), or each of
        its D rank-one components by its own coordinate's gate (elementwise).  With q/k norm
        the quadratic part is divided by ``rms(q_j) rms(k_i)`` of the raw projections (a
        quadratic gate with a temperature read from the query and key tokens).
        """
        pos = self.output_gate_position
        scale = None if self.norm is None else self.norm.factor(x_tilde)  # (B, H, T, T)
        if pos in ("G3", "G4") and self.A_parts is not None:
            H, T, _, D, N = self.b_parts.shape
            parts = self._quadratic(  # (B, H*D, T, T) [b, (h, c), j, i]
                self.A_parts.permute(0, 3, 1, 2, 4, 5).reshape(H * D, T, T, N, N),
                self.b_parts.permute(0, 3, 1, 2, 4).reshape(H * D, T, T, N),
                self.c_parts.permute(0, 3, 1, 2).reshape(H * D, T, T), x_tilde)
            parts = parts.view(-1, H, D, T, T).permute(0, 1, 3, 4, 2)  # (B, H, T, T, D)
            g = self._output_gate(x_tilde)  # (B, H, T, D) of token t
            g = g[:, :, :, None, :] if pos == "G4" else g[:, :, None, :, :]
            quad = (g * parts).sum(-1)
            return (quad if scale is None else quad * scale) + self.score_offset
        logits = self._quadratic(self.A, self.b, self.c, x_tilde)
        if pos not in ("G3", "G4") and scale is None:
            return logits
        quad = logits - self.score_offset
        if pos in ("G3", "G4"):  # headwise: one weight on the whole quadratic logit
            g = self._output_gate(x_tilde)  # (B, H, T, 1)
            g = g if pos == "G4" else g.transpose(-1, -2)  # [.., j, 1] or [.., 1, i]
            quad = g * quad
        return (quad if scale is None else quad * scale) + self.score_offset

    @staticmethod
    def _quadratic(A: Tensor, b: Tensor, c: Tensor, x_tilde: Tensor) -> Tensor:
        """``x~^T A x~ + b^T x~ + c`` ``(B, G, T, T)`` for ``A`` ``(G, T, T, N, N)`` by
        :mod:`attnmoe.moe`'s quadratic gate (replicates ``(g, j)``, experts ``i``)."""
        G, T, _, N = b.shape
        Bn = x_tilde.shape[0]
        gate = make_gate("polynomial" if bool((b != 0).any()) else "monomial", N)
        params = {
            "A": A.reshape(G * T, T, N, N),  # (R, k, N, N)
            "b": b.reshape(G * T, T, N),  # (R, k, N)
            "c": c.reshape(G * T, T),  # (R, k)
        }
        xr = x_tilde.unsqueeze(0).expand(G * T, Bn, N)  # (R, n, N)
        logits = gate.logits(params, xr)  # (R, n, k) = (G*T, B, T)
        return logits.view(G, T, Bn, T).permute(2, 0, 1, 3)  # (B, G, T, T)

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
        return torch.sigmoid(z)  # (B, H, T, Dg); G5: (B, 1, T, C)

    def __call__(self, x_tilde: Tensor | None = None) -> Tensor:
        """Per-head outputs ``y_j`` ``(B, H, T, D)`` (the input of ``out_proj``, after G1);
        default input: the stored ``x_tilde``."""
        x_tilde = self.x_tilde if x_tilde is None else x_tilde
        y = torch.einsum("bhji,bhid->bhjd", self.gate_weights(x_tilde), self.experts(x_tilde))
        if self.output_gate_position == "G1":
            y = y * self._output_gate(x_tilde)  # outer gate of query j's mixture
        return y  # (B, H, T, D)

    def output(self, x_tilde: Tensor | None = None) -> Tensor:
        """The layer's output ``(B, T, C)``: the outer level over heads (module docstring).

        ``o_jm = [sigmoid G5 gate_jm *] (sum_h sum_c W_O[m, (h, c)] y^(h)_jc + b_O[m])``.
        """
        if self.out_weight is None or self.out_bias is None:
            raise ValueError("this AttentionMoE has no outer level (built without out_proj)")
        x_tilde = self.x_tilde if x_tilde is None else x_tilde
        o = torch.einsum("bhtd,hdm->btm", self(x_tilde), self.out_weight) + self.out_bias
        if self.output_gate_position == "G5":
            o = o * self._output_gate(x_tilde)[:, 0]  # (B, T, C)
        return o


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
        equal to the layer's per-head outputs (the input of ``out_proj``) up to rounding;
        its :meth:`~AttentionMoE.output` returns the layer's output ``(B, T, dim)``.

    Raises:
        TypeError: ``layer`` is not an ``Attention``.
        ValueError: a cross-attention layer (``context_dim``), bad input shape, or a rewrite
            too large to hold densely.
    """
    if not isinstance(layer, Attention):
        raise TypeError(f"as_moe needs an attnmoe.attention.Attention, got {type(layer).__name__}")
    if layer.context_dim is not None:
        raise ValueError("as_moe rewrites self-attention; this layer has a context_dim")
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
    parts = layer.output_gate in ("G3", "G4") and layer.output_gate_granularity == "elementwise"
    size = H * T * T * N * N * (D + 1 if parts else 1)  # + the D rank-one components
    if size > MAX_DENSE_ELEMENTS:
        raise ValueError(
            f"dense rewrite needs {size:.3g} entries (H*T^2*N^2{' * (D+1)' if parts else ''}; "
            f"> {MAX_DENSE_ELEMENTS:.0e}); use a shorter sequence or a smaller layer"
        )
    dt, dev = x.dtype, x.device
    scale = 1.0 / math.sqrt(D)
    kv_of = torch.arange(H) // (H // layer.kv_heads)  # key/value head read by query head h

    def cols(lin: torch.nn.Linear, heads: int) -> tuple[Tensor, Tensor]:
        """Column-convention weight ``(dim, heads, Dh)``, bias ``(heads, Dh)`` (zeros if absent)."""
        w = lin.weight.detach().to(dt).T.reshape(C, heads, -1)
        b = lin.bias.detach().to(dt) if lin.bias is not None else w.new_zeros(lin.out_features)
        return w, b.reshape(heads, -1)

    Wq, bq = cols(layer.q_proj, H)  # (C, H, D), (H, D)
    Wk, bk = (t[:, kv_of] if t.dim() == 3 else t[kv_of] for t in cols(layer.k_proj, layer.kv_heads))
    Wv, bv = (t[:, kv_of] if t.dim() == 3 else t[kv_of] for t in cols(layer.v_proj, layer.kv_heads))
    # q/k norm weight and RoPE rotation after the projection: q~_t = R_t diag(w_q) q_t / rms(q_t)
    eye = torch.eye(D, dtype=dt, device=dev)
    rot = eye.expand(T, D, D)
    if layer.rope is not None:
        cos, sin = layer.rotary(T, 0, None, dtype=dt)  # (1, 1, T, D)
        rot = rotation_matrices(cos[0, 0], sin[0, 0])  # (T, D, D)
    wq = layer.q_norm.weight.detach().to(dt) if layer.q_norm is not None else eye.new_ones(D)
    wk = layer.k_norm.weight.detach().to(dt) if layer.k_norm is not None else eye.new_ones(D)
    Mq, Mk = rot * wq, rot * wk  # (T, D, D): R_t diag(w)

    def rotated(W: Tensor, bias: Tensor, M: Tensor) -> tuple[Tensor, Tensor]:
        """``U`` ``(T, N, D)`` (block t = W M_t^T) and ``u`` ``(T, D)`` = M_t bias: the rotated,
        norm-weighted coordinates of one head are ``U_t^T x~ + u_t`` (before 1/rms)."""
        blocks = torch.einsum("cd,ted->tce", W, M)  # (T, C, D)
        U = W.new_zeros(T, T, C, D)
        idx = torch.arange(T)
        U[idx, idx] = blocks
        return U.reshape(T, N, D), M @ bias

    parts = layer.output_gate in ("G3", "G4") and layer.output_gate_granularity == "elementwise"
    A_list, b_list, c_list, ew_list, ap, bp, cp = [], [], [], [], [], [], []
    for h in range(H):  # builds parameters once; H is small and this is not a hot path
        Uq, uq = rotated(Wq[:, h], bq[h], Mq)  # (T, N, D), (T, D) [query position j]
        Uk, uk = rotated(Wk[:, h], bk[h], Mk)  # [key position i]
        A_list.append(torch.einsum("jnd,imd->jinm", Uq, Uk) * scale)  # (T, T, N, N)
        b_jic = Uk[None] * uq[:, None, None, :] + Uq[:, None] * uk[None, :, None, :]  # (T,T,N,D)
        b_list.append(b_jic.sum(-1) * scale)  # (T, T, N): P_i^T W_K M^T u_q + P_j^T W_Q M u_k
        c_list.append(uq @ uk.T * scale)  # (T, T) [j, i]
        ew_list.append(_selection_blocks(Wv[:, h], T))  # (T, N, D)
        if parts:  # elementwise G3/G4: keep the D rank-one components of A, b, c apart
            ap.append(torch.einsum("jnd,imd->jidnm", Uq, Uk) * scale)  # (T, T, D, N, N)
            bp.append(b_jic.transpose(-1, -2) * scale)  # (T, T, D, N)
            cp.append(uq[:, None, :] * uk[None, :, :] * scale)  # (T, T, D)
    A = torch.stack(A_list)  # (H, T, T, N, N)
    b = torch.stack(b_list)  # (H, T, T, N)
    offset = layer._sigmoid_bias_value(T) if layer.score == "sigmoid" else 0.0
    c = torch.stack(c_list) + offset  # (H, T, T)
    A_parts = b_parts = c_parts = None
    if parts:
        A_parts, b_parts, c_parts = torch.stack(ap), torch.stack(bp), torch.stack(cp)
    norm = None
    if layer.qk_norm:  # raw (pre-norm) q/k of every head and position, for 1/rms
        norm = _NormScale(
            torch.stack([_selection_blocks(Wq[:, h], T) for h in range(H)]), bq,
            torch.stack([_selection_blocks(Wk[:, h], T) for h in range(H)]), bk,
            float(layer.q_norm.eps), float(layer.k_norm.eps),
        )

    allowed = torch.ones(1, T, T, dtype=torch.bool, device=dev)
    if layer.causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, :]  # (B, T, T)

    gate_weight = gate_bias = None
    if layer.output_gate == "G5":  # one gate per output coordinate, over all heads
        wg = layer.output_gate_proj.weight.detach().to(dt).T  # (C, C)
        bg = layer.output_gate_proj.bias
        gate_weight = _selection_blocks(wg, T).unsqueeze(0)  # (1, T, N, C)
        gate_bias = (bg.detach().to(dt) if bg is not None else wg.new_zeros(C)).unsqueeze(0)
    elif layer.output_gate_proj is not None:
        key_side = layer.output_gate in ("G2", "G3")  # these gate key/value heads
        Wg, bg = cols(layer.output_gate_proj, layer.kv_heads if key_side else H)
        if key_side:
            Wg, bg = Wg[:, kv_of], bg[kv_of]  # (C, H, Dg), (H, Dg) per query head
        gate_weight = torch.stack([_selection_blocks(Wg[:, h], T) for h in range(H)])
        # gate_weight: (H, T, N, Dg)
        gate_bias = bg
    wo = layer.out_proj.weight.detach().to(dt)  # (C_out, C_in), o = y wo^T + b_O
    out_weight = wo.T.reshape(H, D, C)  # (H, D, C): [h, c, m] = W_O[m, (h, c)]
    out_bias = (layer.out_proj.bias.detach().to(dt) if layer.out_proj.bias is not None
                else wo.new_zeros(C))

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
        out_weight=out_weight,
        out_bias=out_bias,
        score_offset=float(offset),
        A_parts=A_parts,
        b_parts=b_parts,
        c_parts=c_parts,
        norm=norm,
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
