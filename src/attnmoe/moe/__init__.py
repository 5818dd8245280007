"""attnmoe.moe: mixture-of-experts models (gates, experts, mixture), batched over replicates."""

from attnmoe.moe.experts import EXPERTS, Expert, make_expert
from attnmoe.moe.gates import (
    GATES,
    CosineGate,
    Gate,
    LinearGate,
    MonomialGate,
    PerturbedCosineGate,
    PolynomialGate,
    make_gate,
)
from attnmoe.moe.hierarchical import HierarchicalLayout, HierarchicalSpec, hierarchical_forward
from attnmoe.moe.mixture import NORMALIZATIONS, MixtureOfExperts, ParameterLayout, mixture_forward

__all__ = [
    "EXPERTS",
    "GATES",
    "CosineGate",
    "HierarchicalLayout",
    "HierarchicalSpec",
    "PerturbedCosineGate",
    "NORMALIZATIONS",
    "Expert",
    "Gate",
    "LinearGate",
    "MixtureOfExperts",
    "MonomialGate",
    "ParameterLayout",
    "PolynomialGate",
    "make_expert",
    "hierarchical_forward",
    "make_gate",
    "mixture_forward",
]
