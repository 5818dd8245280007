"""Sample efficiency of gate positions: least squares on an attention-shaped hierarchical MoE.

arXiv 2602.01468 claims that an expert of gated attention (a sigmoid gate at the SDPA output,
G1, or on the value map, G2) is estimated from polynomially many samples, while ungated
multi-head attention needs exponentially many, and that G3/G4 (gates inside the score) do not
help. This module measures it on :mod:`attnmoe.moe.hierarchical`'s family (docs/hmoe.md):

* **Truth.** H* = 2 heads, T = 3 tokens of dimension d = 2, query = last token, fixed
  parameters (:data:`TRUTH`): bilinear inner gates ``M_h``, linear value-times-output experts
  ``a_h``, and one sigmoid gate ``(theta_h, tau_h)`` per head, placed at the position studied:
  none ("plain"), the outer level (G1), the value map (G2), the keys (G3) or the queries (G4),
  all headwise. Every position uses the SAME parameters, inputs ``x ~ N(0, I)`` and noise
  ``eps ~ N(0, 1)`` (numpy streams of :func:`~attnmoe.estimation.truth.derive_seed`: 0 training
  inputs, 4 training noise, 2 test inputs; nested in n: a seed's first n samples are the same
  for every n); ``y = f*_position(X) + sigma eps``. Each position's model is well specified.
* **Fits.** ``exact`` fits H = 2 heads, ``over`` fits H = 3 (true head 0 split in two).
  Least squares, trust-region Newton with the exact Hessian
  (:func:`~attnmoe.estimation.optim.trust_region`; Hessian by reverse-over-reverse autograd
  through the batched loss, :func:`~attnmoe.estimation.derivatives.batched_hessian`; study
  version 2 -- version 1 used vmapped ``torch.func`` Hessians, equal to 1e-16, 3.4-7.5x slower per call), converged when the Newton decrement is <= dtol * L / n.
  Two starts per replicate: ``near-truth`` (the truth, split for ``over``, + 0.1 N(0, 1)) gives
  the local error; ``displaced`` (``over``: the split copies' experts moved +-0.3 apart along
  their flat direction a_0 - a_2; ``exact``: the truth + 0.3 N(0, 1)) probes the width of the set
  of near-optimal fits.
* **Losses per level** (:func:`level_losses`; fitted heads assigned to the nearest true head by
  their gating parameters, Voronoi cells V_j; w_h = ||a_h|| / ||a*_j(h)||, the head's share of
  its cell's expert, plays the role of an atom's mass): ``inner`` = sum_h w_h ||M_h - M*_j(h)||_F
  (token level), ``outer`` / ``value_gate`` / ``score_gate`` = sum_h w_h ||(theta_h, tau_h) -
  (theta*, tau*)|| at the gated position, ``expert`` = sum_j ||sum_{h in V_j} a_h - a*_j|| (the heads of a cell
  are summed, so only the cell's total expert is identified), ``expert_spread`` = the largest
  ||a_h - mean_{V_j} a|| in a split cell (the position along the flat set), and ``L2`` =
  ||f - f*|| on 4000 test inputs. Records carry the near-truth start's losses, plus
  ``width_*``: the largest value over the near-best set (converged starts within sigma^2 / n of
  the best training loss).

Batch-position invariance: the sample axis is padded to a multiple of
:data:`~attnmoe.estimation.objective.PAD` and the model contracts its small axes without batched
matmuls, so a replicate's fit does not depend on the other replicates in its block (tests).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnmoe.estimation.derivatives import batched_hessian
from attnmoe.estimation.objective import padded
from attnmoe.estimation.optim import REASONS, trust_region
from attnmoe.estimation.study.engine import (
    StudyArgs,
    StudyPlan,
    StudyResult,
    StudySummary,
    near_best_set,
    run_plan,
)
from attnmoe.estimation.study.records import Record, jsonable
from attnmoe.estimation.study.registry import StudyPreset, register_preset
from attnmoe.estimation.study.summary import summarize_records
from attnmoe.estimation.truth import derive_seed
from attnmoe.moe.hierarchical import (
    HierarchicalLayout,
    HierarchicalSpec,
    hierarchical_forward,
    tokens_last,
)

__all__ = [
    "HMOE_PRESET",
    "POSITIONS",
    "TRUTH",
    "HMoEConfig",
    "HMoEObjective",
    "HMoESetting",
    "fit_block",
    "hmoe_settings",
    "level_losses",
    "hmoe_plan",
    "run_hmoe",
    "sample",
    "start_points",
    "true_params",
    "summarize",
]

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
_GATE_NAMES = {"outer": ("beta", "beta0"), "value_gate": ("theta_v", "tau_v"),
               "score_gate": ("theta_s", "tau_s")}


@dataclass(frozen=True)
class HMoEConfig:
    """Fit options of the study (one definition; recorded in ``study.json``).

    Args:
        sigma: noise standard deviation.
        near_truth: scale of the near-truth start's N(0, 1) perturbation.
        displaced: distance of the displaced start (see the module docstring).
        max_iter: trust-region iterations per fit.
        dtol: converged when the Newton decrement <= dtol * L / n.
        near_best: c of the near-best window c * sigma^2 / n.
        n_test: test inputs of the L2 error.
        block: replicate seeds fitted per batched call.
    """

    sigma: float = 0.1
    near_truth: float = 0.1
    displaced: float = 0.3
    max_iter: int = 500
    dtol: float = 1e-8
    near_best: float = 1.0
    n_test: int = 4000
    block: int = 8


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
        w, b = _GATE_NAMES[setting.level]
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


def _noise(n: int, seeds: Sequence[int]) -> Tensor:
    return torch.from_numpy(np.stack([np.random.default_rng(derive_seed(s, 4)).standard_normal(n) for s in seeds]))


class HMoEObjective:
    """Per-replicate mean squared error of the hierarchical family, with autograd derivatives.

    Callable as an :data:`~attnmoe.estimation.optim.Objective`; :meth:`hessian` gives
    ``(loss, grad, Hessian)`` by reverse-over-reverse autograd through the batched loss
    (:func:`~attnmoe.estimation.derivatives.batched_hessian`). The sample axis is padded to a multiple of PAD with
    zero-weight points (see :mod:`attnmoe.estimation.objective`).

    Args:
        layout: the fitted family's layout.
        X: ``(R, n, T, d)``; y: ``(R, n)``.
    """

    def __init__(self, layout: HierarchicalLayout, X: Tensor, y: Tensor) -> None:
        R, n = y.shape
        # MKL's batched eigh (inside trust_region) rounds an odd-sized matrix differently by its
        # position in the batch; an even number of optimised coordinates avoids that: one dummy
        # coordinate z with loss term z^2 (exactly 0 at z = 0, where it starts and stays)
        self.n_free = layout.n_params
        self.n_params = self.n_free + self.n_free % 2
        if X.shape[:2] != (R, n):
            raise ValueError(f"X must be (R, n, T, d) with (R, n) = {tuple(y.shape)}, got {tuple(X.shape)}")
        self.layout, self.n = layout, n
        pad = padded(n) - n
        self.X = tokens_last(torch.cat([X, X.new_zeros(R, pad, *X.shape[2:])], 1))  # (R, T, d, n_pad)
        self.y = torch.cat([y, y.new_zeros(R, pad)], 1)  # (R, n_pad)
        self.mask = torch.cat([y.new_ones(n), y.new_zeros(pad)])  # (n_pad,)

    def __call__(self, flat: Tensor, idx: Tensor | None = None) -> Tensor:
        """Losses ``(m,)`` for ``flat`` ``(m, n_params)`` (the model's free parameters, then the
        dummy coordinate when there is one)."""
        X, y = (self.X, self.y) if idx is None else (self.X[idx], self.y[idx])
        f = hierarchical_forward(self.layout.spec, self.layout.unpack(flat[:, : self.n_free]), X)
        dummy = flat[:, self.n_free :].square().sum(-1)
        return ((f - y) * self.mask).square().sum(-1) / self.n + dummy

    def extend(self, free: Tensor) -> Tensor:
        """``(m, P)`` model parameters -> ``(m, n_params)`` optimised coordinates (dummy = 0)."""
        return torch.cat([free, free.new_zeros(free.shape[0], self.n_params - self.n_free)], 1)

    def hessian(self, flat: Tensor, idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        return batched_hessian(lambda z: self(z, idx), flat)


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
        w, b = _GATE_NAMES[setting.level]
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


def _l2(setting: HMoESetting, flat: Tensor, seeds: Sequence[int], n_test: int) -> Tensor:
    Xt = tokens_last(sample(n_test, seeds, stream=2))
    f = hierarchical_forward(setting.spec(), HierarchicalLayout(setting.spec()).unpack(flat), Xt)
    truth = {k: v.expand(len(seeds), *v.shape[1:]) for k, v in true_params(setting).items()}
    return (f - hierarchical_forward(setting.spec(HEADS_TRUE), truth, Xt)).square().mean(-1).sqrt()


START_KINDS = ("near-truth", "displaced")


def fit_block(setting: HMoESetting, n: int, seeds: Sequence[int], cfg: HMoEConfig) -> list[Record]:
    """Fit replicate seeds ``seeds`` at sample size n from both starts; one record per seed."""
    t0 = time.perf_counter()
    R, S = len(seeds), len(START_KINDS)
    layout = HierarchicalLayout(setting.spec())
    X = sample(n, seeds)
    truth = {k: v.expand(R, *v.shape[1:]) for k, v in true_params(setting).items()}
    y = hierarchical_forward(setting.spec(HEADS_TRUE), truth, tokens_last(X)) + cfg.sigma * _noise(n, seeds)
    x0 = torch.cat([start_points(setting, seeds, k, cfg) for k in START_KINDS])  # (S*R, P)
    obj = HMoEObjective(layout, X.repeat(S, 1, 1, 1), y.repeat(S, 1))
    res = trust_region(obj.hessian, obj, obj.extend(x0), max_iter=cfg.max_iter, dtol=cfg.dtol / n)
    res.x = res.x[:, : layout.n_params]
    # losses one fit at a time (not a hot path): small reductions over (R, H, d) could round
    # differently with the block size, and a record must depend on its key only
    per = [level_losses(setting, layout.unpack(res.x[i : i + 1])) for i in range(S * R)]
    losses = {k: torch.cat([p[k] for p in per]) for k in per[0]}
    l2 = torch.cat([_l2(setting, res.x[i : i + 1], [seeds[i % R]], cfg.n_test) for i in range(S * R)])
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


@dataclass(frozen=True)
class _Size:
    n_grid: tuple[int, ...]
    replicates: int


QUICK = _Size((250, 1000, 4000), 8)
FULL = _Size((250, 500, 1000, 2000, 4000, 8000, 16000), 16)


def _config_dict(cfg: HMoEConfig) -> dict[str, Any]:
    return {"family": "hmoe", "version": 2, "fit": asdict(cfg),
            "truth": {"tokens": TOKENS, "dim": DIM, "heads": HEADS_TRUE, **TRUTH}}


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("slope") is None:
        return "–"
    return f"{entry['slope']:+.2f} [{entry['ci_low']:+.2f}, {entry['ci_high']:+.2f}]"


COLUMNS = ("expert", "inner", "gate", "L2", "expert_spread", "width_expert_spread")
#: the losses drawn in ``rates.png`` (log loss against log n, one colour per setting)
PLOTTED = ("expert", "inner", "L2", "width_expert_spread")


def summary_markdown(summary: dict[str, Any], settings: Sequence[HMoESetting]) -> str:
    """One row per setting: converged fraction, then slopes of log(loss) on log(n) [95% CI]."""
    lines = ["| setting | converged | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for s in settings:
        info = summary["settings"].get(s.name)
        if info is None:
            continue
        losses = info["losses"]
        cells = []
        for c in COLUMNS:
            key = s.level if c == "gate" else c
            cells.append(_fmt(losses.get(key)) if key else "–")
        lines.append(f"| {s.name} | {info['converged_fraction']:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Slopes of the mean log loss on log n, 95% seed-bootstrap CI; `gate` = the loss of "
                 "the level the gate sits at (outer G1, value_gate G2, score_gate G3/G4).")
    return "\n".join(lines)


def summarize(records: Sequence[Record], settings: Sequence[HMoESetting], cfg: HMoEConfig) -> StudySummary:
    """Seed-bootstrap slopes and convergence of ``records``, the study's configuration, the
    Markdown table, and the :data:`PLOTTED` losses for ``rates.png``."""
    summary = summarize_records(records)
    summary["config"] = _config_dict(cfg)
    return StudySummary(summary, summary_markdown(summary, settings) + "\n", plotted=lambda loss: loss in PLOTTED)


def hmoe_plan(args: StudyArgs, cfg: HMoEConfig | None = None,
              settings: Sequence[HMoESetting] | None = None) -> StudyPlan:
    """The plan of the ``hmoe`` preset under ``args``; one-line errors on bad input."""
    cfg = cfg or HMoEConfig()
    settings = list(settings or hmoe_settings())
    size = FULL if args.full else QUICK
    grid = tuple(args.n_grid or size.n_grid)
    reps = size.replicates if args.replicates is None else args.replicates
    if reps < 1:
        raise ValueError(f"--replicates must be >= 1, got {reps}")
    if args.device != "cpu":
        raise ValueError(f"--device {args.device}: the hmoe preset runs on the CPU only so far; the "
                         "least-squares presets take --device cuda")
    by_name = {s.name: s for s in settings}
    n_params = max(HierarchicalLayout(s.spec()).n_params for s in settings)
    if min(grid) < n_params:
        raise ValueError(f"every n must be >= {n_params} (free parameters of the largest fitted model), got {min(grid)}")
    return StudyPlan(
        name="hmoe", config=_config_dict(cfg), settings=[s.name for s in settings], grid=grid,
        seeds=[args.seed + i for i in range(reps)], fit=fit_block,
        split=lambda name, n, todo: [(by_name[name], n, todo[i : i + cfg.block], cfg)
                                     for i in range(0, len(todo), cfg.block)],
        summarize=lambda keep: summarize(keep, settings, cfg))


def run_hmoe(args: StudyArgs, cfg: HMoEConfig | None = None,
             settings: Sequence[HMoESetting] | None = None) -> StudyResult:
    """The ``hmoe`` preset through the one loop (:func:`~attnmoe.estimation.study.engine.run_plan`)."""
    args.check()
    return run_plan(args, hmoe_plan(args, cfg, settings))


HMOE_PRESET = register_preset(StudyPreset(
    "hmoe",
    "gate positions (plain, G1..G4) of an attention-shaped hierarchical MoE, exact and over-specified "
    "(arXiv 2602.01468; docs/hmoe.md)",
    hmoe_plan,
))
