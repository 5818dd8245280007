"""Expert functions of a mixture of experts, functional and batched over replicates.

An expert maps inputs ``x`` ``(R, n, d)`` and per-expert parameters ``a`` ``(R, k, d)``,
``alpha`` ``(R, k)`` to expert outputs ``(R, n, k)``:

* ``"linear"``                          h(x; a, alpha) = a^T x + alpha
* ``"sigmoid"``/``"tanh"``/``"gelu"``/``"relu"``   h(x; a, alpha) = sigma(a^T x + alpha)

(arXiv 2410.11222: linear experts vs. non-linear, strongly identifiable experts; ReLU is not
differentiable at 0 and so falls outside the smoothness assumptions of that analysis.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EXPERTS", "EXPERT_ACTIVATIONS", "EXPERT_DERIVATIVES", "Expert", "make_expert"]

EXPERT_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "linear": None,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact (erf) GELU
    "relu": F.relu,
}
"""Expert non-linearity by name (None = linear); attention's value activations reuse these."""
EXPERTS = tuple(EXPERT_ACTIVATIONS)


def _linear(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return z, torch.ones_like(z), torch.zeros_like(z)


def _sigmoid(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    h = torch.sigmoid(z)
    dh = h * (1.0 - h)
    return h, dh, dh * (1.0 - 2.0 * h)


def _tanh(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    h = torch.tanh(z)
    dh = 1.0 - h * h
    return h, dh, -2.0 * h * dh


def _gelu(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact GELU z Phi(z); ' = Phi + z phi; '' = phi (2 - z^2)."""
    cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    return z * cdf, cdf + z * pdf, pdf * (2.0 - z * z)


def _relu(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.relu(z), (z > 0).to(z.dtype), torch.zeros_like(z)


EXPERT_DERIVATIVES: dict[str, Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]] = {
    "linear": _linear, "sigmoid": _sigmoid, "tanh": _tanh, "gelu": _gelu, "relu": _relu,
}
"""sigma(z), sigma'(z), sigma''(z) of each expert activation in closed form (the least-squares
objective's gradient and Hessian, :mod:`attnmoe.estimation.families.least_squares.objective`); a new expert adds its
activation above and its derivatives here (tests compare them with autograd)."""


class Expert:
    """Expert h(x; a, alpha) = sigma(a^T x + alpha) with sigma the identity for ``"linear"``.

    Args:
        name: one of ``"linear"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"relu"``.
    """

    param_names: tuple[str, ...] = ("a", "alpha")

    def __init__(self, name: str) -> None:
        if name not in EXPERT_ACTIVATIONS:
            raise ValueError(f"unknown expert {name!r}; valid experts: {list(EXPERTS)}")
        self.name = name
        self.activation = EXPERT_ACTIVATIONS[name]

    @staticmethod
    def param_shapes(dim: int) -> dict[str, tuple[int, ...]]:
        """Shape of each parameter for ONE expert (full tensors are ``(R, k, *shape)``)."""
        return {"a": (dim,), "alpha": ()}

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Expert outputs ``(R, n, k)`` for inputs ``x`` ``(R, n, d)``."""
        a = params["a"]
        if x.ndim != 3 or a.ndim != 3 or x.shape[-1] != a.shape[-1]:
            raise ValueError(
                f"x must be (R, n, d) and a (R, k, d) with the same d; got {tuple(x.shape)}, "
                f"{tuple(a.shape)}"
            )
        z = torch.bmm(x, a.transpose(1, 2)) + params["alpha"].unsqueeze(1)  # (R, n, k)
        return z if self.activation is None else self.activation(z)

    __call__ = forward

    def __repr__(self) -> str:
        return f"Expert({self.name!r})"


def make_expert(name: str) -> Expert:
    """Build an expert by name: ``"linear"``, ``"sigmoid"``, ``"tanh"``, ``"gelu"``, ``"relu"``."""
    return Expert(name)
