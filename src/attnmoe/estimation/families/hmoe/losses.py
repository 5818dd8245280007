"""The hmoe family's losses per level of the hierarchy, and the L2 error of f (docs/hmoe.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attnmoe.estimation.families.hmoe.truth import DIM, GATE_NAMES, HEADS_TRUE, HMoESetting, sample, true_params
from attnmoe.moe.hierarchical import HierarchicalLayout, hierarchical_forward, tokens_last

__all__ = ["l2_error", "level_losses"]


def _cells(setting: HMoESetting, fitted: dict[str, Tensor], truth: dict[str, Tensor]) -> Tensor:
    """Index ``(R, H)`` of the nearest true head by gating parameters (M and the gate)."""
    keys = [k for k in fitted if k != "a"]
    R, H = fitted["M"].shape[:2]
    f = torch.cat([fitted[k].reshape(R, H, -1) for k in keys], -1)
    t = torch.cat([truth[k].reshape(1, HEADS_TRUE, -1).expand(R, -1, -1) for k in keys], -1)
    return torch.cdist(f, t).argmin(-1)


def level_losses(setting: HMoESetting, fitted: dict[str, Tensor]) -> dict[str, Tensor]:
    """Losses per level of the hierarchy ``(R,)`` each (module docstring)."""
    truth = {k: v.to(fitted["M"]) for k, v in true_params(setting).items()}
    cell = _cells(setting, fitted, truth)  # (R, H)
    R, H = cell.shape
    own = {k: truth[k][0][cell] for k in truth}  # (R, H, ...) the true head of each cell
    # weight of a fitted head: its expert's share ||a_h|| / ||a*_j|| (the analogue of an atom's
    # mass: a head with a zero expert does not enter f, and its gates are not identified)
    weight = fitted["a"].norm(dim=-1) / own["a"].norm(dim=-1)  # (R, H)
    out = {"inner": (weight * (fitted["M"] - own["M"]).flatten(2).norm(dim=-1)).sum(-1)}
    if setting.level is not None:
        w, b = GATE_NAMES[setting.level]
        diff = torch.cat([fitted[w] - own[w], (fitted[b] - own[b]).unsqueeze(-1)], -1)
        out[setting.level] = (weight * diff.norm(dim=-1)).sum(-1)
    onehot = torch.nn.functional.one_hot(cell, HEADS_TRUE).to(fitted["a"])  # (R, H, H*)
    total = torch.einsum("rhj,rhd->rjd", onehot, fitted["a"])  # (R, H*, d) summed experts
    out["expert"] = (total - truth["a"]).norm(dim=-1).sum(-1)
    count = onehot.sum(1)  # (R, H*)
    mean = total / count.clamp_min(1).unsqueeze(-1)
    spread = (fitted["a"] - mean.gather(1, cell.unsqueeze(-1).expand(-1, -1, DIM))).norm(dim=-1)
    split = count.gather(1, cell) > 1  # (R, H)
    if setting.heads_fit > HEADS_TRUE:
        out["expert_spread"] = torch.where(split, spread, 0.0).amax(-1)
    out["empty_cells"] = (count == 0).sum(-1).to(fitted["a"])
    return out


def l2_error(setting: HMoESetting, flat: Tensor, seeds: Sequence[int], n_test: int) -> Tensor:
    Xt = tokens_last(sample(n_test, seeds, stream=2))
    f = hierarchical_forward(setting.spec(), HierarchicalLayout(setting.spec()).unpack(flat), Xt)
    truth = {k: v.expand(len(seeds), *v.shape[1:]) for k, v in true_params(setting).items()}
    return (f - hierarchical_forward(setting.spec(HEADS_TRUE), truth, Xt)).square().mean(-1).sqrt()
