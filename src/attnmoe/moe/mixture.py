"""The mixture of experts: gating weights times expert outputs, batched over replicates.

    f_G(x) = sum_{i=1..k} w_i(x) h(x; eta_i),    w(x) = softmax(g(x; theta_1..k))   ("softmax")
                                                  w_i(x) = sigmoid(g(x; theta_i))     ("sigmoid")

(arXiv 2410.11222 for the softmax form; the un-normalised sigmoid weights serve sigmoid-attention
readings, arXiv 2409.04431.) Every parameter tensor carries a leading replicate dimension ``R``
so that R independent models are one tensor program.

Two views of the parameters:

* the *natural* dict ``{"A": (R,k,d,d), "b": (R,k,d), "c": (R,k), "a": (R,k,d), "alpha": (R,k)}``
  (keys present depending on the gate) used by :func:`mixture_forward` and
  :class:`MixtureOfExperts`;
* the *free* flat vector ``(R, P)`` of :class:`ParameterLayout`, used by optimisers. Softmax
  gating is invariant to adding the same (A, b, c) to every expert, so the layout fixes the
  gating parameters of the reference expert 0 to zero, and stores each ``A_i`` as its upper
  triangle (only the symmetric part of ``A_i`` enters ``x^T A_i x``). Packing a natural dict
  applies exactly that translation and symmetrisation, so it never changes the function
  (for softmax weights).

The top-K sparse softmax (arXiv 2309.13850)

    TopK_i(u) = exp(u_i) 1[i in top_K(u)] / sum_{l in top_K(u)} exp(u_l)

is :func:`topk_log_weights` (log weights and the top-K mask, along a given expert axis) and
:func:`topk_softmax` (the weights); the likelihood mixtures (:mod:`attnmoe.estimation.families.likelihood`)
use them. :func:`mixture_forward` does not offer it as a normalisation (yet).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnmoe.moe.experts import Expert, make_expert
from attnmoe.moe.gates import Gate, make_gate

__all__ = [
    "NORMALIZATIONS",
    "MixtureOfExperts",
    "ParameterLayout",
    "mixture_forward",
    "topk_log_weights",
    "topk_softmax",
]

NORMALIZATIONS = ("softmax", "sigmoid")


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {list(NORMALIZATIONS)}")


def _topk_mask(u: Tensor, top_k: int | None, dim: int) -> Tensor | None:
    """Boolean top-K mask of ``u`` along ``dim``, or None when the gate is dense (None or K = k).

    Raises:
        ValueError: ``top_k`` not an int with 1 <= K <= k (k = ``u.shape[dim]``).
    """
    k = u.shape[dim]
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= k:
        raise ValueError(f"top-K needs an int 1 <= K <= k, got K={top_k!r} with k={k} experts")
    if top_k == k:
        return None
    idx = torch.topk(u, top_k, dim=dim).indices
    return torch.zeros_like(u, dtype=torch.bool).scatter(dim, idx, True)


def topk_log_weights(u: Tensor, top_k: int | None, dim: int = -1) -> tuple[Tensor, Tensor | None]:
    """Log top-K sparse softmax weights of logits ``u`` along the expert axis ``dim``, and the mask.

    log TopK_i(u) = u_i - log sum_{l in top_K(u)} exp(u_l) for i in top_K(u) (module docstring).
    Outside the top-K set the returned log weight is finite (the same formula) and the mask
    (True on the top-K set) removes the expert. With ``top_k`` None or K = k the gate is the dense
    softmax and the mask is None. The mask is a function of the logits' order only: derivatives
    are those of the current piece of a piecewise-smooth function (docs/likelihood.md).

    Args:
        u: logits, e.g. ``(k, n)`` with ``dim=0`` (likelihood) or ``(R, n, k)`` with ``dim=-1``.
        top_k: K, an int with 1 <= K <= k, or None (dense).
        dim: the expert axis.

    Returns:
        ``(log_weights, mask)``, both of ``u``'s shape (mask boolean, or None when dense).

    Raises:
        ValueError: K out of range.
    """
    mask = _topk_mask(u, top_k, dim)
    if mask is None:
        return u - torch.logsumexp(u, dim, keepdim=True), None
    lse = torch.logsumexp(torch.where(mask, u, -torch.inf), dim, keepdim=True)
    return u - lse, mask


def topk_softmax(u: Tensor, top_k: int | None, dim: int = -1) -> Tensor:
    """Top-K sparse softmax weights TopK(u) along ``dim`` (zero outside the top-K set; dense
    softmax for ``top_k`` None or K = k); arguments as :func:`topk_log_weights`."""
    mask = _topk_mask(u, top_k, dim)
    return torch.softmax(u if mask is None else torch.where(mask, u, -torch.inf), dim)


def mixture_forward(
    gate: Gate,
    expert: Expert,
    params: dict[str, Tensor],
    x: Tensor,
    normalization: str = "softmax",
) -> Tensor:
    """Evaluate f_G(x) = sum_i w_i(x) h(x; eta_i) for every replicate.

    Args:
        gate: gating function.
        expert: expert function.
        params: natural parameter dict with leading ``(R, k)`` (see module docstring).
        x: inputs ``(R, n, d)``.
        normalization: ``"softmax"`` (weights sum to one) or ``"sigmoid"`` (independent weights).

    Returns:
        ``(R, n)`` regression function values.
    """
    _check_normalization(normalization)
    logits = gate.logits(params, x)  # (R, n, k)
    if normalization == "softmax":
        # softmax over a short last dim is slow on CPU; over dim 1 of the (R, k, n) view it is ~5x faster
        weights = torch.softmax(logits.transpose(1, 2), dim=1).transpose(1, 2)  # (R, n, k)
    else:
        weights = torch.sigmoid(logits)
    return (weights * expert.forward(params, x)).sum(-1)  # (R, n)


def _resolve(gate: Gate | str, expert: Expert | str, dim: int) -> tuple[Gate, Expert]:
    g = make_gate(gate, dim) if isinstance(gate, str) else gate
    e = make_expert(expert) if isinstance(expert, str) else expert
    if not isinstance(g, Gate) or not isinstance(e, Expert):
        raise TypeError(f"gate/expert must be names or Gate/Expert objects, got {gate!r}, {expert!r}")
    if g.dim != dim:
        raise ValueError(f"gate dim {g.dim} != dim {dim}")
    return g, e


def _check_k(n_experts: int) -> None:
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
        raise ValueError(f"n_experts (k) must be an int >= 1, got {n_experts!r}")


class MixtureOfExperts(nn.Module):
    """A mixture of experts whose parameters carry a leading replicate dimension.

    Args:
        gate: gate name (``"linear"``, ``"polynomial"``, ``"monomial"``) or a :class:`Gate`.
        expert: expert name (``"linear"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"relu"``)
            or an :class:`Expert`.
        n_experts: number of experts ``k`` (>= 1).
        dim: input dimension ``d``.
        replicates: number ``R`` of independent models held as one tensor program.
        dtype: parameter dtype (float64 by default: the statistics need it).
        normalization: ``"softmax"`` or ``"sigmoid"`` gating weights.
        fix_reference: if True (default) expert 0's gating parameters are held at zero (they
            receive no gradient); with softmax weights this removes the translation invariance.
        generator: optional ``torch.Generator`` for the random initialisation.
    """

    def __init__(
        self,
        gate: Gate | str,
        expert: Expert | str,
        n_experts: int,
        dim: int,
        replicates: int = 1,
        dtype: torch.dtype = torch.float64,
        normalization: str = "softmax",
        fix_reference: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_k(n_experts)
        if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
            raise ValueError(f"replicates must be an int >= 1, got {replicates!r}")
        _check_normalization(normalization)
        self.gate, self.expert = _resolve(gate, expert, dim)
        self.n_experts, self.dim, self.replicates = n_experts, dim, replicates
        self.normalization, self.fix_reference = normalization, fix_reference
        shapes = {**self.gate.param_shapes(), **self.expert.param_shapes(dim)}
        self.params = nn.ParameterDict(
            {
                name: nn.Parameter(
                    torch.randn(replicates, n_experts, *shape, dtype=dtype, generator=generator)
                    / dim**0.5
                )
                for name, shape in shapes.items()
            }
        )
        mask = torch.ones(n_experts, dtype=dtype)
        if fix_reference:
            mask[0] = 0.0
        self.register_buffer("gate_mask", mask)

    def natural_params(self) -> dict[str, Tensor]:
        """Parameters as used in the forward pass (reference gating zeroed if fixed)."""
        out: dict[str, Tensor] = {}
        for name, p in self.params.items():
            if name in self.gate.param_names:
                p = p * self.gate_mask.view(1, -1, *([1] * (p.ndim - 2)))
            out[name] = p
        return out

    def forward(self, x: Tensor) -> Tensor:
        """f(x) for inputs ``x`` ``(R, n, d)`` -> ``(R, n)``."""
        return mixture_forward(self.gate, self.expert, self.natural_params(), x, self.normalization)


class ParameterLayout:
    """Free parameters of a k-expert MoE as one flat vector per replicate, ``(R, P)``.

    Order: for gating experts 1..k-1: A (upper triangle, d(d+1)/2 entries, row-major), b (d),
    c; then for experts 0..k-1: a (d), alpha. Expert 0's gating parameters are fixed at zero.

    Args:
        gate: gate name or :class:`Gate`.
        expert: expert name or :class:`Expert`.
        n_experts: number of experts ``k``.
        dim: input dimension ``d``.
        normalization: gating weights, ``"softmax"`` or ``"sigmoid"``. With ``"sigmoid"`` there
            is no translation invariance, so no reference expert is fixed.
    """

    def __init__(
        self,
        gate: Gate | str,
        expert: Expert | str,
        n_experts: int,
        dim: int,
        normalization: str = "softmax",
    ) -> None:
        _check_k(n_experts)
        _check_normalization(normalization)
        self.gate, self.expert = _resolve(gate, expert, dim)
        self.n_experts, self.dim, self.normalization = n_experts, dim, normalization
        k, d = n_experts, dim
        self.n_ref = 1 if normalization == "softmax" else 0  # experts with gating fixed at zero
        iu = torch.triu_indices(d, d)
        self.n_tri = iu.shape[1]
        # (d*d, n_tri) map from the upper triangle to the full symmetric matrix
        sym = torch.zeros(d * d, self.n_tri, dtype=torch.float64)
        sym[iu[0] * d + iu[1], torch.arange(self.n_tri)] = 1.0
        sym[iu[1] * d + iu[0], torch.arange(self.n_tri)] = 1.0
        self._sym, self._iu = sym, iu
        per = {"A": self.n_tri, "b": d, "c": 1, "a": d, "alpha": 1}
        self.blocks: list[tuple[str, int, int, int]] = []  # (name, start, experts, width)
        start = 0
        for name in self.gate.param_names:
            self.blocks.append((name, start, k - self.n_ref, per[name]))
            start += (k - self.n_ref) * per[name]
        for name in self.expert.param_names:
            self.blocks.append((name, start, k, per[name]))
            start += k * per[name]
        self.n_params = start

    def __repr__(self) -> str:
        return (
            f"ParameterLayout(gate={self.gate.name!r}, expert={self.expert.name!r}, "
            f"n_experts={self.n_experts}, dim={self.dim}, n_params={self.n_params})"
        )

    def check_sample_size(self, n: int, what: str | None = None) -> None:
        """The one sample-size check: least squares needs ``n >= n_params`` observations.

        With fewer observations than free parameters the least-squares problem has a continuum
        of exact fits, so no estimator (and no rate) is defined.

        Raises:
            ValueError: ``n < n_params``; the message names ``what`` (default: this layout).
        """
        if n < self.n_params:
            raise ValueError(
                f"n={n} is smaller than the number of free parameters ({self.n_params}) of "
                f"{what or repr(self)}; every n must be >= {self.n_params}"
            )

    def unpack(self, flat: Tensor) -> dict[str, Tensor]:
        """Flat ``(R, P)`` -> natural dict with leading ``(R, k)``; differentiable."""
        if flat.ndim != 2 or flat.shape[1] != self.n_params:
            raise ValueError(f"flat must be (R, {self.n_params}), got {tuple(flat.shape)}")
        R, k, d = flat.shape[0], self.n_experts, self.dim
        out: dict[str, Tensor] = {}
        for name, start, m, width in self.blocks:
            block = flat[:, start : start + m * width].reshape(R, m, width)  # (R, m, width)
            if name == "A":
                block = (block @ self._sym.to(flat).T).reshape(R, m, d, d)  # (R, m, d, d)
            elif name in ("c", "alpha"):  # one scalar per expert (not b or a when d = 1)
                block = block.squeeze(-1)  # (R, m)
            if m < k:  # prepend the reference expert's zero gating parameters
                block = torch.cat([block.new_zeros(R, k - m, *block.shape[2:]), block], dim=1)
            out[name] = block
        return out

    def pack(self, params: dict[str, Tensor]) -> Tensor:
        """Natural dict (leading ``(R, k)``) -> flat ``(R, P)``.

        With softmax weights the gating parameters are first translated so that expert 0's are
        zero, and each A is symmetrised: the represented function is unchanged.
        """
        missing = {b[0] for b in self.blocks} - set(params)
        if missing:
            raise ValueError(f"params is missing {sorted(missing)}")
        R = params["c" if "c" in params else "a"].shape[0]
        pieces = []
        for name, _start, m, width in self.blocks:
            p = params[name]
            if p.shape[:2] != (R, self.n_experts):
                raise ValueError(f"params[{name!r}] must have leading (R, k) = ({R}, {self.n_experts})")
            if name in self.gate.param_names and self.n_ref:
                p = p - p[:, :1]
            if name == "A":
                p = 0.5 * (p + p.transpose(-1, -2))
                p = p[..., self._iu[0], self._iu[1]]  # (R, k, n_tri)
            pieces.append(p[:, self.n_experts - m :].reshape(R, m * width))
        return torch.cat(pieces, dim=1)

    def forward(self, flat: Tensor, x: Tensor) -> Tensor:
        """f(x) ``(R, n)`` for free parameters ``flat`` ``(R, P)`` and inputs ``x`` ``(R, n, d)``."""
        return mixture_forward(self.gate, self.expert, self.unpack(flat), x, self.normalization)
