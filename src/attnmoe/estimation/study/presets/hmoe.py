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
  ``eps ~ N(0, 1)`` (numpy streams of :func:`~attnmoe.estimation.families.common.derive_seed`: 0 training
  inputs, 4 training noise, 2 test inputs; nested in n: a seed's first n samples are the same
  for every n); ``y = f*_position(X) + sigma eps``. Each position's model is well specified.
* **Fits.** ``exact`` fits H = 2 heads, ``over`` fits H = 3 (true head 0 split in two).
  Least squares, trust-region Newton with the exact Hessian
  (:func:`~attnmoe.estimation.solvers.optim.trust_region`; Hessian by reverse-over-reverse autograd
  through the batched loss, :func:`~attnmoe.estimation.solvers.derivatives.batched_hessian`; study
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
:data:`~attnmoe.estimation.families.common.PAD` and the model contracts its small axes without batched
matmuls, so a replicate's fit does not depend on the other replicates in its block (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from attnmoe.estimation.families.common import Record
from attnmoe.estimation.families.hmoe import DIM, HEADS_TRUE, TOKENS, TRUTH, HMoEConfig, HMoESetting, fit_block, hmoe_settings
from attnmoe.estimation.study.engine import StudyArgs, StudyPlan, StudyResult, StudySummary, choose_settings, run_plan
from attnmoe.estimation.study.registry import StudyPreset, register_preset
from attnmoe.estimation.study.summary import summarize_records
from attnmoe.moe.hierarchical import HierarchicalLayout

__all__ = ["FULL", "HMOE_PRESET", "QUICK", "hmoe_plan", "run_hmoe", "summarize", "summary_markdown"]


@dataclass(frozen=True)
class _Size:
    n_grid: tuple[int, ...]
    replicates: int


QUICK = _Size((250, 1000, 4000), 8)
FULL = _Size((250, 500, 1000, 2000, 4000, 8000, 16000), 16)


def _config_dict(cfg: HMoEConfig) -> dict[str, Any]:
    fit = asdict(cfg)
    if fit["perturb"] == 0.0:  # recorded only when used: studies written before it have no such field
        del fit["perturb"]
    return {"family": "hmoe", "version": 2, "fit": fit,
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
    if args.perturb:
        cfg = replace(cfg, perturb=args.perturb)
    settings = list(settings or hmoe_settings())
    config = _config_dict(cfg)
    if args.options.get("settings"):  # a subset (e.g. the cells of one claim's rule-7 refits), recorded
        chosen = choose_settings([s.name for s in settings], args.options["settings"])
        settings = [s for s in settings if s.name in chosen]
        config["settings"] = list(chosen)
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
        name="hmoe", config=config, settings=[s.name for s in settings], grid=grid,
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
    ("settings",),
))
