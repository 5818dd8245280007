"""Gating functions of a mixture of experts, written functionally and batched over replicates.

A gate maps inputs ``x`` of shape ``(R, n, d)`` and per-expert parameters with leading shape
``(R, k, ...)`` to gating logits ``(R, n, k)``; the mixture turns logits into weights
(softmax or sigmoid, see :mod:`attnmoe.moe.mixture`). ``R`` indexes independent replicates
(independent fits, or query positions when an attention head is read as an MoE).

Gates (arXiv 2410.11222, Akbarian, Nguyen, Han, Ho, "Quadratic Gating Mixture of Experts"):

* ``"linear"``      g_i(x) = b_i^T x + c_i                    (linear softmax gate)
* ``"polynomial"``  g_i(x) = x^T A_i x + b_i^T x + c_i        (quadratic polynomial gate)
* ``"monomial"``    g_i(x) = x^T A_i x + c_i                  (quadratic monomial gate)

Cosine routers (arXiv 2405.14131), then softmax or sigmoid like any gate:

* ``"cosine"``            g_i(x) = b_i^T x / (||b_i|| ||x||) + c_i              (tau = 0; X-MoE)
* ``"perturbed-cosine"``  g_i(x) = b_i^T x / ((||b_i|| + tau1)(||x|| + tau2)) + c_i

with tau1 = tau2 = :data:`PERTURBED_COSINE_TAU` = 0.1 by default (LibMoE's x / (||x|| + 0.1);
a coauthor's tutel fork uses 1e-4, which at our input scale ||x|| ~ 1 and fitted ||b_i|| ~ 1
differs from the plain cosine by ~1e-4 and so would not separate the two regimes at n <= 1e5:
docs/gating.md). A zero vector has cosine 0 (b_i = 0 or x = 0 gives the logit c_i: the
reference expert's fixed zero gating and the objective's zero padding points). The cosine
logits are not linear in the gating parameters, so these gates have no closed-form objective
(``closed_form = False``; :mod:`attnmoe.estimation.families.least_squares.autograd_objective`).

``A_i`` is accepted as any ``(d, d)`` matrix; only its symmetric part enters ``x^T A_i x``
(the estimation layer parametrises it as symmetric, see :mod:`attnmoe.moe.mixture`).

Score transforms and input maps of the likelihood mixtures (:mod:`attnmoe.estimation.families.likelihood`;
not :class:`Gate` classes: they act on the linear part lin_i = beta1_i^T x of one expert, and the
caller adds beta0_i), registered in :data:`LINEAR_SCORES` / :func:`make_linear_score`:

* ``"softmax"``      u_i = lin_i + beta0_i                       (standard softmax gate)
* ``"temperature"``  u_i = lin_i / tau + beta0_i                 (arXiv 2401.13875)
* ``"activation"``   u_i = tanh(lin_i) / tau + beta0_i           (arXiv 2401.13875)

(the placement of tau and of the activation is our choice, docs/likelihood.md), and in
:data:`INPUT_MAPS` / :func:`make_input_map` the fixed input map M of the modified softmax gate
softmax(beta1^T M(x) + beta0) (arXiv 2310.14188): ``"identity"`` (the standard gate) and
``"tanh"`` (bounded and injective; our choice of M). The top-K sparse softmax that normalises
these scores is :func:`attnmoe.moe.mixture.topk_log_weights`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

__all__ = [
    "GATES",
    "INPUT_MAPS",
    "LINEAR_SCORES",
    "PERTURBED_COSINE_TAU",
    "CosineGate",
    "Gate",
    "LinearGate",
    "MonomialGate",
    "PerturbedCosineGate",
    "PolynomialGate",
    "make_gate",
    "make_input_map",
    "register_gate",
    "make_linear_score",
]

#: tau1 = tau2 of the perturbed cosine router (module docstring)
PERTURBED_COSINE_TAU = 0.1


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
    #: logits linear in the parameters over fixed features: the closed-form objective applies
    closed_form: ClassVar[bool] = True
    #: softmax logits unchanged when the same gating parameters are added to every expert (so the
    #: Voronoi atoms are compared after that translation is removed)
    translation_invariant: ClassVar[bool] = True
    #: the logit depends on b_i only through its direction (atoms compare b_i / ||b_i||)
    direction_only: ClassVar[bool] = False

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


def _unit(v: Tensor, tau: float) -> Tensor:
    """v / (||v|| + tau) over the last dim, 0 where v = 0 (no 0/0, no NaN derivative).

    The norm of a zero vector is taken as 0 with zero first AND second derivatives (torch's
    ``vector_norm`` is computed on a placeholder there): its own second derivative at 0 is NaN,
    which made every Hessian through a cosine expert with b_i = 0 NaN. Elsewhere the values and
    derivatives are ``vector_norm``'s, bit for bit. At v = 0 the plain cosine (tau = 0) is not
    differentiable at all (v/||v|| has no limit); the perturbed one is C^1 with derivative I/tau.
    """
    zero = (v == 0).all(-1, keepdim=True)
    norm = torch.where(zero, 0.0, torch.linalg.vector_norm(torch.where(zero, 1.0, v), dim=-1, keepdim=True))
    denom = norm + tau
    return v / torch.where(denom > 0, denom, torch.ones_like(denom))


class CosineGate(Gate):
    """Cosine router g_i(x) = b_i^T x / ((||b_i|| + tau1)(||x|| + tau2)) + c_i (arXiv 2405.14131).

    Params ``b`` (R, k, d), ``c`` (R, k). The plain cosine router has tau1 = tau2 = 0.

    Args:
        dim: input dimension ``d``.
        tau1: perturbation of the parameter norm (>= 0).
        tau2: perturbation of the input norm (>= 0).
    """

    name = "cosine"
    param_names = ("b", "c")
    closed_form = False
    translation_invariant = False
    direction_only = True  # tau1 = 0: b_i / ||b_i|| alone enters
    default_tau: ClassVar[float] = 0.0

    def __init__(self, dim: int, tau1: float | None = None, tau2: float | None = None) -> None:
        super().__init__(dim)
        tau1 = self.default_tau if tau1 is None else tau1
        tau2 = self.default_tau if tau2 is None else tau2
        for label, tau in (("tau1", tau1), ("tau2", tau2)):
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (tau >= 0 and tau < float("inf")):
                raise ValueError(f"{label} must be a finite number >= 0, got {tau!r}")
        self.tau1, self.tau2 = float(tau1), float(tau2)

    def logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        _check_x(x, self.dim)
        xn = _unit(x, self.tau2)  # (R, n, d)
        bn = _unit(params["b"], self.tau1)  # (R, k, d)
        return torch.bmm(xn, bn.transpose(1, 2)) + params["c"].unsqueeze(1)  # (R, n, k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, tau1={self.tau1}, tau2={self.tau2})"


class PerturbedCosineGate(CosineGate):
    """The perturbed cosine router: :class:`CosineGate` with tau1 = tau2 = :data:`PERTURBED_COSINE_TAU`."""

    name = "perturbed-cosine"
    default_tau = PERTURBED_COSINE_TAU
    direction_only = False  # b_i / (||b_i|| + tau1) depends on the norm too


GATES: dict[str, type[Gate]] = {
    g.name: g for g in (LinearGate, PolynomialGate, MonomialGate, CosineGate, PerturbedCosineGate)
}


def register_gate(gate: type[Gate]) -> type[Gate]:
    """Add a :class:`Gate` subclass to :data:`GATES` under its ``name`` (usable as a class
    decorator): a new gate is one class, in its own file, that calls this. Everything downstream
    reads the class: the least-squares objective (closed form when ``closed_form``, autograd
    otherwise), the Voronoi losses (``translation_invariant``, ``direction_only``), the random
    truths and the CLI's ``--gates`` (docs/adding-a-paper.md)."""
    if not (isinstance(gate, type) and issubclass(gate, Gate)) or not isinstance(getattr(gate, "name", None), str):
        raise TypeError(f"register_gate takes a Gate subclass with a name, got {gate!r}")
    if gate.name in GATES and GATES[gate.name] is not gate:
        raise ValueError(f"gate {gate.name!r} is already registered")
    GATES[gate.name] = gate
    return gate


def make_gate(name: str, dim: int) -> Gate:
    """Build a gate by name: one of ``"linear"``, ``"polynomial"``, ``"monomial"``,
    ``"cosine"``, ``"perturbed-cosine"``."""
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; valid gates: {sorted(GATES)}")
    return GATES[name](dim)


#: a score transform ``(lin, tau) -> score`` of the linear part (tau None where unused)
LinearScore = Callable[[Tensor, Tensor | None], Tensor]
#: an input map ``x -> M(x)`` (element-wise)
InputMap = Callable[[Tensor], Tensor]


def softmax_score(lin: Tensor, tau: Tensor | None = None) -> Tensor:
    """Standard softmax gate score: lin (tau unused)."""
    return lin


def temperature_score(lin: Tensor, tau: Tensor | None) -> Tensor:
    """Temperature gate score lin / tau (arXiv 2401.13875; tau > 0, broadcast against lin)."""
    return lin / tau


def activation_score(lin: Tensor, tau: Tensor | None) -> Tensor:
    """Activation gate score tanh(lin) / tau (arXiv 2401.13875; our placement of tanh and tau)."""
    return torch.tanh(lin) / tau


#: score transforms of the linear part lin = beta1^T x, by gate name (module docstring)
LINEAR_SCORES: dict[str, LinearScore] = {
    "softmax": softmax_score,
    "temperature": temperature_score,
    "activation": activation_score,
}


def make_linear_score(name: str) -> LinearScore:
    """The score transform of gate ``name``: "softmax", "temperature" or "activation"."""
    if name not in LINEAR_SCORES:
        raise ValueError(f"unknown gate score {name!r}; valid gate scores: {list(LINEAR_SCORES)}")
    return LINEAR_SCORES[name]


def identity_map(x: Tensor) -> Tensor:
    """M(x) = x: the standard softmax gate."""
    return x


#: input maps M of the modified softmax gate softmax(beta1^T M(x) + beta0) (arXiv 2310.14188)
INPUT_MAPS: dict[str, InputMap] = {"identity": identity_map, "tanh": torch.tanh}


def make_input_map(name: str) -> InputMap:
    """The input map ``name``: ``"identity"`` (standard gate) or ``"tanh"`` (modified gate)."""
    if name not in INPUT_MAPS:
        raise ValueError(f"unknown input map {name!r}; valid input maps: {list(INPUT_MAPS)}")
    return INPUT_MAPS[name]
