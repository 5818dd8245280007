"""trust_region(speculate=True): the Hessian evaluated instead of the loss at likely-accepted
trial points changes no number (every OptimResult field bitwise that of speculate=False) and
saves loss evaluations; n_evals keeps counting as without. The broad comparison against the code
before the change, numba included: benchmarks/spec_equivalence.py."""

from __future__ import annotations

import pytest
import torch

from attnmoe.estimation import get_setting, sample
from attnmoe.estimation.families.least_squares.fit import _Box, fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.solvers.newton import trust_region
from test_optim import _parabola_valley  # tests/ is on sys.path (pytest's rootdir import)


def _counted(fn, rows: list[int]):
    """``fn`` counting the rows it evaluates into ``rows[0]``."""
    def wrapped(x: torch.Tensor, idx: torch.Tensor | None = None):
        rows[0] += x.shape[0]
        return fn(x, idx)

    return wrapped


def _bits(res) -> list[torch.Tensor]:
    """Every field of an OptimResult as int64 bit patterns (floats) or values (NaN-safe)."""
    out = []
    for v in (res.x, res.loss, res.grad_max, res.converged, res.n_iter, res.n_evals, res.reason, res.min_eig,
              res.decrement, *res.extra.values()):
        out.append(v.contiguous().view(torch.int64) if v.is_floating_point() else v)
    return out


@pytest.mark.parametrize("case", ["valley", "exact-odd-P", "over-box"])
def test_speculation_changes_no_number(case: str) -> None:
    """trust_region(speculate=True) evaluates the Hessian instead of the loss at trial points
    where acceptance is likely and reuses it: every result field, n_evals included, is bitwise
    that of speculate=False, with fewer loss rows evaluated; n_evals counts 1 + trial points +
    2 per extrapolation try (the loss-only evaluations of the plain run plus the first Hessian
    and each try's Hessian at y)."""
    if case == "valley":  # extrapolating fits, hessian(x)[0] is objective(x)
        obj, hess, _ = _parabola_valley(u_star=10.0)
        x0 = torch.tensor([[0.0, 0.0], [1.0, -0.1], [-5.0, -2.5], [3.0, 1.0]], dtype=torch.float64)
        kw = {"max_iter": 3000, "gtol": 1e-9, "dtol": 0.0}
    else:
        s = get_setting("monomial-sigmoid-exact" if case == "exact-odd-P" else "monomial-linear-over")
        seeds = [0, 1, 2, 3, 4]
        X, y = sample(s, 200, seeds)
        base = LeastSquaresObjective(s.fit_layout, X, y)
        x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.3)
        obj = base
        if case == "over-box":
            box = _Box(10.0)
            obj, x0 = box.wrap(base), box.to_free(x0)
        hess = obj.hessian
        kw = {"max_iter": 150, "dtol": 1e-8 / 200}
    runs = {}
    for speculate in (False, True):
        h_rows, f_rows = [0], [0]
        res = trust_region(_counted(hess, h_rows), _counted(obj, f_rows), x0, speculate=speculate, **kw)
        runs[speculate] = (res, h_rows[0], f_rows[0])
    (plain, h0, f0), (spec, h1, f1) = runs[False], runs[True]
    assert all(torch.equal(a, b) for a, b in zip(_bits(plain), _bits(spec)))
    R, tries = x0.shape[0], plain.extra["extrapolations"]
    assert int(plain.n_evals.sum()) == R + f0 + int(tries.sum())  # loss rows: trials + tries
    # each speculated row is a Hessian row instead of a loss row, and if accepted, one Hessian row fewer
    assert f1 < f0 and h1 >= h0 and f1 + h1 <= f0 + h0


def test_fit_least_squares_speculates_without_changing_a_fit() -> None:
    """fit_least_squares speculates by default; speculate=False (passed to the solver) gives
    bitwise the same FitResult (odd P, box, near-truth starts)."""
    s = get_setting("polynomial-linear-exact")
    seeds = [0, 1, 2]
    X, y = sample(s, 150, seeds)
    x0 = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.2)
    a = fit_least_squares(s.fit_layout, X, y, x0, bound=10.0)
    b = fit_least_squares(s.fit_layout, X, y, x0, bound=10.0, speculate=False)
    for k in ("flat", "loss", "grad_max", "converged", "n_iter", "n_evals", "min_eig", "decrement", "at_bound"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.reason == b.reason
