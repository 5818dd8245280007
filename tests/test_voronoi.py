"""Voronoi losses and the L2 error against hand-computed values and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from attnmoe.estimation import get_setting, l2_error, voronoi_cells, voronoi_losses
from attnmoe.estimation.families.least_squares.init import split_atoms


def _truth(name: str = "polynomial-sigmoid-exact", R: int = 1) -> dict[str, torch.Tensor]:
    return get_setting(name).true_params(R)


@pytest.mark.parametrize("name", ["polynomial-sigmoid-exact", "monomial-linear-exact"])
def test_zero_at_truth(name: str) -> None:
    truth = _truth(name)
    out = voronoi_losses(truth, truth)
    torch.testing.assert_close(voronoi_losses(truth, get_setting(name))["D1"], out["D1"])
    for key in ("D1", "D2", "mass", "atom"):
        assert float(out[key].abs().max()) < 1e-12, key


def test_hand_computed_single_and_split_cells() -> None:
    truth = _truth()
    pi = torch.softmax(truth["c"], -1)[0]
    delta = 1e-2
    moved = {k: v.clone() for k, v in truth.items()}
    moved["alpha"][0, 1] += delta  # one singleton cell off by delta in alpha
    out = voronoi_losses(moved, truth)
    assert math.isclose(float(out["D1"]), float(pi[1]) * delta, rel_tol=1e-10)
    assert math.isclose(float(out["D2"]), float(pi[1]) * delta, rel_tol=1e-10)
    assert float(out["mass"]) < 1e-14
    # atom 1 split into two copies at alpha +- delta: multi-atom cell, exponents 2 (D1), 4 (D2)
    split = split_atoms(truth, 4, ("A", "b", "c"))
    split["alpha"][0, 1] += delta
    split["alpha"][0, 3] -= delta
    out = voronoi_losses(split, truth)
    assert math.isclose(float(out["D1"]), float(pi[1]) * delta**2, rel_tol=1e-9)
    assert math.isclose(float(out["D2"]), float(pi[1]) * delta**4, rel_tol=1e-9, abs_tol=1e-15)
    custom = voronoi_losses(split, truth, d2_exponents=(1.0, 3.0))
    assert math.isclose(float(custom["D2"]), float(pi[1]) * delta**3, rel_tol=1e-9, abs_tol=1e-15)


def test_exact_split_is_zero_and_mass_error_counts() -> None:
    truth = _truth()
    split = split_atoms(truth, 5, ("A", "b", "c"))
    assert float(voronoi_losses(split, truth)["D1"]) < 1e-12
    wrong = {k: v.clone() for k, v in truth.items()}
    wrong["c"][0, 1] += 0.3  # mass moves between cells; total mass error = 2 * |pi'_0 - pi_0| etc.
    pi_t, pi_w = torch.softmax(truth["c"], -1), torch.softmax(wrong["c"], -1)
    out = voronoi_losses(wrong, truth)
    torch.testing.assert_close(out["mass"], (pi_w - pi_t).abs().sum(-1))


def test_permutation_and_translation_invariance() -> None:
    truth = _truth(R=3)
    gen = torch.Generator().manual_seed(0)
    fitted = split_atoms(truth, 4, ("A", "b", "c"))
    fitted = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in fitted.items()}
    base = voronoi_losses(fitted, truth)
    assert float(base["D1"].min()) > 0
    perm = torch.tensor([2, 0, 3, 1])
    permuted = {k: v[:, perm] for k, v in fitted.items()}
    shift = {"A": torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64),
             "b": torch.randn(3, 1, 2, generator=gen, dtype=torch.float64),
             "c": torch.randn(3, 1, generator=gen, dtype=torch.float64)}
    translated = {k: v + shift[k] if k in shift else v for k, v in fitted.items()}
    for other in (voronoi_losses(permuted, truth), voronoi_losses(translated, truth)):
        for key in ("D1", "D2", "mass", "atom"):
            torch.testing.assert_close(other[key], base[key], rtol=1e-10, atol=1e-12)


def test_cells_nearest_atom() -> None:
    true_atoms = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    fitted = torch.tensor([[[9.0, 1.0], [1.0, -1.0], [6.0, 0.0]]])
    assert voronoi_cells(fitted, true_atoms).tolist() == [[1, 0, 1]]


def test_l2_error_zero_at_truth_and_equals_constant_shift() -> None:
    s = get_setting("monomial-linear-exact")
    truth = s.true_params(2)
    assert float(l2_error(truth, s, 2000, [0, 1]).max()) < 1e-14
    shifted = {k: v.clone() for k, v in truth.items()}
    shifted["alpha"] += torch.tensor([[0.3], [-0.7]], dtype=torch.float64)  # f shifts by the constant
    torch.testing.assert_close(l2_error(shifted, s, 2000, [0, 1]), torch.tensor([0.3, 0.7], dtype=torch.float64))
    with pytest.raises(ValueError, match="one seed per replicate"):
        l2_error(truth, s, 10, [0, 1, 2])
