"""One cell of the hmoe study: fit a block of replicate seeds from both starts, one record each."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from attnmoe.estimation.families.common import Record, jsonable, near_best_set, perturb_starts
from attnmoe.estimation.families.hmoe.losses import l2_error, level_losses
from attnmoe.estimation.families.hmoe.objective import HMoEObjective
from attnmoe.estimation.families.hmoe.truth import HEADS_TRUE, START_KINDS, HMoEConfig, HMoESetting, noise, sample, start_points, true_params
from attnmoe.estimation.solvers.optim import REASONS, trust_region
from attnmoe.moe.hierarchical import HierarchicalLayout, hierarchical_forward, tokens_last

__all__ = ["fit_block"]


def fit_block(setting: HMoESetting, n: int, seeds: Sequence[int], cfg: HMoEConfig) -> list[Record]:
    """Fit replicate seeds ``seeds`` at sample size n from both starts; one record per seed."""
    t0 = time.perf_counter()
    R, S = len(seeds), len(START_KINDS)
    layout = HierarchicalLayout(setting.spec())
    X = sample(n, seeds)
    truth = {k: v.expand(R, *v.shape[1:]) for k, v in true_params(setting).items()}
    y = hierarchical_forward(setting.spec(HEADS_TRUE), truth, tokens_last(X)) + cfg.sigma * noise(n, seeds)
    x0 = torch.stack([start_points(setting, seeds, k, cfg) for k in START_KINDS])  # (S, R, P)
    x0 = perturb_starts(x0, seeds, cfg.perturb).flatten(0, 1)  # (S*R, P), kind-major
    obj = HMoEObjective(layout, X.repeat(S, 1, 1, 1), y.repeat(S, 1))
    res = trust_region(obj.hessian, obj, obj.extend(x0), max_iter=cfg.max_iter, dtol=cfg.dtol / n)
    res.x = res.x[:, : layout.n_params]
    # losses one fit at a time (not a hot path): small reductions over (R, H, d) could round
    # differently with the block size, and a record must depend on its key only
    per = [level_losses(setting, layout.unpack(res.x[i : i + 1])) for i in range(S * R)]
    losses = {k: torch.cat([p[k] for p in per]) for k in per[0]}
    l2 = torch.cat([l2_error(setting, res.x[i : i + 1], [seeds[i % R]], cfg.n_test) for i in range(S * R)])
    seconds = time.perf_counter() - t0
    records = []
    for r, seed in enumerate(seeds):
        idx = [s * R + r for s in range(S)]
        conv = [bool(res.converged[i]) for i in idx]
        train = [float(res.loss[i]) for i in idx]
        near = near_best_set(idx, res.loss, res.converged, cfg.near_best * cfg.sigma**2 / n)
        i0 = idx[0]  # near-truth start: the local error
        rec_losses = {k: float(v[i0]) for k, v in losses.items() if k != "empty_cells"}
        rec_losses["L2"] = float(l2[i0])
        for k, v in losses.items():
            if k in ("inner", "expert", "expert_spread") and near:
                rec_losses[f"width_{k}"] = max(float(v[i]) for i in near)
        records.append(jsonable({
            "setting": setting.name, "n": n, "seed": int(seed), "losses": rec_losses,
            "converged": conv[0], "iterations": int(res.n_iter[i0]),
            "reason": REASONS[int(res.reason[i0])], "train_loss": train[0],
            "grad_max": float(res.grad_max[i0]), "min_eig": float(res.min_eig[i0]),
            "decrement": float(res.decrement[i0]), "empty_cells": int(losses["empty_cells"][i0]),
            "starts": {k: {"converged": c, "train_loss": t} for k, c, t in zip(START_KINDS, conv, train)},
            "near_best": len(near), "seconds": seconds / R,
        }))
    return records
