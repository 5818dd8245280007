"""One cell of a convergence-rate study: sample, fit and score R replicates as one program.

``fit_and_score(setting, n, seeds, options)`` draws replicate r's training sample, starts and
test sample from ``seeds[r]`` alone, fits all replicates x starts in ONE batched least-squares
program, and returns one JSON-serialisable record per seed.

Protocol (docs/rates.md, "Protocol"). With S = ``options.starts`` starts per replicate:

* with several kinds of start (``near-truth:0.1+displaced:0.3``) each kind gets S starts and
  the record also keeps, per kind, the losses of that kind's best start (``D1@near-truth``,
  ``copy@displaced``, ...) and how many of its starts converged;
* the **best fit** is the converged start with the lowest training loss (the lowest overall
  when none converged; the record then says ``converged: false``). Its Voronoi losses D1, D2,
  mass, atom, its identifiability statistics (``split_cell_stats``: D11, copy, split_mass,
  gate, expert) and the L2 error of f are the record's ``losses``;
* the **near-best set** is the converged starts whose training loss is within
  ``near_best * sigma^2 / n`` of the best (sigma: the setting's noise). Its width is
  ``width_D11`` (the largest D11 over the set) and ``width_copy`` (the largest ``copy``); the
  smallest split mass fraction over the set is ``width_split_mass``. With S = 1 the set is the
  best fit itself.

Scores are computed one replicate at a time, so a record does not depend on its batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

from attnmoe.estimation.families.common import perturb_starts
from attnmoe.estimation.families.least_squares.fit import FitResult, fit_starts
from attnmoe.estimation.families.least_squares.init import make_starts, parse_inits
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.families.least_squares.truth import Setting, sample
from attnmoe.estimation.families.least_squares.voronoi import l2_error, split_cell_stats, voronoi_losses

__all__ = ["fit_and_score", "score_fits"]


def _num(v: torch.Tensor | float) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    x = float(v)
    return x if math.isfinite(x) else None


def score_fits(setting: Setting, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Voronoi losses and identifiability statistics ``(m,)`` of m fits, one fit at a time."""
    truth = setting.true_params()
    rows = []
    for r in range(next(iter(params.values())).shape[0]):
        one = {k: v[r : r + 1] for k, v in params.items()}
        nz = setting.normalization
        rows.append({**voronoi_losses(one, truth, normalization=nz, gate=setting.gate),
                     **split_cell_stats(one, truth, normalization=nz, gate=setting.gate)})
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


def fit_and_score(
    setting: Setting,
    n: int,
    seeds: Sequence[int],
    options: FitOptions | None = None,
) -> list[dict]:
    """Fit ``len(seeds)`` replicates of ``setting`` at sample size ``n``; one record per seed.

    Returns:
        ``[{"setting", "n", "seed", "losses": {...}, "converged", "reason", "iterations",
        "grad_max", "min_eig", "decrement", "at_bound", "train_loss", "starts", "converged_starts",
        "near_best", "seconds" (batch wall time / R)}, ...]`` (module docstring).
    """
    o = options if options is not None else FitOptions()
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a Setting, got {type(setting).__name__}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    layout = setting.fit_layout
    layout.check_sample_size(n, setting.name)
    start = time.perf_counter()
    specs = parse_inits(o.init)
    R, S = len(seeds), o.starts * len(specs)
    X, y = sample(setting, n, seeds)
    inits = torch.cat([make_starts(sp, layout, setting.true_params(), seeds, n, o.starts, X, y)
                       for sp in specs])  # (S, R, P), kind-major
    inits = perturb_starts(inits, seeds, o.perturb)
    if o.bound is not None:
        inits = inits.clamp(-0.99 * o.bound, 0.99 * o.bound)
    if o.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--device {o.device}: no GPU is visible to torch (torch.cuda.is_available() is False)")
    dev = torch.device(o.device)
    res = fit_starts(layout, X.to(dev), y.to(dev), inits.to(dev), method=o.method, max_iter=o.max_iter,
                     tol=o.tol, dtol=o.dtol, bound=o.bound, assembly=o.assembly).to("cpu")  # fit s * R + r: start s of replicate r
    scores = score_fits(setting, res.params)  # (S*R,) each
    window = o.near_best * setting.noise_std**2 / n
    records = []
    for r, seed in enumerate(seeds):
        rows = torch.arange(S) * R + r  # this replicate's fits
        best, near = _best_and_near(res, rows, window)
        one = res.select(best.view(1))
        losses = {k: _num(v[best]) for k, v in scores.items()}
        losses["L2"] = _num(l2_error(one.params, setting, o.n_test, [seed])[0])
        losses["width_D11"] = _num(scores["D11"][near].max())
        losses["width_copy"] = _num(scores["copy"][near].max())
        losses["width_split_mass"] = _num(scores["split_mass"][near].min())
        if setting.k_fit == setting.k_true:  # no cell can be split: no split statistics
            for key in ("copy", "split_mass", "width_copy", "width_split_mass"):
                losses.pop(key)
        by_kind: dict[str, int] = {}
        if len(specs) > 1:  # each kind's own best start: its local error, its split
            for k, sp in enumerate(specs):
                own = rows[k * o.starts : (k + 1) * o.starts]
                b_k, _ = _best_and_near(res, own, window)
                for key in ("D1", "D11", "copy", "split_mass"):
                    if key in losses:
                        losses[f"{key}@{sp.kind}"] = _num(scores[key][b_k])
                by_kind[sp.kind] = int(res.converged[own].sum())
        records.append({
            "setting": setting.name,
            "n": int(n),
            "seed": seed,
            "losses": losses,
            "converged": bool(res.converged[best]),
            "reason": res.reason[int(best)] if res.reason else None,
            "iterations": int(res.n_iter[best]),
            "grad_max": _num(res.grad_max[best]),
            "min_eig": None if res.min_eig is None else _num(res.min_eig[best]),
            "decrement": None if res.decrement is None else _num(res.decrement[best]),
            "at_bound": None if res.at_bound is None else int(res.at_bound[best]),
            "train_loss": _num(res.loss[best]),
            "starts": S,
            "converged_starts": int(res.converged[rows].sum()),
            **({"converged_starts_by_kind": by_kind} if by_kind else {}),
            "near_best": int(near.numel()),
        })
    seconds = (time.perf_counter() - start) / R
    for rec in records:
        rec["seconds"] = seconds
    return records


def _best_and_near(res: FitResult, rows: torch.Tensor, window: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the best fit among ``rows`` and the indices of the near-best set."""
    loss = torch.where(torch.isfinite(res.loss[rows]), res.loss[rows], torch.inf)
    conv = res.converged[rows]
    pool = torch.where(conv, loss, torch.inf) if bool(conv.any()) else loss
    b = int(pool.argmin())
    near = rows[conv & (loss <= loss[b] + window)]
    return rows[b], near if near.numel() else rows[b].view(1)
