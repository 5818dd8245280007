"""The compiled per-replicate trust region (``assembly="numba"``,
:mod:`attnmoe.estimation.families.least_squares.numba_loop`) against the batched torch solver it
ports (:func:`attnmoe.estimation.solvers.newton.trust_region`, torch assembly): the same
iterations, stops and minima to rounding; a replicate's numbers its own; options honoured.

The layouts are those of tests/test_numba_assembly.py, so their kernels compile once."""

from __future__ import annotations

import pytest
import torch

from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.truth import get_setting, sample

pytest.importorskip("numba")


def _data(name: str, n: int, seeds: list[int], scale: float):
    s = get_setting(name)
    X, y = sample(s, n, seeds)
    return s.fit_layout, X, y, near_truth_init(s.fit_layout, s.true_params(), seeds, scale)


def _both(name: str, n: int, seeds: list[int], scale: float = 0.1, **kw):
    layout, X, y, init = _data(name, n, seeds, scale)
    return [fit_least_squares(layout, X, y, init, assembly=a, **kw) for a in ("torch", "numba")]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())


def _same_path(a, b) -> None:
    """The same stop reasons, and the same iteration and evaluation counts for every replicate but
    at most one, which may differ by one: the two round differently (LAPACK, tanh), and a 1-ulp
    difference can move a borderline acceptance by an iteration; a bookkeeping error would move
    every replicate."""
    assert a.reason == b.reason
    for field in ("n_iter", "n_evals"):
        d = (getattr(a, field) - getattr(b, field)).abs()
        assert int((d > 0).sum()) <= 1 and int(d.max()) <= 1, (field, getattr(a, field), getattr(b, field))


@pytest.mark.parametrize(("name", "scale", "bound"), [
    ("monomial-sigmoid-exact", 0.1, None),
    ("polynomial-linear-exact", 0.5, 10.0),  # odd P (21), the box, rejected steps from a farther start
    ("monomial-sigmoid-exact", 1.0, 10.0),  # boundary steps, extrapolation tries
])
def test_exact_specified_fits_are_the_batched_solvers(name: str, scale: float, bound: float | None) -> None:
    """Iteration by iteration the same algorithm: per replicate the same iteration and evaluation
    counts and stop reason, and the same minimum to rounding."""
    torch_fit, numba_fit = _both(name, 1037, [0, 1, 2, 3, 4], scale, bound=bound, dtol=1e-10)
    assert all(r == "decrement" for r in numba_fit.reason)
    _same_path(numba_fit, torch_fit)
    assert _rel(numba_fit.loss, torch_fit.loss) <= 1e-12
    assert float((numba_fit.flat - torch_fit.flat).abs().max()) <= 1e-7
    assert _rel(numba_fit.min_eig, torch_fit.min_eig) <= 1e-6
    if bound is not None:
        assert torch.equal(numba_fit.at_bound, torch_fit.at_bound)


def test_over_specified_fits_agree_and_extrapolate() -> None:
    """Hundreds of iterations along flat valleys, extrapolation included (n_evals > n_iter + 1
    counts its tries): the rounding paths differ, the fits may not; here every replicate stops
    the same way at the same loss to 1e-9 and most after the same number of iterations."""
    torch_fit, numba_fit = _both("polynomial-sigmoid-over", 1000, [0, 1, 2, 3], bound=10.0, dtol=1e-8,
                                 max_iter=2000)
    assert numba_fit.reason == torch_fit.reason
    assert bool((numba_fit.n_evals > numba_fit.n_iter + 1).any())  # extrapolations were tried
    assert int((numba_fit.n_iter == torch_fit.n_iter).sum()) >= 3
    assert _rel(numba_fit.loss, torch_fit.loss) <= 1e-9


def test_a_replicate_is_the_same_alone_and_anywhere_in_a_batch() -> None:
    layout, X, y, init = _data("polynomial-linear-exact", 301, [0, 1, 2, 3, 4, 5, 6], 0.5)
    kw = dict(assembly="numba", bound=10.0, max_iter=60)
    full = fit_least_squares(layout, X, y, init, **kw)
    pick = torch.tensor([5, 2])
    part = fit_least_squares(layout, X[pick], y[pick], init[pick], **kw)
    for field in ("flat", "loss", "grad_max", "n_iter", "n_evals", "min_eig", "decrement"):
        assert torch.equal(getattr(part, field), getattr(full, field)[pick]), field
    assert part.reason == [full.reason[5], full.reason[2]]


@pytest.mark.parametrize("kw", [
    {"radius": 0.05, "scaled": False, "extrapolate": 0, "eta": 0.1},
    {"radius": 0.05, "scaled": False, "eta": 0.1, "max_radius": 0.5, "curvature_tol": 1e-4, "straightness": 0.8,
     "stiff_tol": 1e-2},
    {"tol": 1e-7, "dtol": 0.0},  # the gradient stop alone
])
def test_solver_options_reach_the_loop(kw: dict) -> None:
    """Options change the iteration the same way in both (a small first radius, no scaling, no
    extrapolation, a stricter acceptance, a radius cap, other curvature / valley tolerances, the
    gradient stop), fitted to convergence."""
    torch_fit, numba_fit = _both("monomial-sigmoid-exact", 1037, [0, 1, 2], 0.5, **{"dtol": 1e-10, **kw})
    assert all(r == ("gradient" if "tol" in kw else "decrement") for r in numba_fit.reason)
    _same_path(numba_fit, torch_fit)
    assert _rel(numba_fit.loss, torch_fit.loss) <= 1e-12


def test_unknown_options_and_bad_shapes_are_refused() -> None:
    layout, X, y, init = _data("monomial-sigmoid-exact", 1037, [0], 0.1)
    with pytest.raises(TypeError, match="nonsense"):
        fit_least_squares(layout, X, y, init, assembly="numba", nonsense=1.0)
    with pytest.raises(ValueError, match="extrapolate"):
        fit_least_squares(layout, X, y, init, assembly="numba", extrapolate=-1)
    from attnmoe.estimation.families.least_squares.numba_loop import fit_rows
    from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective

    with pytest.raises(ValueError, match=r"x0 must be \(R, P\)"):
        fit_rows(LeastSquaresObjective(layout, X, y, assembly="numba"), init[0], None, max_iter=5, gtol=0.0, dtol=0.0)


@pytest.mark.parametrize(("value", "word"), [(float("nan"), "nonfinite"), (1e200, "stalled")])
def test_a_broken_start_stops_that_replicate_only(value: float, word: str) -> None:
    """A start with a NaN parameter stops as "nonfinite" before any iteration; one with a gate
    parameter at 1e200 (saturated: its radius collapses) as "stalled" after one, as in the batched
    solver; the other replicate of the call is fitted as usual."""
    layout, X, y, init = _data("monomial-sigmoid-exact", 1037, [0, 1], 0.1)
    init[1, 0] = value
    fits = [fit_least_squares(layout, X, y, init, assembly=a, dtol=1e-10) for a in ("torch", "numba")]
    for fit in fits:
        assert fit.reason == ["decrement", word] and int(fit.n_iter[1]) == (word == "stalled")
    _same_path(fits[1], fits[0])
    assert _rel(fits[1].loss[:1], fits[0].loss[:1]) <= 1e-12
