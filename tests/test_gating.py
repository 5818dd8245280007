"""Sigmoid-gated settings (arXiv 2405.13997): truth, fit layout, Voronoi mass, spec, CLI."""

from __future__ import annotations

from pathlib import Path

import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.families.least_squares.experiment import fit_and_score
from attnmoe.estimation.families.least_squares.objective import LeastSquaresObjective
from attnmoe.estimation.families.least_squares.options import FitOptions
from attnmoe.estimation.study import resolve_settings
from attnmoe.estimation.families.least_squares.truth import get_setting, make_setting, sample, setting_from_dict
from attnmoe.estimation.families.least_squares.voronoi import voronoi_losses
from attnmoe.moe import make_expert, make_gate

#: a sigmoid-gated truth (k* = 2, d = 2) whose gating slopes are all nonzero (regime 1)
REGIME1 = {
    "b": np.array([[1.0, -0.5], [-0.8, 0.9]]),
    "c": np.array([0.3, -0.4]),
    "a": np.array([[0.7, -0.2], [-0.5, 0.6]]),
    "alpha": np.array([0.5, -1.0]),
}


def _sig_setting(expert: str = "gelu", k_fit: int = 2, noise_std: float = 0.01):
    return make_setting("linear", expert, 2, k_fit, 2, params=REGIME1, noise_std=noise_std,
                        normalization="sigmoid")


def test_sigmoid_setting_keeps_reference_gating_and_is_named() -> None:
    s = _sig_setting()
    assert s.name == "linear-sig-gelu-exact-k2-d2"
    np.testing.assert_array_equal(s.params["b"], REGIME1["b"])  # not translated
    assert s.fit_layout.normalization == "sigmoid" and s.fit_layout.n_ref == 0
    # free gate parameters for every expert: 2 * (2 + 1) gate + 2 * (2 + 1) expert
    assert s.fit_layout.n_params == 12
    soft = make_setting("linear", "gelu", 2, 2, 2, params=REGIME1)
    assert soft.name == "linear-gelu-exact-k2-d2" and soft.fit_layout.n_params == 9
    np.testing.assert_array_equal(soft.params["b"][0], 0.0)


def test_sigmoid_regression_function_is_the_sigmoid_mixture() -> None:
    s = _sig_setting()
    X, _ = sample(s, 50, [3])
    x = X[0]  # (n, d)
    b, c = torch.tensor(REGIME1["b"]), torch.tensor(REGIME1["c"])
    a, alpha = torch.tensor(REGIME1["a"]), torch.tensor(REGIME1["alpha"])
    w = torch.sigmoid(x @ b.T + c)  # (n, k), written out independently of mixture_forward
    h = torch.nn.functional.gelu(x @ a.T + alpha)
    torch.testing.assert_close(s.regression_function(X)[0], (w * h).sum(-1), rtol=1e-12, atol=1e-12)


def test_sigmoid_objective_matches_autograd_hessian() -> None:
    s = _sig_setting("sigmoid", k_fit=3)
    X, y = sample(s, 70, [0, 1])
    layout = s.fit_layout
    obj = LeastSquaresObjective(layout, X, y)
    theta = torch.randn(2, layout.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, grad, H = obj.hessian(theta)
    for r in range(2):
        def loss(t, r=r):
            return (layout.forward(t.unsqueeze(0), X[r : r + 1])[0] - y[r]).square().mean()

        torch.testing.assert_close(grad[r], torch.func.grad(loss)(theta[r]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(H[r], torch.func.hessian(loss)(theta[r]), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("expert", ["linear", "sigmoid"])
def test_noise_free_recovery_of_a_sigmoid_truth(expert: str) -> None:
    s = _sig_setting(expert, noise_std=0.0)
    rec = fit_and_score(s, 400, [0, 1], FitOptions(max_iter=300, init="near-truth:0.1", n_test=500))
    for r in rec:
        assert r["train_loss"] < 1e-20
        assert r["losses"]["D1"] < 1e-6 and r["losses"]["L2"] < 1e-9


def test_sigmoid_voronoi_mass_and_no_translation_invariance() -> None:
    s = _sig_setting()
    truth = s.true_params()
    assert float(voronoi_losses(truth, s)["D1"][0]) == 0.0
    # sigmoid gating: a common translation of the gate changes f, and the loss sees it
    moved = {k: v.clone() for k, v in truth.items()}
    moved["c"] = moved["c"] + 0.5
    mass = float(voronoi_losses(moved, s)["mass"][0])
    expected = float((torch.sigmoid(truth["c"] + 0.5) - torch.sigmoid(truth["c"])).abs().sum())
    assert mass == pytest.approx(expected, rel=1e-12)
    # under softmax the same translation is invisible
    assert float(voronoi_losses(moved, truth, normalization="softmax")["D1"][0]) < 1e-12
    # the exact split of a zero-slope atom: sigmoid(c1) + sigmoid(c2) = sigmoid(c*) -> no loss
    f64 = {"dtype": torch.float64}
    flat = {"b": torch.zeros(1, 1, 2, **f64), "c": torch.tensor([[0.2]], **f64),
            "a": torch.tensor([[[0.3, 0.1]]], **f64), "alpha": torch.tensor([[0.4]], **f64)}
    half = torch.logit(torch.sigmoid(torch.tensor(0.2, **f64)) / 2)
    split = {"b": torch.zeros(1, 2, 2, **f64), "c": torch.stack([half, half]).view(1, 2),
             "a": flat["a"].repeat(1, 2, 1), "alpha": flat["alpha"].repeat(1, 2)}
    assert float(voronoi_losses(split, flat, normalization="sigmoid")["D1"][0]) < 1e-12
    x = torch.randn(1, 30, 2, dtype=torch.float64)
    gate, expert = make_gate("linear", 2), make_expert("linear")
    from attnmoe.moe import mixture_forward

    torch.testing.assert_close(mixture_forward(gate, expert, split, x, "sigmoid"),
                               mixture_forward(gate, expert, flat, x, "sigmoid"))


def test_spec_round_trip_keeps_normalization() -> None:
    s = _sig_setting()
    back = setting_from_dict(s.to_dict())
    assert back == s and back.normalization == "sigmoid"
    np.testing.assert_array_equal(back.params["b"], s.params["b"])
    assert pickle.loads(pickle.dumps(s)) == s  # how a setting reaches a worker process
    old = get_setting("monomial-linear-over").to_dict()
    old.pop("normalization")  # a spec written before the field existed reads as softmax
    assert setting_from_dict(old) == get_setting("monomial-linear-over")


def test_resolve_settings_per_normalizer() -> None:
    out = resolve_settings(["polynomial-linear-over"], normalizers=["softmax", "sigmoid"])
    assert [s.name for s in out] == ["polynomial-linear-over", "polynomial-sig-linear-over"]
    np.testing.assert_array_equal(out[1].params["A"], out[0].params["A"])
    with pytest.raises(ValueError, match="--normalizer"):
        resolve_settings(None, normalizers=["softplus"])
    with pytest.raises(ValueError, match="unknown normalization"):
        make_setting("linear", "linear", normalization="tanh")


def test_cli_bad_normalizer_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["rates", "--out", str(out), "--normalizer", "softmax,softplus",
                                   "--n-grid", "200", "--replicates", "1", "--no-progress"])
    assert res.exit_code == 2 and "--normalizer" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_gating_presets_name_resolvable_settings_and_full_sizes() -> None:
    from attnmoe.estimation.study import LEAST_SQUARES_PRESETS

    for name in ("sigmoid-gating", "sigmoid-gating-natural", "cosine-router", "sigmoid-attention"):
        p = LEAST_SQUARES_PRESETS[name]
        assert p.full is not None and max(p.full.n_grid) > max(p.n_grid)
        settings = resolve_settings(list(p.settings))
        assert [s.name for s in settings] == list(p.settings)
        for s in settings:
            assert setting_from_dict(s.to_dict()) == s


def test_sigmoid_gating_pair_has_the_same_regression_function_and_data() -> None:
    from attnmoe.estimation.families.least_squares.gating_truths import sigmoid_gating_pair

    for regime in ("r1", "r2"):
        sig, soft = sigmoid_gating_pair(regime, "gelu")
        assert (sig.normalization, soft.normalization) == ("sigmoid", "softmax")
        assert (sig.k_fit - sig.k_true, soft.k_fit - soft.k_true) == (1, 1)
        X1, y1 = sample(sig, 300, [4, 5])
        X2, y2 = sample(soft, 300, [4, 5])
        torch.testing.assert_close(X1, X2, rtol=0, atol=0)
        torch.testing.assert_close(y1, y2, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="no softmax twin"):
        sigmoid_gating_pair("r1", "sigmoid")


def test_natural_truths_are_each_gates_own_mixture() -> None:
    """f* of the natural truths written out by hand: sigmoid weights on both atoms' own gating;
    softmax over (0, b_1^T x + c_1); same experts; the extra fitted atom copies atom 1."""
    from attnmoe.estimation.families.least_squares.gating_truths import sigmoid_gating_natural
    from attnmoe.estimation.families.least_squares.init import split_source

    for regime, slope in (("r1", 1.0), ("r2", 0.0)):
        sig, soft = sigmoid_gating_natural(regime, "gelu")
        assert (sig.name, soft.name) == (f"sgate-nat-{regime}-gelu-sig", f"sgate-nat-{regime}-gelu-soft")
        assert (sig.k_true, sig.k_fit, soft.k_true, soft.k_fit) == (2, 3, 2, 3)
        assert split_source(2, 3) == [0, 1, 1]
        X, _ = sample(sig, 200, [7])
        x = X[0].double()
        b1 = torch.tensor([1.0, -0.8], dtype=torch.float64) * slope
        b0 = torch.tensor([-0.6, 0.5], dtype=torch.float64)
        h = torch.nn.functional.gelu(
            x @ torch.tensor([[-0.4, 0.9], [0.7, -0.5]], dtype=torch.float64).T
            + torch.tensor([-0.3, 0.5], dtype=torch.float64))
        g1 = x @ b1 + 0.3
        f_sig = torch.sigmoid(x @ b0 + 0.1) * h[:, 0] + torch.sigmoid(g1) * h[:, 1]
        w1 = torch.sigmoid(g1)  # softmax over (0, g1)
        f_soft = (1 - w1) * h[:, 0] + w1 * h[:, 1]
        torch.testing.assert_close(sig.regression_function(X)[0].double(), f_sig, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(soft.regression_function(X)[0].double(), f_soft, rtol=1e-12, atol=1e-12)
        assert get_setting(sig.name) == sig and get_setting(soft.name) == soft
    with pytest.raises(ValueError, match="unknown regime"):
        sigmoid_gating_natural("r3", "gelu")
