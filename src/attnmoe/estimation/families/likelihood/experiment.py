"""One cell of a likelihood rate study: fit a block of replicate seeds from every start kind.

:data:`FIT_OPTIONS` are the fit options of every likelihood study (recorded in ``study.json`` by
:mod:`attnmoe.estimation.study.presets.likelihood`): the ``"likelihood"`` entry of the one table of
fit defaults, :data:`attnmoe.estimation.families.options.FIT_DEFAULTS`, and the start kinds
(:data:`~attnmoe.estimation.families.likelihood.settings.START_KINDS`).
"""

from __future__ import annotations

from typing import Any

import torch

from attnmoe.estimation.families.common import jsonable, near_best_set, perturb_starts
from attnmoe.estimation.families.likelihood.objective import fit_likelihood
from attnmoe.estimation.families.likelihood.settings import SETTINGS, START_KINDS, sample_data, start_points
from attnmoe.estimation.families.options import defaults

__all__ = ["FIT_OPTIONS", "fit_block"]

_DEFAULT = defaults("likelihood")

#: fit options of every likelihood study (recorded in study.json): the table's defaults and the
#: start kinds every cell fits from (keys in the order the first studies wrote them)
FIT_OPTIONS: dict[str, Any] = {"method": _DEFAULT["method"], "max_iter": _DEFAULT["max_iter"],
                               "dtol": _DEFAULT["dtol"], "starts": list(START_KINDS),
                               "near_best": _DEFAULT["near_best"]}


def fit_block(name: str, n: int, seeds: list[int], perturb: float = 0.0) -> list[dict[str, Any]]:
    """Fit the replicates ``seeds`` of setting ``name`` at size ``n`` from every start kind as one
    batched program and return their records (one per seed; each depends only on (name, n, seed)
    and ``perturb``, the rounding-level move of every start of
    :func:`~attnmoe.estimation.families.common.perturb_starts`).

    A record's ``losses`` are the near-truth fit's (the local error); ``width_<loss>`` is the
    largest value of that loss over the near-best set: the converged fits, of either start,
    whose mean NLL is within ``near_best / n`` of the best converged one (log-likelihood within
    ``near_best`` of the best; for a regular model the MLE's excess NLL over the truth is
    chi^2_P / (2n), so this keeps fits as good as the data can tell apart)."""
    setting = SETTINGS[name]
    X, y = sample_data(setting, n, seeds)
    R, S = len(seeds), len(START_KINDS)
    x0 = torch.stack([start_points(setting, n, seeds, kind) for kind in START_KINDS])  # (S, R, P)
    x0 = perturb_starts(x0, seeds, perturb).flatten(0, 1)  # (S*R, P), kind-major
    fit = fit_likelihood(setting.fit_model, X.repeat(S, 1, 1), y.repeat(S, 1), x0,
                         max_iter=FIT_OPTIONS["max_iter"], dtol=FIT_OPTIONS["dtol"])
    losses = setting.losses(fit.params, setting.batched_truth(n, S * R))
    records = []
    for r, s in enumerate(seeds):
        idx = [k * R + r for k in range(S)]
        near = near_best_set(idx, fit.nll, fit.converged, FIT_OPTIONS["near_best"] / n)
        rec_losses = {k: float(v[r]) for k, v in losses.items()}
        for k, v in losses.items():
            if near:
                rec_losses[f"width_{k}"] = max(float(v[i]) for i in near)
        records.append(jsonable({
            "setting": name, "n": n, "seed": s, "losses": rec_losses,
            "converged": bool(fit.converged[r]), "iterations": int(fit.n_iter[r]),
            "reason": fit.reason[r], "nll": float(fit.nll[r]), "min_eig": float(fit.min_eig[r]),
            "starts": {kind: {"converged": bool(fit.converged[i]), "nll": float(fit.nll[i])}
                       for kind, i in zip(START_KINDS, idx)},
            "near_best": len(near),
        }))
    return records
