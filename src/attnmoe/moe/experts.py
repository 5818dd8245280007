"""Expert functions of a mixture of experts, functional and batched over replicates.

An expert maps inputs ``x`` ``(R, n, d)`` and per-expert parameters ``a`` ``(R, k, d)``,
``alpha`` ``(R, k)`` to expert outputs ``(R, n, k)``:

* ``"linear"``                          h(x; a, alpha) = a^T x + alpha
* ``"sigmoid"``/``"tanh"``/``"gelu"``/``"relu"``   h(x; a, alpha) = sigma(a^T x + alpha)

(arXiv 2410.11222: linear experts vs. non-linear, strongly identifiable experts; ReLU is not
differentiable at 0 and so falls outside the smoothness assumptions of that analysis.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EXPERTS", "EXPERT_ACTIVATIONS", "Expert", "make_expert"]

EXPERT_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "linear": None,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,  # exact (erf) GELU
    "relu": F.relu,
}
"""Expert non-linearity by name (None = linear); attention's value activations reuse these."""
EXPERTS = tuple(EXPERT_ACTIVATIONS)


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
