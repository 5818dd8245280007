"""Voronoi losses between a fitted and the true mixing measure, and the L2 error of f.

Mixing measure (arXiv 2410.11222): G = sum_i exp(c_i) delta_{theta_i}, with atom
theta_i = (A_i, b_i, a_i, alpha_i) (gating keys present depending on the gate).

Translation invariance (our choice, see docs/estimation.md). Softmax gating is unchanged when
the same (t_A, t_b, t_c) is added to every atom, so raw exp(c_i) and raw (A_i, b_i) are not
comparable between two parametrisations of the same f. We compare the *normalised* measure:
    mass    pi_i = exp(c_i) / sum_l exp(c_l)              (invariant to t_c)
    gating  A_i - sum_l pi_l A_l,  b_i - sum_l pi_l b_l   (invariant to t_A, t_b)
Both are computed for the fit and for the truth; A is symmetrised first. When a true atom is
split into several fitted atoms with the same (A, b) this normalisation gives them exactly the
true total mass, so the losses vanish at every exact reparametrisation.

Sigmoid gating (arXiv 2405.13997; our choice, see docs/gating.md). Sigmoid weights are not
normalised across experts, so there is no translation invariance: atoms are compared raw (A
symmetrised) and the mass of atom i is
    pi_i = sigmoid(c_i)
(the weight the atom carries where its slope terms vanish, x = 0). With it the mass error of a
cell vanishes at the one exact over-specified reparametrisation of sigmoid gating: copies of a
true atom whose gating slopes are zero and whose sigmoid(c) add up to sigmoid(c*) (a sum of
sigmoids with nonzero slopes is no sigmoid). exp(c_i), the softmax paper's mass, would not.

Cosine routers (arXiv 2405.14131; our choice, docs/gating.md). The logit b_i^T x /
((||b_i|| + tau1)(||x|| + tau2)) is invariant only to a common shift of c (softmax), not of
b, so b is never translated. With tau1 = 0 (``"cosine"``) it ignores ||b_i||: the atom's
gating coordinate is the direction b_i / ||b_i|| (0 for b_i = 0). With tau1 > 0
(``"perturbed-cosine"``) b -> b / (||b|| + tau1) is one-to-one and b is compared raw.

Voronoi cells: V_j = {i : j = argmin_l ||theta_i - theta*_l||} (Euclidean norm of the
concatenated atom; Frobenius for A; ties to the lowest j). For exponents (r1, r2):
    D(G, G*) = sum_j | sum_{i in V_j} pi_i - pi*_j |
             + sum_{j: |V_j| = 1} sum_{i in V_j} pi_i ||theta_i - theta*_j||^{r1}
             + sum_{j: |V_j| > 1} sum_{i in V_j} pi_i ||theta_i - theta*_j||^{r2}
D1 uses (1, 2) (strongly identifiable experts), D2 uses (1, r_bar) with r_bar = 4 by default
(a cell of two atoms; see docs/estimation.md). Both exponents are configurable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from attnmoe.moe import GATES, make_expert, make_gate, mixture_forward
from attnmoe.moe.mixture import _check_normalization

__all__ = [
    "ATOM_KEYS",
    "DIRECTION_GATES",
    "GATE_KEYS",
    "l2_error",
    "normalized_measure",
    "split_cell_stats",
    "voronoi_cells",
    "voronoi_losses",
]

GATE_KEYS = ("A", "b")  # gating atom coordinates (translated); "c" is the mass
ATOM_KEYS = ("A", "b", "a", "alpha")


def _batched(params: Mapping[str, Tensor], R: int | None = None) -> dict[str, Tensor]:
    """Add a leading replicate dim if the params are (k, ...) and broadcast to R."""
    base = {"A": 4, "b": 3, "c": 2, "a": 3, "alpha": 2}
    out = {}
    for key, value in params.items():
        v = torch.as_tensor(value, dtype=torch.float64)
        if key in base and v.ndim == base[key] - 1:
            v = v.unsqueeze(0)
        if R is not None and v.shape[0] == 1 and R > 1:
            v = v.expand(R, *v.shape[1:])
        out[key] = v
    return out


#: gates whose logit ignores ||b_i|| (atoms compare directions) / is not translation invariant in b
#: (read off the gate classes: ``Gate.direction_only``, ``Gate.translation_invariant``)
DIRECTION_GATES = tuple(name for name, g in GATES.items() if g.direction_only)
UNTRANSLATED_GATES = tuple(name for name, g in GATES.items() if not g.translation_invariant)


def normalized_measure(
    params: Mapping[str, Tensor], normalization: str = "softmax", gate: str | None = None
) -> tuple[Tensor, Tensor]:
    """Masses ``(R, k)`` and (for softmax) translation-normalised atoms ``(R, k, D)``.

    Args:
        params: natural params with leading ``(R, k)``; must contain ``"c"``.
        normalization: ``"softmax"`` (masses softmax(c), translated gating) or ``"sigmoid"``
            (masses sigmoid(c), raw gating; module docstring).
        gate: the gate's name: cosine routers keep b untranslated, the plain cosine router
            compares directions b / ||b|| (module docstring); None = a polynomial-family gate.
    """
    if "c" not in params:
        raise ValueError("params must contain the gating biases 'c' (the masses)")
    _check_normalization(normalization)
    softmax = normalization == "softmax"
    pi = torch.softmax(params["c"], dim=-1) if softmax else torch.sigmoid(params["c"])  # (R, k)
    R, k = pi.shape
    parts = []
    for key in ATOM_KEYS:
        if key not in params:
            continue
        p = params[key]
        if key == "A":
            p = 0.5 * (p + p.transpose(-1, -2))
        p = p.reshape(R, k, -1)  # (R, k, D_key)
        if key == "b" and gate in DIRECTION_GATES:
            norm = p.norm(dim=-1, keepdim=True)
            p = p / torch.where(norm > 0, norm, torch.ones_like(norm))
        elif key in GATE_KEYS and softmax and gate not in UNTRANSLATED_GATES:
            p = p - (pi.unsqueeze(-1) * p).sum(1, keepdim=True)
        parts.append(p)
    return pi, torch.cat(parts, dim=-1)  # (R, k), (R, k, D)


def _normalization_of(truth: object, normalization: str | None) -> str:
    """The explicit ``normalization``, else the setting's, else softmax."""
    if normalization is not None:
        return normalization
    return getattr(truth, "normalization", "softmax")


def voronoi_cells(fitted_atoms: Tensor, true_atoms: Tensor) -> Tensor:
    """Index ``(R, k)`` of the nearest true atom for every fitted atom.

    Args:
        fitted_atoms: ``(R, k, D)``; true_atoms: ``(R, k*, D)`` (or ``(1, k*, D)``).
    """
    if true_atoms.shape[0] != fitted_atoms.shape[0]:
        true_atoms = true_atoms.expand(fitted_atoms.shape[0], *true_atoms.shape[1:])
    dist = torch.cdist(fitted_atoms, true_atoms)  # (R, k, k*)
    return dist.argmin(-1)


def voronoi_losses(
    fitted: Mapping[str, Tensor],
    truth: Mapping[str, Tensor],
    *,
    d1_exponents: tuple[float, float] = (1.0, 2.0),
    d2_exponents: tuple[float, float] = (1.0, 4.0),
    normalization: str | None = None,
    gate: str | None = None,
) -> dict[str, Tensor]:
    """Voronoi losses D1 and D2 between fitted and true mixing measures (per replicate).

    Args:
        fitted: natural params with leading ``(R, k)`` (keys among A, b, c, a, alpha).
        truth: natural params ``(k*, ...)`` or ``(R, k*, ...)``, the same keys, or a
            :class:`~attnmoe.estimation.families.least_squares.truth.Setting`.
        d1_exponents: (r for single-atom cells, r for multi-atom cells) of D1.
        d2_exponents: the same for D2.
        normalization: ``"softmax"`` or ``"sigmoid"`` (the mass, module docstring); default:
            the setting's when ``truth`` is a Setting, else softmax.
        gate: the gate's name (cosine atoms, module docstring); default: the setting's.

    Returns:
        dict of ``(R,)`` tensors: ``"D1"``, ``"D2"``, ``"mass"`` (sum of cell mass errors),
        ``"atom"`` (max over true atoms of the distance to the nearest fitted atom of its cell;
        inf for an empty cell).
    """
    normalization = _normalization_of(truth, normalization)
    gate = gate if gate is not None else getattr(truth, "gate", None)
    if hasattr(truth, "true_params"):  # a Setting
        truth = truth.true_params()
    if set(fitted) != set(truth):
        raise ValueError(f"fitted and truth must have the same keys, got {sorted(fitted)} vs {sorted(truth)}")
    fitted = _batched(fitted)
    R = fitted["c"].shape[0]
    truth = _batched(truth, R)
    pi, atoms = normalized_measure(fitted, normalization, gate)  # (R, k), (R, k, D)
    pi_t, atoms_t = normalized_measure(truth, normalization, gate)  # (R, k*), (R, k*, D)
    k_true = pi_t.shape[1]
    dist = torch.cdist(atoms, atoms_t)  # (R, k, k*)
    cell = dist.argmin(-1)  # (R, k)
    onehot = torch.nn.functional.one_hot(cell, k_true).to(pi.dtype)  # (R, k, k*)
    d_own = dist.gather(-1, cell.unsqueeze(-1)).squeeze(-1)  # (R, k)
    mass = (torch.einsum("rk,rkj->rj", pi, onehot) - pi_t).abs().sum(-1)  # (R,)
    count = onehot.sum(1)  # (R, k*)
    multi = count.gather(-1, cell) > 1  # (R, k): fitted atom sits in a multi-atom cell
    out = {"mass": mass}
    for name, (r1, r2) in (("D1", d1_exponents), ("D2", d2_exponents)):
        powered = torch.where(multi, d_own.pow(r2), d_own.pow(r1))
        out[name] = mass + (pi * powered).sum(-1)
    nearest = torch.where(onehot.bool(), dist, torch.inf).amin(1)  # (R, k*)
    out["atom"] = nearest.amax(-1)
    return out


def split_cell_stats(
    fitted: Mapping[str, Tensor], truth: Mapping[str, Tensor], normalization: str | None = None,
    gate: str | None = None,
) -> dict[str, Tensor]:
    """Identifiability statistics of a fit, per replicate ``(R,)`` each.

    With the normalised measure and Voronoi cells of :func:`voronoi_losses`:

    * ``D11``: the Voronoi loss with exponents (1, 1): mass error + sum_i pi_i ||theta_i -
      theta*_j(i)|| (distances, not powers: the width of a set of fits in parameter units);
    * ``copy``: the distance of the farthest atom of a multi-atom (split) cell from its true
      atom (0 when no cell is split);
    * ``split_mass``: the smallest mass fraction pi_i / sum_{l in V_j} pi_l of an atom in a
      split cell (1 when none is split): near 0 is a low-mass "ghost" copy, 1/2 a balanced split;
    * ``gate`` / ``expert``: sum_i pi_i ||.|| of the gating part (A, b) and of the expert part
      (a, alpha) of theta_i - theta*_j(i), separately.
    """
    normalization = _normalization_of(truth, normalization)
    gate = gate if gate is not None else getattr(truth, "gate", None)
    if hasattr(truth, "true_params"):
        truth = truth.true_params()
    fitted = _batched(fitted)
    R = fitted["c"].shape[0]
    truth = _batched(truth, R)
    pi, atoms = normalized_measure(fitted, normalization, gate)
    pi_t, atoms_t = normalized_measure(truth, normalization, gate)
    k_true = pi_t.shape[1]
    dist = torch.cdist(atoms, atoms_t)  # (R, k, k*)
    cell = dist.argmin(-1)  # (R, k)
    onehot = torch.nn.functional.one_hot(cell, k_true).to(pi.dtype)  # (R, k, k*)
    own = atoms_t.gather(1, cell.unsqueeze(-1).expand(-1, -1, atoms.shape[-1]))  # (R, k, D)
    diff = atoms - own
    d_own = diff.norm(dim=-1)  # (R, k)
    mass = (torch.einsum("rk,rkj->rj", pi, onehot) - pi_t).abs().sum(-1)
    count = onehot.sum(1)  # (R, k*)
    multi = count.gather(-1, cell) > 1  # (R, k)
    cell_mass = torch.einsum("rk,rkj->rj", pi, onehot).gather(-1, cell)  # (R, k)
    n_gate = sum(int(np.prod(fitted[k].shape[2:])) for k in GATE_KEYS if k in fitted)
    return {
        "D11": mass + (pi * d_own).sum(-1),
        "copy": torch.where(multi, d_own, 0.0).amax(-1),
        "split_mass": torch.where(multi, pi / cell_mass, 1.0).amin(-1),
        "gate": (pi * diff[..., :n_gate].norm(dim=-1)).sum(-1),
        "expert": (pi * diff[..., n_gate:].norm(dim=-1)).sum(-1),
    }


def l2_error(
    fitted: Mapping[str, Tensor],
    truth,
    n_test: int,
    seed: int | Sequence[int],
) -> Tensor:
    """||f_fit - f_G*||_{L2(mu)} (not squared) on a fresh sample of n_test inputs, per replicate.

    Args:
        fitted: natural params with leading ``(R, k)`` of a model with the setting's gate/expert.
        truth: the :class:`~attnmoe.estimation.families.least_squares.truth.Setting` (gives f_G* and mu).
        n_test: test sample size.
        seed: one seed for all replicates, or one per replicate (stream 2 of each seed).

    Returns:
        ``(R,)`` root mean squared difference.
    """
    from attnmoe.estimation.families.least_squares.truth import sample_inputs

    fitted = _batched(fitted)
    R = fitted["c"].shape[0] if "c" in fitted else fitted["a"].shape[0]
    seeds = [int(seed)] * R if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != R:
        raise ValueError(f"need one seed per replicate ({R}), got {len(seeds)}")
    X = sample_inputs(truth, n_test, seeds, stream=2)  # (R, n_test, d)
    gate, expert = make_gate(truth.gate, truth.dim), make_expert(truth.expert)
    diff = mixture_forward(gate, expert, fitted, X, truth.normalization) - truth.regression_function(X)  # (R, n_test)
    return diff.square().mean(-1).sqrt()
