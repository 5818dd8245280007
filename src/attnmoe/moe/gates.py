"""Gating functions of a mixture of experts, written functionally and batched over replicates.

A gate maps inputs ``x`` of shape ``(R, n, d)`` and per-expert parameters with leading shape
``(R, k, ...)`` to gating logits ``(R, n, k)``; the mixture turns logits into weights
(softmax or sigmoid, see :mod:`attnmoe.moe.mixture`). ``R`` indexes independent replicates
(independent fits, or query positions when an attention head is read as an MoE).

Gates (arXiv 2410.11222, Akbarian, Nguyen, Han, Ho, "Quadratic Gating Mixture of Experts"):

* ``"linear"``      g_i(x) = b_i^T x + c_i                    (linear softmax gate)
* ``"polynomial"``  g_i(x) = x^T A_i x + b_i^T x + c_i        (quadratic polynomial gate)
* ``"monomial"``    g_i(x) = x^T A_i x + c_i                  (quadratic monomial gate)

``A_i`` is accepted as any ``(d, d)`` matrix; only its symmetric part enters ``x^T A_i x``
(the estimation layer parametrises it as symmetric, see :mod:`attnmoe.moe.mixture`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["GATES", "Gate", "LinearGate", "MonomialGate", "PolynomialGate", "make_gate"]


def _check_x(x: Tensor, dim: int) -> None:
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"x must have shape (R, n, {dim}), got {tuple(x.shape)}")


def quadratic_form(A: Tensor, x: Tensor) -> Tensor:
    """x^T A_i x for every replicate r, sample j and expert i.

    Args:
        A: ``(R, k, d, d)`` matrices (need not be symmetric).
        x: ``(R, n, d)`` inputs.

    Returns:
        ``(R, n, k)`` tensor with entry ``[r, j, i] = x_rj^T A_ri x_rj``.
    """
    R, n, d = x.shape
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).reshape(R, n, d * d)  # (R, n, d*d)
    return torch.bmm(outer, A.reshape(R, -1, d * d).transpose(1, 2))  # (R, n, k)


class Gate(ABC):
    """A gating function ``g(x; params) -> logits``; stateless, parameters are passed in.

    Args:
        dim: input dimension ``d``.
    """

    name: ClassVar[str]
    #: names of the gating parameters; the estimation layer fixes them to zero for the reference expert
    param_names: ClassVar[tuple[str, ...]]

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter for ONE expert (the full tensor is ``(R, k, *shape)``)."""
        d = self.dim
        shapes = {"A": (d, d), "b": (d,), "c": ()}
        return {name: shapes[name] for name in self.param_names}

    @abstractmethod
    def logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Gating logits ``(R, n, k)`` for inputs ``x`` ``(R, n, d)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class LinearGate(Gate):
    """Linear softmax gate g_i(x) = b_i^T x + c_i; params ``b`` (R, k, d), ``c`` (R, k)."""

    name = "linear"
    param_names = ("b", "c")

    def logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        _check_x(x, self.dim)
        return torch.bmm(x, params["b"].transpose(1, 2)) + params["c"].unsqueeze(1)  # (R, n, k)


class PolynomialGate(Gate):
    """Quadratic polynomial gate g_i(x) = x^T A_i x + b_i^T x + c_i (arXiv 2410.11222).

    Params ``A`` (R, k, d, d), ``b`` (R, k, d), ``c`` (R, k).
    """

    name = "polynomial"
    param_names = ("A", "b", "c")

    def logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        _check_x(x, self.dim)
        lin = torch.bmm(x, params["b"].transpose(1, 2))  # (R, n, k)
        return quadratic_form(params["A"], x) + lin + params["c"].unsqueeze(1)


class MonomialGate(Gate):
    """Quadratic monomial gate g_i(x) = x^T A_i x + c_i (arXiv 2410.11222).

    Params ``A`` (R, k, d, d), ``c`` (R, k).
    """

    name = "monomial"
    param_names = ("A", "c")

    def logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        _check_x(x, self.dim)
        return quadratic_form(params["A"], x) + params["c"].unsqueeze(1)  # (R, n, k)


GATES: dict[str, type[Gate]] = {g.name: g for g in (LinearGate, PolynomialGate, MonomialGate)}


def make_gate(name: str, dim: int) -> Gate:
    """Build a gate by name: one of ``"linear"``, ``"polynomial"``, ``"monomial"``."""
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; valid gates: {sorted(GATES)}")
    return GATES[name](dim)
