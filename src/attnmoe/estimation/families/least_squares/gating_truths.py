"""Named ground truths of the gating family (issue 11), looked up by :func:`~attnmoe.estimation.families.least_squares.truth.get_setting`.

Sigmoid vs softmax gating (arXiv 2405.13997, least squares, over-specified fits). The paper's
rates compare each gate on its own truth; a reviewer's caveat is that those truths differ. Here
both gates are also fitted to the SAME regression function and (up to rounding) the same data:

    f*(x) = sigmoid(b*^T x + c*) h(x; a*, alpha*)                         (one sigmoid-gated expert)
          = softmax_1(0, b*^T x + c*) h(x; a*, alpha*) + softmax_0(.) * 0  (two softmax experts,
                                                                          expert 0 the zero expert)

(h(x; 0, 0) = 0 for linear and GELU experts), so the sigmoid fit has k = 2 atoms for k* = 1 and
the softmax fit k = 3 atoms for k* = 2: both over-specified by one atom, which splits the one
gated expert. The two regimes of the paper: ``r1``, the over-fitted atom's gating slope b* != 0;
``r2``, b* = 0 (a constant gate). Names: ``sgate-<regime>-<expert>-<sig|soft>``.

Each gate on its own natural truth (:func:`sigmoid_gating_natural`): k* = 2 experts that are
both non-zero, fitted with k = 3 (the extra atom copies true atom 1, the over-fitted one):

    sigmoid:  f*(x) = sum_{i=0,1} sigmoid(b_i*^T x + c_i*) h(x; a_i*, alpha_i*)
    softmax:  f*(x) = sum_{i=0,1} softmax_i(0, b_1*^T x + c_1*) h(x; a_i*, alpha_i*)

with the same experts and the same gating (b_1*, c_1*) of the over-fitted atom; atom 0 has its
own gating (b_0*, c_0*) under sigmoid and the reference gating 0 under softmax. The two f* differ,
so the data differ too (same X and noise draws): this is the paper's comparison, the one the
reviewer's caveat is about. Names: ``sgate-nat-<regime>-<expert>-<sig|soft>``.

Cosine vs perturbed cosine router (arXiv 2405.14131), softmax: one truth's parameters
(k* = 2, d = 2, expert 0 the reference, fitted with k = 3) read through each router (each on
its own truth, since the two routers give different f for the same parameters), GELU
(strongly identifiable) and linear experts. Names: ``crouter-<gate>-<expert>``.

Sigmoid self-attention (arXiv 2502.00281): the quadratic polynomial gate of the core settings
(``polynomial-<expert>-over``, softmax) against the same true parameters under sigmoid weights
(``polynomial-sig-<expert>-over``), sigmoid (strongly identifiable) and linear experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from attnmoe.estimation.families.least_squares.truth import Setting, make_setting

__all__ = [
    "COSINE_ROUTER_SETTINGS",
    "GATING_SETTINGS",
    "SIGMOID_ATTENTION_SETTINGS",
    "SIGMOID_GATING_NATURAL_SETTINGS",
    "SIGMOID_GATING_SETTINGS",
    "sigmoid_gating_natural",
    "sigmoid_gating_pair",
]

#: the gated expert of the sigmoid-gating truths (d = 2); regime 2 zeroes the slope b
_GATED = {"b": np.array([1.0, -0.8]), "c": 0.3, "a": np.array([0.7, -0.5]), "alpha": 0.5}


def sigmoid_gating_pair(regime: str, expert: str) -> tuple[Setting, Setting]:
    """The sigmoid-gated truth and its softmax twin with the same f* (module docstring).

    Args:
        regime: ``"r1"`` (slope b* != 0) or ``"r2"`` (b* = 0).
        expert: an expert with h(x; 0, 0) = 0 (``"linear"``, ``"gelu"``, ``"relu"``).
    """
    if regime not in ("r1", "r2"):
        raise ValueError(f"unknown regime {regime!r}; valid: r1, r2")
    if expert not in ("linear", "gelu", "relu"):
        raise ValueError(f"expert {expert!r} has h(x; 0, 0) != 0: no softmax twin; use linear, gelu or relu")
    b = _GATED["b"] * (1.0 if regime == "r1" else 0.0)
    sig = make_setting(
        "linear", expert, 1, 2, 2, normalization="sigmoid", name=f"sgate-{regime}-{expert}-sig",
        params={"b": b[None], "c": np.array([_GATED["c"]]), "a": _GATED["a"][None],
                "alpha": np.array([_GATED["alpha"]])},
    )
    soft = make_setting(
        "linear", expert, 2, 3, 2, name=f"sgate-{regime}-{expert}-soft",
        params={"b": np.stack([np.zeros(2), b]), "c": np.array([0.0, _GATED["c"]]),
                "a": np.stack([np.zeros(2), _GATED["a"]]), "alpha": np.array([0.0, _GATED["alpha"]])},
    )
    return sig, soft


SIGMOID_GATING_SETTINGS: Mapping[str, Setting] = MappingProxyType(
    {s.name: s for regime in ("r1", "r2") for expert in ("linear", "gelu")
     for s in sigmoid_gating_pair(regime, expert)}
)

#: atom 0 of the natural truths: its own gating under sigmoid (reference 0 under softmax), its expert
_NATURAL0 = {"b": np.array([-0.6, 0.5]), "c": 0.1, "a": np.array([-0.4, 0.9]), "alpha": -0.3}


def sigmoid_gating_natural(regime: str, expert: str) -> tuple[Setting, Setting]:
    """Sigmoid and softmax gating, each on its own natural k* = 2 truth (module docstring).

    Args:
        regime: ``"r1"`` (the over-fitted atom's slope b_1* != 0) or ``"r2"`` (b_1* = 0).
        expert: any expert of the registry (both experts are non-zero here).
    """
    if regime not in ("r1", "r2"):
        raise ValueError(f"unknown regime {regime!r}; valid: r1, r2")
    b1 = _GATED["b"] * (1.0 if regime == "r1" else 0.0)
    experts = {"a": np.stack([_NATURAL0["a"], _GATED["a"]]),
               "alpha": np.array([_NATURAL0["alpha"], _GATED["alpha"]])}
    sig = make_setting(
        "linear", expert, 2, 3, 2, normalization="sigmoid", name=f"sgate-nat-{regime}-{expert}-sig",
        params={"b": np.stack([_NATURAL0["b"], b1]), "c": np.array([_NATURAL0["c"], _GATED["c"]]), **experts},
    )
    soft = make_setting(
        "linear", expert, 2, 3, 2, name=f"sgate-nat-{regime}-{expert}-soft",
        params={"b": np.stack([np.zeros(2), b1]), "c": np.array([0.0, _GATED["c"]]), **experts},
    )
    return sig, soft


SIGMOID_GATING_NATURAL_SETTINGS: Mapping[str, Setting] = MappingProxyType(
    {s.name: s for regime in ("r1", "r2") for expert in ("linear", "gelu")
     for s in sigmoid_gating_natural(regime, expert)}
)

#: the cosine-router truth's parameters (k* = 2, d = 2; expert 0 the softmax reference)
_COSINE = {"b": np.array([[0.0, 0.0], [1.0, -0.5]]), "c": np.array([0.0, 0.2]),
           "a": np.array([[0.6, -0.3], [-0.5, 0.8]]), "alpha": np.array([0.4, -0.6])}

COSINE_ROUTER_SETTINGS: Mapping[str, Setting] = MappingProxyType(
    {f"crouter-{gate}-{expert}": make_setting(gate, expert, 2, 3, 2, params=_COSINE,
                                              name=f"crouter-{gate}-{expert}")
     for expert in ("gelu", "linear") for gate in ("cosine", "perturbed-cosine")}
)


def _sigmoid_attention() -> dict[str, Setting]:
    from attnmoe.estimation.families.least_squares.truth import CORE_SETTINGS

    out = {}
    for expert in ("sigmoid", "linear"):
        soft = CORE_SETTINGS[f"polynomial-{expert}-over"]
        sig = make_setting("polynomial", expert, soft.k_true, soft.k_fit, soft.dim, params=soft.params,
                           normalization="sigmoid")
        out.update({soft.name: soft, sig.name: sig})
    return out


SIGMOID_ATTENTION_SETTINGS: Mapping[str, Setting] = MappingProxyType(_sigmoid_attention())

#: every named truth of the gating family
GATING_SETTINGS: Mapping[str, Setting] = MappingProxyType(
    {**SIGMOID_GATING_SETTINGS, **SIGMOID_GATING_NATURAL_SETTINGS, **COSINE_ROUTER_SETTINGS,
     **SIGMOID_ATTENTION_SETTINGS}
)
