"""The opt-in numba assembly (``assembly="numba"``,
:mod:`attnmoe.estimation.families.least_squares.numba_assembly`): the same loss, gradient and
Hessian as the torch path, batch-position invariant, an accurate exp, one-line refusals of what it
does not cover, the same trust-region fits, and no trace in the options of a default study.

Compiling a layout's kernels takes seconds; the module caches them by source text, so every test
here reuses the layouts of :data:`SETTINGS`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.families.least_squares.fit import fit_least_squares
from attnmoe.estimation.families.least_squares.init import near_truth_init
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.families.least_squares.truth import get_setting, sample

numba_assembly = pytest.importorskip("attnmoe.estimation.families.least_squares.numba_assembly")
pytest.importorskip("numba")

#: gate x expert x specification, each of the four combinations once
SETTINGS = ("monomial-sigmoid-exact", "polynomial-linear-exact", "monomial-linear-over", "polynomial-sigmoid-over")

N, R = 1037, 5  # n not a multiple of the 64-sample block: the padding is exercised

_OBJECTIVES: dict[tuple[str, int, int, str], LeastSquaresObjective] = {}


def _problem(name: str, n: int = N, R: int = R, assembly: str = "numba"):
    """(objective, flat) for ``R`` replicates of setting ``name`` (cached: one compile per layout)."""
    key = (name, n, R, assembly)
    s = get_setting(name)
    if key not in _OBJECTIVES:
        X, y = sample(s, n, list(range(R)))
        _OBJECTIVES[key] = LeastSquaresObjective(s.fit_layout, X, y, assembly=assembly)
    flat = near_truth_init(s.fit_layout, s.true_params(), list(range(R)), 0.3)
    return _OBJECTIVES[key], flat


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", SETTINGS)
def test_matches_the_torch_path(name: str) -> None:
    fast, flat = _problem(name)
    ref, _ = _problem(name, assembly="torch")
    for got, want in zip(fast.hessian(flat), ref.hessian(flat)):
        assert got.shape == want.shape and got.dtype == want.dtype == torch.float64
        assert _rel(got, want) <= 1e-12
    assert _rel(fast(flat), ref(flat)) <= 1e-12
    # idx selects replicates: rows 3, 1 of the data at the parameters given for them
    idx = torch.tensor([3, 1])
    for got, want in zip(fast.hessian(flat[idx], idx), ref.hessian(flat[idx], idx)):
        assert _rel(got, want) <= 1e-12


@pytest.mark.parametrize("name", SETTINGS)
def test_loss_mode_is_bitwise_the_assemblys_loss(name: str) -> None:
    """The trust region compares hessian()'s loss with __call__'s at trial points: one arithmetic
    (the kernel with derivs=False), at several points and for a subset of the rows."""
    fast, flat = _problem(name)
    for scale in (0.0, 1e-3, 0.5):
        point = flat + scale * torch.randn(flat.shape, generator=torch.Generator().manual_seed(7), dtype=flat.dtype)
        assert torch.equal(fast(point), fast.hessian(point)[0])
        idx = torch.tensor([4, 0, 2])
        assert torch.equal(fast(point[idx], idx), fast.hessian(point[idx], idx)[0])


def test_a_replicate_is_bitwise_the_same_alone_and_anywhere_in_a_batch() -> None:
    name, B = "monomial-sigmoid-exact", 7
    batch, flat = _problem(name, R=B)
    s = get_setting(name)
    X, y = sample(s, N, list(range(B)))
    whole = batch.hessian(flat)
    for r in range(B):
        alone = LeastSquaresObjective(s.fit_layout, X[r : r + 1], y[r : r + 1], assembly="numba")
        single = alone.hessian(flat[r : r + 1])
        for shift in (1, 4):  # two different places in the batch via idx
            order = torch.roll(torch.arange(B), shift)
            pos = int((order == r).nonzero())
            moved = batch.hessian(flat[order], order)
            for a, b, c in zip(single, moved, whole):
                assert torch.equal(a[0], b[pos]) and torch.equal(a[0], c[r])
        assert torch.equal(alone(flat[r : r + 1])[0], whole[0][r])


def test_exp_within_its_ulp_bound() -> None:
    grid = np.linspace(-700.0, 700.0, 1_400_001)  # steps of 1e-3
    edges = np.array([0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, np.log(2) / 2, -np.log(2) / 2,
                      np.nextafter(np.log(2) / 2, 1), np.nextafter(-np.log(2) / 2, -1), 1.0, -1.0,
                      -700.0, 700.0, np.nextafter(-700.0, 0), np.nextafter(700.0, 0), 709.0 / 1.0013])
    x = np.concatenate([grid, edges, np.random.default_rng(0).uniform(-700, 700, 200_000)])
    x = x[np.abs(x) <= 700.0]
    got, want = numba_assembly.poly_exp(x), np.exp(x)
    ulp = np.abs(got - want) / np.spacing(want)
    assert ulp.max() <= numba_assembly.EXP_ULP, (ulp.max(), x[ulp.argmax()])
    # outside [-700, 700] the argument is clamped; NaN stays NaN
    out = numba_assembly.poly_exp(np.array([-1000.0, 1000.0, -np.inf, np.inf, np.nan]))
    ends = numba_assembly.poly_exp(np.array([-700.0, 700.0]))
    assert np.array_equal(out[:4], np.concatenate([ends, ends])) and np.isnan(out[4])


@pytest.mark.parametrize("name, word", [("sgate-r1-gelu-soft", "'gelu'"), ("sgate-r1-gelu-sig", "normalization"),
                                        ("crouter-cosine-gelu", "'cosine'")])
def test_refuses_what_it_does_not_cover(name: str, word: str) -> None:
    s = get_setting(name)
    X, y = sample(s, 64, [0])
    with pytest.raises(ValueError, match=word) as err:
        LeastSquaresObjective(s.fit_layout, X, y, assembly="numba")
    assert "supports softmax" in str(err.value) and "\n" not in str(err.value)


def test_refuses_a_gpu_a_float32_fit_and_a_bad_name() -> None:
    s = get_setting("monomial-sigmoid-exact")
    X, y = sample(s, 64, [0])
    with pytest.raises(ValueError, match="'cuda'"):
        numba_assembly.check_supported(s.fit_layout, "cuda")
    with pytest.raises(ValueError, match="float32"):
        LeastSquaresObjective(s.fit_layout, X.float(), y.float(), assembly="numba")
    with pytest.raises(ValueError, match="unknown assembly 'fast'"):
        LeastSquaresObjective(s.fit_layout, X, y, assembly="fast")
    with pytest.raises(ValueError, match="unknown assembly"):
        FitOptions(assembly="fast")
    with pytest.raises(ValueError, match="trust-region' on the cpu"):
        FitOptions(assembly="numba", device="cuda")
    with pytest.raises(ValueError, match="trust-region"):
        FitOptions(assembly="numba", method="lbfgs")
    flat = near_truth_init(s.fit_layout, s.true_params(), [0], 0.1)
    with pytest.raises(ValueError, match="trust-region"):
        fit_least_squares(s.fit_layout, X, y, flat, method="adam", assembly="numba")


def test_a_missing_numba_is_a_one_line_install_hint(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    with pytest.raises(ImportError, match="pip install numba"):
        numba_assembly.compiled("def f():\n    return 1\n", "f")


@pytest.mark.parametrize("preset", ["multinomial-logistic", "hmoe"])
def test_cli_assembly_is_refused_by_other_families(preset: str, tmp_path) -> None:
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["rates", "--preset", preset, "--assembly", "numba", "--no-progress",
                                   "--out", str(out)])
    assert res.exit_code == 2 and "--assembly: not an option of the preset" in res.output, res.output
    assert not out.exists()


def test_cli_assembly_reaches_a_least_squares_study(tmp_path) -> None:
    import json

    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["rates", "--preset", "quick", "--settings", "monomial-sigmoid-exact",
                                   "--n-grid", "200", "--replicates", "2", "--max-iter", "20", "--workers", "1",
                                   "--assembly", "numba", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    study = json.loads((out / "study.json").read_text())
    assert study["fit"]["assembly"] == "numba"
    assert study["fit"]["assembly_version"] == numba_assembly.ASSEMBLY_VERSION == 3
    # a study written by kernel version 1 (no assembly_version, as docs/rates/paper-over-numba) or
    # by version 2 (the batched iteration) is not continued by this one: its numbers round differently
    study["fit"]["assembly_version"] = 2
    (out / "study.json").write_text(json.dumps(study))
    again = CliRunner().invoke(app, ["rates", "--preset", "quick", "--settings", "monomial-sigmoid-exact",
                                     "--n-grid", "200", "--replicates", "2", "--max-iter", "20", "--workers", "1",
                                     "--assembly", "numba", "--no-progress", "--out", str(out)])
    assert again.exit_code != 0 and "assembly_version: 2 there, 3 here" in again.output, again.output
    bad = CliRunner().invoke(app, ["rates", "--preset", "quick", "--assembly", "nope", "--no-progress",
                                   "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "unknown assembly 'nope'" in bad.output


def test_trust_region_fits_converge_to_the_same_losses() -> None:
    s = get_setting("monomial-sigmoid-exact")
    seeds = [0, 1, 2, 3]
    X, y = sample(s, 2000, seeds)
    init = near_truth_init(s.fit_layout, s.true_params(), seeds, 0.1)
    fits = {a: fit_least_squares(s.fit_layout, X, y, init, max_iter=100, assembly=a) for a in ("torch", "numba")}
    assert bool(fits["torch"].converged.all()) and bool(fits["numba"].converged.all())
    assert _rel(fits["numba"].loss, fits["torch"].loss) <= 1e-10


def test_default_options_do_not_record_the_assembly() -> None:
    assert "assembly" not in FitOptions().to_dict() and "assembly_version" not in FitOptions().to_dict()
    assert FitOptions(assembly="numba").to_dict()["assembly"] == "numba"


@pytest.mark.parametrize("name", SETTINGS)
def test_the_kernel_forms_each_entry_the_hessian_reads_once(name: str) -> None:
    """M's columns are the (pair, product) entries that hess_index reads, each once; every
    Hessian entry is gathered from one of them (so no entry is left at its initial value)."""
    fast, _ = _problem(name)
    o, asm = fast, fast.numba
    U = o.U
    wanted = {(int(h) // U, int(h) % U) for h in o.hess_index.flatten()}
    _, _, entries = numba_assembly.kernel_source(
        o.layout.n_experts, o.layout.n_ref, o.xi.shape[-1],
        *[t.tolist() for t in (o.gate_cols, o.expert_cols, o.qi, o.ql, o.ua, o.ub, o.diag_pairs)],
        expert=o.layout.expert.name, needed=[sorted({u for q, u in wanted if q == qq}) for qq in range(o.qi.numel())])
    assert len(entries) == len(set(entries)) == len(wanted) and set(entries) == wanted
    assert asm.n_entries == len(entries)
    assert sorted(set(asm.hess_index.flatten().tolist())) == list(range(len(entries)))


def test_compiled_functions_are_cached_per_helper() -> None:
    """The kernel's text names its product function only; the cache must tell two helpers apart."""
    one = numba_assembly.compiled("def g():\n    return 1.0\n", "g")
    two = numba_assembly.compiled("def g():\n    return 2.0\n", "g")
    caller = "def f():\n    return g()\n"
    assert numba_assembly.compiled(caller, "f", helpers={"g": one})() == 1.0
    assert numba_assembly.compiled(caller, "f", helpers={"g": two})() == 2.0
    assert numba_assembly.compiled(caller, "f", helpers={"g": one}) is numba_assembly.compiled(caller, "f",
                                                                                               helpers={"g": one})
