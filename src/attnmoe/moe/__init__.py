"""attnmoe.moe: mixture-of-experts models (gates, experts, mixture), batched over replicates."""

from attnmoe.moe.experts import EXPERTS, Expert, make_expert
from attnmoe.moe.gates import (
    GATES,
    INPUT_MAPS,
    LINEAR_SCORES,
    CosineGate,
    Gate,
    LinearGate,
    MonomialGate,
    PerturbedCosineGate,
    PolynomialGate,
    make_gate,
    make_input_map,
    make_linear_score,
)
from attnmoe.moe.hierarchical import HierarchicalLayout, HierarchicalSpec, hierarchical_forward
from attnmoe.moe.mixture import (
    NORMALIZATIONS,
    MixtureOfExperts,
    ParameterLayout,
    mixture_forward,
    topk_log_weights,
    topk_softmax,
)

__all__ = [
    "EXPERTS",
    "GATES",
    "INPUT_MAPS",
    "LINEAR_SCORES",
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
    "make_input_map",
    "make_linear_score",
    "mixture_forward",
    "topk_log_weights",
    "topk_softmax",
]
