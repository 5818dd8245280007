"""The hmoe family's truth, settings, data and starts (arXiv 2602.01468; docs/hmoe.md).

H* = 2 heads, T = 3 tokens of dimension d = 2, query = last token, fixed parameters
(:data:`TRUTH`); the sigmoid gate ``(theta_h, tau_h)`` sits at the position studied
(:data:`POSITIONS`). Inputs ``x ~ N(0, I)`` and noise ``eps ~ N(0, 1)`` come from numpy streams of
:func:`~attnmoe.estimation.families.common.derive_seed` (0 training inputs, 4 training noise,
2 test inputs; nested in n). Starts: ``near-truth`` (the truth, split for ``over``, + 0.1 N(0, 1))
and ``displaced`` (module docstring of :mod:`attnmoe.estimation.study.presets.hmoe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmoe.estimation.families.common import derive_seed
from attnmoe.estimation.families.options import FIT_DEFAULTS
from attnmoe.moe.hierarchical import HierarchicalLayout, HierarchicalSpec

__all__ = ["DIM", "HEADS_TRUE", "POSITIONS", "START_KINDS", "TOKENS", "TRUTH", "HMoEConfig", "HMoESetting",
           "hmoe_settings", "noise", "sample", "start_points", "true_params"]

#: gate position -> (structure of the family, name of the gate's level in the losses)
POSITIONS: dict[str, tuple[dict[str, Any], str | None]] = {
    "plain": ({}, None),
    "G1": ({"outer": "sigmoid"}, "outer"),
    "G2": ({"expert": "value-gated"}, "value_gate"),
    "G3": ({"score_gate": "key"}, "score_gate"),
    "G4": ({"score_gate": "query"}, "score_gate"),
}

#: the true parameters (H* = 2 heads, d = 2); (theta, tau) is the gate at whatever position
TRUTH: dict[str, list] = {
    "M": [[[1.2, -0.4], [0.6, 0.9]], [[-0.9, 0.5], [-0.3, -1.1]]],
    "a": [[1.0, -0.6], [-0.5, 1.0]],
    "theta": [[1.0, -0.8], [-0.7, 0.9]],
    "tau": [0.5, -0.4],
}
TOKENS, DIM, HEADS_TRUE = 3, 2, 2
GATE_NAMES = {"outer": ("beta", "beta0"), "value_gate": ("theta_v", "tau_v"),
               "score_gate": ("theta_s", "tau_s")}

_DEFAULT = FIT_DEFAULTS["hmoe"]


@dataclass(frozen=True)
class HMoEConfig:
    """Fit options of the study (recorded in ``study.json``); defaults: the ``"hmoe"`` entry of
    the one table of fit defaults, :data:`attnmoe.estimation.families.options.FIT_DEFAULTS`.

    Args:
        sigma: noise standard deviation.
        near_truth: scale of the near-truth start's N(0, 1) perturbation.
        displaced: distance of the displaced start (see the module docstring).
        max_iter: trust-region iterations per fit.
        dtol: converged when the Newton decrement <= dtol * L / n.
        near_best: c of the near-best window c * sigma^2 / n.
        n_test: test inputs of the L2 error.
        block: replicate seeds fitted per batched call.
        perturb: every start moved by this relative amount at rounding level
            (:func:`~attnmoe.estimation.families.common.perturb_starts`; 0: off).
    """

    sigma: float = _DEFAULT["sigma"]
    near_truth: float = _DEFAULT["near_truth"]
    displaced: float = _DEFAULT["displaced"]
    max_iter: int = _DEFAULT["max_iter"]
    dtol: float = _DEFAULT["dtol"]
    near_best: float = _DEFAULT["near_best"]
    n_test: int = _DEFAULT["n_test"]
    block: int = _DEFAULT["block"]
    perturb: float = _DEFAULT["perturb"]


@dataclass(frozen=True)
class HMoESetting:
    """One position x specification: ``name = f"{position}-{exact|over}"``."""

    position: str
    heads_fit: int

    @property
    def name(self) -> str:
        return f"{self.position}-{'exact' if self.heads_fit == HEADS_TRUE else 'over'}"

    def spec(self, heads: int | None = None) -> HierarchicalSpec:
        return HierarchicalSpec(heads or self.heads_fit, TOKENS, DIM, **POSITIONS[self.position][0])

    @property
    def level(self) -> str | None:
        return POSITIONS[self.position][1]


def hmoe_settings(positions: Sequence[str] = tuple(POSITIONS), heads_fit: Sequence[int] = (2, 3)) -> list[HMoESetting]:
    """Every (position, fitted heads) pair."""
    for p in positions:
        if p not in POSITIONS:
            raise ValueError(f"unknown gate position {p!r}; choose among {list(POSITIONS)}")
    return [HMoESetting(p, h) for p in positions for h in heads_fit]


def true_params(setting: HMoESetting) -> dict[str, Tensor]:
    """The truth at the setting's position, natural form ``(1, H*, ...)``."""
    t = {k: torch.tensor(v, dtype=torch.float64).unsqueeze(0) for k, v in TRUTH.items()}
    out = {"M": t["M"], "a": t["a"]}
    if setting.level is not None:
        w, b = GATE_NAMES[setting.level]
        out[w], out[b] = t["theta"], t["tau"]
    return out


def _split_source(heads_fit: int) -> list[int]:
    """True head copied by each fitted head: the true heads, then copies of head 0."""
    return list(range(HEADS_TRUE)) + [0] * (heads_fit - HEADS_TRUE)


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def start_points(setting: HMoESetting, seeds: Sequence[int], kind: str, cfg: HMoEConfig) -> Tensor:
    """Free-parameter starts ``(R, P)`` of one kind (``near-truth`` or ``displaced``)."""
    layout = HierarchicalLayout(setting.spec())
    truth = true_params(setting)
    src = _split_source(setting.heads_fit)
    count = [src.count(j) for j in range(HEADS_TRUE)]
    split = {k: v[:, src].clone() for k, v in truth.items()}  # (1, H, ...)
    split["a"] = split["a"] / torch.tensor([count[j] for j in src], dtype=torch.float64)[None, :, None]
    base = layout.pack(split)[0]  # (P,)
    starts = []
    for s in seeds:
        x = base.clone()
        if kind == "near-truth" or setting.heads_fit == HEADS_TRUE:
            scale = cfg.near_truth if kind == "near-truth" else cfg.displaced
            x = x + scale * torch.randn(layout.n_params, generator=_generator(s, 1 if kind == "near-truth" else 3),
                                        dtype=torch.float64)
        else:  # copies 0 and H* of true head 0 moved apart along a_0 - a_{H*}
            v = torch.randn(DIM, generator=_generator(s, 3), dtype=torch.float64)
            v = cfg.displaced * v / v.norm()
            p = layout.unpack(x.unsqueeze(0))
            p["a"][0, 0] += v
            p["a"][0, HEADS_TRUE] -= v
            x = layout.pack(p)[0]
        starts.append(x)
    return torch.stack(starts)


def sample(n: int, seeds: Sequence[int], stream: int = 0) -> Tensor:
    """Token sequences ``(R, n, T, d)`` ~ N(0, I): seed s's first n draws of ``stream``."""
    return torch.from_numpy(np.stack([
        np.random.default_rng(derive_seed(s, stream)).standard_normal((n, TOKENS, DIM)) for s in seeds
    ]))


def noise(n: int, seeds: Sequence[int]) -> Tensor:
    return torch.from_numpy(np.stack([np.random.default_rng(derive_seed(s, 4)).standard_normal(n) for s in seeds]))


START_KINDS = ("near-truth", "displaced")
