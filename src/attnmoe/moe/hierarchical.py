"""A hierarchical (two-level) mixture of experts shaped like one output of multi-head attention.

arXiv 2602.01468 (Nguyen, Pham, Cao, Dinh, Nguyen, Ho, Rinaldo, *A Statistical Theory of Gated
Attention through the Lens of Hierarchical Mixture of Experts*) reads each entry of a
multi-head attention output as a hierarchical MoE: heads -> tokens -> experts. The full text
was not available to us; this family is our reading (docs/attention_as_moe.md, docs/hmoe.md).
One sample is a sequence ``X = (x_1, ..., x_T)`` of T tokens in R^d; the response is read at
the query token ``x_q = x_T`` (the last token, as a next-token or class-token read-out)::

    f(X) = sum_h  w_h(x_q)  sum_i  pi_hi(X)  E_h(x_i)                  # h = 1..H heads, i = 1..T
    pi_hi = softmax_i( s_hi(X) * l_hi ),   l_hi = x_q^T M_h x_i + u_h^T x_i     # inner level
    w_h = 1 ("sum") | softmax_h(beta_h^T x_q + beta0_h) | sigmoid(beta_h^T x_q + beta0_h)  # outer
    E_h(x) = a_h^T x + alpha_h ("linear") | sigma(a_h^T x + alpha_h) (activated, arXiv 2410.11222)
           | sigmoid(theta_h^T x + tau_h) (a_h^T x + alpha_h)           ("value-gated")
    s_hi = 1 | sigmoid(theta_h^T x_q + tau_h) ("query") | sigmoid(theta_h^T x_i + tau_h) ("key")

How an attention layer maps onto it (derivations in docs/attention_as_moe.md): M_h = W_Q W_K^T
/ sqrt(D) of head h, u_h = W_K b_Q / sqrt(D) (terms that depend on the query only cancel in the
softmax over tokens); one output coordinate m folds the head's value map and its slice of
out_proj into one expert, a_h = sum_c W_V[:, c] W_O[c, m]. Plain multi-head attention is the
outer level "sum" (the output projection's weights are constants, not a normalised gate);
Qiu et al.'s headwise gates (arXiv 2505.06708) are G1 = outer "sigmoid", G2 = "value-gated"
experts, G4 = score gate "query", G3 = score gate "key" (G3 exactly only without projection
biases: with them the key gate also multiplies query-only terms, which this family omits).

Everything is batched over replicates: parameters carry a leading ``R`` (natural dict, or the
flat ``(R, P)`` vector of :class:`HierarchicalLayout`), inputs are ``(R, n, T, d)``. The forward
pass keeps the sample axis last and contracts the small axes (d, T, H) by broadcast products and
sums (no batched matmul), so a replicate's numbers do not depend on the other replicates when
the sample axis is padded (see :mod:`attnmoe.estimation.families.least_squares.objective`'s PAD).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnmoe.moe.experts import EXPERT_ACTIVATIONS

__all__ = [
    "HMOE_EXPERTS",
    "OUTER_GATES",
    "SCORE_GATES",
    "HierarchicalLayout",
    "HierarchicalSpec",
    "hierarchical_forward",
    "tokens_last",
]

OUTER_GATES: tuple[str, ...] = ("sum", "softmax", "sigmoid")
SCORE_GATES: tuple[str | None, ...] = (None, "query", "key")
HMOE_EXPERTS: tuple[str, ...] = (*EXPERT_ACTIVATIONS, "value-gated")


@dataclass(frozen=True)
class HierarchicalSpec:
    """The structure of a hierarchical attention-shaped MoE (module docstring).

    Args:
        heads: number of heads H (outer experts).
        tokens: sequence length T (inner experts per head); the query is token T.
        dim: token dimension d.
        outer: outer level: "sum" (plain multi-head attention), "softmax" or "sigmoid" (G1).
        score_gate: None, "query" (G4) or "key" (G3): a sigmoid gate multiplying the logits.
        expert: "linear", an activation of ``EXPERT_ACTIVATIONS`` or "value-gated" (G2).
        key_bias: include the term u_h^T x_i in the inner logits.
        expert_bias: include alpha_h in the experts.
    """

    heads: int
    tokens: int
    dim: int
    outer: str = "sum"
    score_gate: str | None = None
    expert: str = "linear"
    key_bias: bool = False
    expert_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("heads", "tokens", "dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.outer not in OUTER_GATES:
            raise ValueError(f"unknown outer gate {self.outer!r}; choose one of {OUTER_GATES}")
        if self.score_gate not in SCORE_GATES:
            raise ValueError(f"unknown score gate {self.score_gate!r}; choose one of {SCORE_GATES}")
        if self.expert not in HMOE_EXPERTS:
            raise ValueError(f"unknown expert {self.expert!r}; choose one of {HMOE_EXPERTS}")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter for ONE head (full tensors are ``(R, H, *shape)``)."""
        d = self.dim
        shapes: dict[str, tuple[int, ...]] = {"M": (d, d)}
        if self.key_bias:
            shapes["u"] = (d,)
        if self.score_gate is not None:
            shapes.update(theta_s=(d,), tau_s=())
        if self.outer != "sum":
            shapes.update(beta=(d,), beta0=())
        shapes["a"] = (d,)
        if self.expert_bias:
            shapes["alpha"] = ()
        if self.expert == "value-gated":
            shapes.update(theta_v=(d,), tau_v=())
        return shapes

    @property
    def gate_keys(self) -> tuple[str, ...]:
        """Parameters of the gating functions (everything but the expert's a, alpha)."""
        return tuple(k for k in self.param_shapes() if k not in ("a", "alpha"))


def _lin(w: Tensor, x: Tensor) -> Tensor:
    """sum_p w[..., p] x[..., p, n] -> (..., n) for w ``(R, H, d)`` and x ``(R, 1|T, d, n)``."""
    return (w.unsqueeze(-1) * x).sum(-2)


def hierarchical_forward(spec: HierarchicalSpec, params: dict[str, Tensor], X: Tensor) -> Tensor:
    """f(X) for every replicate and sample, sample axis last.

    Args:
        spec: the structure.
        params: natural parameters, leading ``(R, H)`` (see :meth:`HierarchicalSpec.param_shapes`).
        X: tokens ``(R, T, d, n)`` (sample axis last; :func:`tokens_last` converts ``(R, n, T, d)``).

    Returns:
        ``(R, n)``.
    """
    R, T, d, n = X.shape
    if T != spec.tokens or d != spec.dim:
        raise ValueError(f"X must be (R, T={spec.tokens}, d={spec.dim}, n), got {tuple(X.shape)}")
    xq = X[:, T - 1]  # (R, d, n) query token
    Xh = X.unsqueeze(1)  # (R, 1, T, d, n)
    # z_h = M_h^T x_q: (R, H, d, n); l_hi = z_h . x_i: (R, H, T, n)
    z = (params["M"].unsqueeze(-1) * xq[:, None, :, None, :]).sum(2)  # (R, H, d, n)
    logits = (z.unsqueeze(2) * Xh).sum(3)  # (R, H, T, n)
    if spec.key_bias:
        logits = logits + (params["u"][:, :, None, :, None] * Xh).sum(3)
    if spec.score_gate == "query":
        s = torch.sigmoid(_lin(params["theta_s"], xq.unsqueeze(1)) + params["tau_s"].unsqueeze(-1))
        logits = logits * s.unsqueeze(2)  # (R, H, 1, n): one temperature per query
    elif spec.score_gate == "key":
        zs = (params["theta_s"][:, :, None, :, None] * Xh).sum(3)  # (R, H, T, n)
        logits = logits * torch.sigmoid(zs + params["tau_s"][:, :, None, None])
    pi = torch.softmax(logits, dim=2)  # over tokens
    ze = (params["a"][:, :, None, :, None] * Xh).sum(3)  # (R, H, T, n)
    if spec.expert_bias:
        ze = ze + params["alpha"][:, :, None, None]
    act = EXPERT_ACTIVATIONS.get(spec.expert)
    e = act(ze) if act is not None else ze
    if spec.expert == "value-gated":
        zv = (params["theta_v"][:, :, None, :, None] * Xh).sum(3)
        e = e * torch.sigmoid(zv + params["tau_v"][:, :, None, None])
    heads = (pi * e).sum(2)  # (R, H, n)
    if spec.outer != "sum":
        zo = _lin(params["beta"], xq.unsqueeze(1)) + params["beta0"].unsqueeze(-1)  # (R, H, n)
        w = torch.softmax(zo, dim=1) if spec.outer == "softmax" else torch.sigmoid(zo)
        heads = heads * w
    return heads.sum(1)  # (R, n)


def tokens_last(X: Tensor) -> Tensor:
    """``(R, n, T, d)`` -> ``(R, T, d, n)`` contiguous (the layout of :func:`hierarchical_forward`)."""
    return X.permute(0, 2, 3, 1).contiguous()


class HierarchicalLayout:
    """Free parameters of a :class:`HierarchicalSpec` as one flat vector per replicate ``(R, P)``.

    Order: each parameter of :meth:`HierarchicalSpec.param_shapes` in turn, all heads of one
    parameter together (head-major). With the "softmax" outer level, head 0's (beta, beta0) are
    fixed at zero (the softmax over heads is invariant to a common shift). No other symmetry is
    removed: permuting heads leaves f unchanged (losses match heads to true heads by cells).
    """

    def __init__(self, spec: HierarchicalSpec) -> None:
        self.spec = spec
        H = spec.heads
        self.blocks: list[tuple[str, int, int, tuple[int, ...]]] = []  # (name, start, heads, shape)
        start = 0
        for name, shape in spec.param_shapes().items():
            m = H - 1 if spec.outer == "softmax" and name in ("beta", "beta0") else H
            size = 1
            for s in shape:
                size *= s
            self.blocks.append((name, start, m, shape))
            start += m * size
        self.n_params = start

    def __repr__(self) -> str:
        return f"HierarchicalLayout({self.spec}, n_params={self.n_params})"

    def unpack(self, flat: Tensor) -> dict[str, Tensor]:
        """``(R, P)`` -> natural dict with leading ``(R, H)``; differentiable."""
        if flat.ndim != 2 or flat.shape[1] != self.n_params:
            raise ValueError(f"flat must be (R, {self.n_params}), got {tuple(flat.shape)}")
        R, H = flat.shape[0], self.spec.heads
        out: dict[str, Tensor] = {}
        for name, start, m, shape in self.blocks:
            size = 1
            for s in shape:
                size *= s
            block = flat[:, start : start + m * size].reshape(R, m, *shape)
            if m < H:
                block = torch.cat([block.new_zeros(R, H - m, *shape), block], dim=1)
            out[name] = block
        return out

    def pack(self, params: dict[str, Tensor]) -> Tensor:
        """Natural dict (leading ``(R, H)``) -> ``(R, P)`` (softmax outer: shifted so head 0's
        outer parameters are zero, which leaves f unchanged)."""
        pieces = []
        for name, _start, m, shape in self.blocks:
            if name not in params:
                raise ValueError(f"params is missing {name!r}")
            p = params[name]
            R = p.shape[0]
            if tuple(p.shape[1:]) != (self.spec.heads, *shape):
                raise ValueError(f"params[{name!r}] must be (R, {self.spec.heads}, *{shape}), got {tuple(p.shape)}")
            if m < self.spec.heads:
                p = (p - p[:, :1])[:, 1:]
            pieces.append(p.reshape(R, -1))
        return torch.cat(pieces, dim=1)

    def forward(self, flat: Tensor, X: Tensor) -> Tensor:
        """f ``(R, n)`` for free parameters ``(R, P)`` and tokens ``(R, n, T, d)``."""
        return hierarchical_forward(self.spec, self.unpack(flat), tokens_last(X))
