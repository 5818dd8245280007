"""Likelihood MoE engine (estimation/families/likelihood): NLL against SciPy, derivatives against finite
differences, batch-position invariance, recovery, losses, presets' bad input and resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.families.likelihood import (
    ContaminatedMoE,
    GaussianMoE,
    LikelihoodObjective,
    MultinomialLogisticMoE,
    fit_likelihood,
)
from attnmoe.estimation.families.likelihood.settings import (
    SETTINGS,
    TOPK_TRUTH,
    contaminated_setting,
    sample_data,
    start_points,
    topk_setting,
)
from attnmoe.estimation.study.presets.likelihood import LikPreset, run_lik_study
from attnmoe.estimation.families.likelihood.voronoi import hellinger, topk_voronoi_loss
from attnmoe.estimation.study.engine import StudyArgs



pytestmark = pytest.mark.usefixtures("float64_default")  # float64 default dtype in this module only


def _softmax(u: np.ndarray) -> np.ndarray:
    e = np.exp(u - u.max())
    return e / e.sum()


def _reference_gaussian_moe(model: GaussianMoE, nat: dict, X: np.ndarray, y: np.ndarray) -> float:
    """Mean NLL by an explicit loop over samples with SciPy densities (top-K by sorting)."""
    beta1, beta0 = nat["beta1"].numpy(), nat["beta0"].numpy()
    a, b, nu = nat["a"].numpy(), nat["b"].numpy(), nat["nu"].numpy()
    total = 0.0
    for x, yy in zip(X, y):
        lin = beta1 @ x
        if model.gate == "temperature":
            lin = lin / float(nat["tau"])
        elif model.gate == "activation":
            lin = np.tanh(lin) / float(nat["tau"])
        u = lin + beta0
        K = model.top_k or model.k
        keep = np.argsort(-u)[:K]
        w = np.zeros(model.k)
        w[keep] = _softmax(u[keep])
        if model.expert == "gaussian":
            dens = stats.norm.pdf(yy, a @ x + b, np.sqrt(nu))
        else:
            dens = stats.laplace.pdf(yy, a @ x + b, np.sqrt(nu / 2))
        total -= math.log(float(w @ dens))
    return total / len(y)


@pytest.mark.parametrize("top_k,expert,gate", [(None, "gaussian", "softmax"), (2, "gaussian", "softmax"),
                                               (1, "gaussian", "softmax"), (2, "laplace", "softmax"),
                                               (None, "gaussian", "temperature"), (2, "gaussian", "activation")])
def test_nll_matches_scipy_loop(top_k, expert, gate) -> None:
    gen = torch.Generator().manual_seed(0)
    model = GaussianMoE(3, 2, top_k=top_k, expert=expert, gate=gate)
    flat = torch.randn(2, model.n_params, generator=gen)
    X = torch.randn(2, 37, 2, generator=gen)
    y = torch.randn(2, 37, generator=gen) * 2
    got = LikelihoodObjective(model, X, y)(flat)
    for r in range(2):
        nat = {k: v[r] for k, v in model.natural(flat).items()}
        ref = _reference_gaussian_moe(model, nat, X[r].numpy(), y[r].numpy())
        assert got[r].item() == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("f0", ["gaussian", "laplace"])
def test_contaminated_nll_matches_scipy_loop(f0) -> None:
    gen = torch.Generator().manual_seed(1)
    d = 3
    model = ContaminatedMoE(d, f0, (1.0, 0.0, -0.5), 0.05)
    flat = 0.5 * torch.randn(1, model.n_params, generator=gen)
    X = torch.randn(1, 29, d, generator=gen)
    y = torch.randn(1, 29, generator=gen)
    nat = {k: v[0].numpy() for k, v in model.natural(flat).items()}
    ref = 0.0
    for x, yy in zip(X[0].numpy(), y[0].numpy()):
        w = 1 / (1 + math.exp(-(nat["beta"] @ x + nat["tau"])))
        m0 = math.tanh(np.array(model.eta0) @ x)
        p0 = (stats.norm.pdf(yy, m0, math.sqrt(0.05)) if f0 == "gaussian"
              else stats.laplace.pdf(yy, m0, math.sqrt(0.05 / 2)))
        p1 = stats.norm.pdf(yy, math.tanh(nat["eta"] @ x), math.sqrt(nat["nu"]))
        ref -= math.log((1 - w) * p0 + w * p1)
    assert LikelihoodObjective(model, X, y)(flat)[0].item() == pytest.approx(ref / 29, rel=1e-10)


@pytest.mark.parametrize("model", [GaussianMoE(3, 2), GaussianMoE(3, 2, top_k=2), GaussianMoE(2, 2, gate="activation"),
                                   ContaminatedMoE(2, "laplace", (1.0, 0.0), 0.1, gate_bound=5.0)])
def test_gradient_and_hessian_match_finite_differences(model) -> None:
    gen = torch.Generator().manual_seed(2)
    R, P = 2, model.n_params
    flat = 0.5 * torch.randn(R, P, generator=gen)
    X = torch.randn(R, 50, 2, generator=gen)
    y = torch.randn(R, 50, generator=gen)
    obj = LikelihoodObjective(model, X, y)
    f, g, H = obj.hessian(flat)
    f2, g2 = obj.value_and_grad(flat)
    assert torch.equal(f, f2) and torch.allclose(g, g2, rtol=1e-12, atol=1e-14)
    h = 1e-5
    eye = torch.eye(P)
    # central differences of the value (gradient) and of the gradient (Hessian); top-K pieces do
    # not change within h at these random points (checked: mask-free agreement below)
    fd_g = torch.stack([(obj(flat + h * eye[p]) - obj(flat - h * eye[p])) / (2 * h) for p in range(P)], -1)
    fd_H = torch.stack([(obj.value_and_grad(flat + h * eye[p])[1] - obj.value_and_grad(flat - h * eye[p])[1]) / (2 * h)
                        for p in range(P)], -1)
    assert torch.allclose(g, fd_g, rtol=1e-6, atol=1e-8)
    assert torch.allclose(H, fd_H, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(H).all()


def test_a_replicate_is_bitwise_the_same_alone_or_in_a_batch(monkeypatch) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(3)
    model = GaussianMoE(3, 1, top_k=2)
    R = 5
    flat = 0.3 * torch.randn(R, model.n_params, generator=gen)
    X = torch.rand(R, 101, 1, generator=gen)
    y = torch.randn(R, 101, generator=gen)
    batch = LikelihoodObjective(model, X, y).hessian(flat)
    for r in (0, 3):
        alone = LikelihoodObjective(model, X[r : r + 1], y[r : r + 1]).hessian(flat[r : r + 1])
        for a, b in zip(alone, batch):
            assert torch.equal(a[0], b[r])
    from attnmoe.estimation.families.likelihood import objective as lik_objective

    monkeypatch.setattr(lik_objective, "CHUNK_ENTRIES", 1)  # one replicate per Hessian chunk
    chunked = LikelihoodObjective(model, X, y).hessian(flat)
    for a, b in zip(chunked, batch):
        assert torch.equal(a, b)


def test_sample_has_the_model_conditional_mean_and_variance() -> None:
    model = GaussianMoE(2, 1)
    nat = {k: v.double().unsqueeze(0) for k, v in TOPK_TRUTH.items()}
    n = 200_000
    X = torch.full((1, n, 1), 0.33)
    U = torch.from_numpy(np.random.default_rng(0).random((1, n, 2)))
    y = model.sample(nat, X, U)[0]
    w = model.weights(nat, X[:, :1])[0, 0]
    mu = model.means(nat, X[:, :1])[0, 0]
    mean = float((w * mu).sum())
    var = float((w * (nat["nu"][0] + mu**2)).sum()) - mean**2
    assert abs(float(y.mean()) - mean) < 5 * math.sqrt(var / n)
    assert float(y.var()) == pytest.approx(var, rel=0.02)


def test_large_n_recovery_within_the_fisher_standard_errors() -> None:
    setting = SETTINGS["topk-exact"]
    n, seeds = 20_000, [0, 1]
    X, y = sample_data(setting, n, seeds)
    fit = fit_likelihood(setting.fit_model, X, y, start_points(setting, n, seeds))
    assert fit.converged.all()
    truth_flat = setting.fit_model.free(setting.batched_truth(n, 2))
    obj = LikelihoodObjective(setting.fit_model, X, y)
    assert (fit.nll <= obj(truth_flat)).all()  # an MLE: no worse than the truth on its own data
    _, _, H = obj.hessian(fit.flat)  # observed information per sample
    se = torch.diagonal(torch.linalg.inv(H), dim1=1, dim2=2).div(n).sqrt()
    assert ((fit.flat - truth_flat).abs() < 5 * se).all()


def test_voronoi_loss_is_zero_at_exact_reparametrisations_and_uses_the_table() -> None:
    truth = {k: v.double() for k, v in TOPK_TRUTH.items()}
    fit = {k: v.unsqueeze(0) for k, v in truth.items()}
    assert topk_voronoi_loss(fit, truth)["voronoi"].item() == pytest.approx(0, abs=1e-12)
    split = {k: torch.cat([v, v[1:]], 0).unsqueeze(0) for k, v in truth.items()}
    split["beta0"] = torch.tensor([[-8.0, -math.log(2), -math.log(2)]])
    assert topk_voronoi_loss(split, truth)["voronoi"].item() == pytest.approx(0, abs=1e-12)
    eps = 0.1
    moved = {k: v.clone() for k, v in split.items()}
    moved["b"][0, 2] += eps  # one copy of a 2-atom cell: exponent r_bar(2) = 4 on b
    pi = torch.softmax(split["beta0"][0], 0)
    assert topk_voronoi_loss(moved, truth)["voronoi"].item() == pytest.approx(float(pi[2]) * eps**4, rel=1e-9)
    moved["nu"][0, 0] += eps  # the singleton cell: exponent 1
    assert topk_voronoi_loss(moved, truth)["voronoi"].item() == pytest.approx(
        float(pi[2]) * eps**4 + float(pi[0]) * eps, rel=1e-9)


def test_hellinger_matches_the_closed_form_of_two_gaussians() -> None:
    one = GaussianMoE(1, 1)
    p = {"beta1": torch.zeros(1, 1, 1), "beta0": torch.zeros(1, 1), "a": torch.tensor([[[2.0]]]),
         "b": torch.tensor([[0.5]]), "nu": torch.tensor([[0.3]])}
    q = {**p, "b": torch.tensor([[0.8]]), "nu": torch.tensor([[0.5]])}
    x = torch.tensor([[0.0], [1.0]])
    got = hellinger(one, p, one, q, x, torch.linspace(-10, 15, 20001))
    s1, s2 = math.sqrt(0.3), math.sqrt(0.5)
    h2 = 1 - math.sqrt(2 * s1 * s2 / (0.8)) * math.exp(-(0.3**2) / (4 * 0.8))  # same mean gap at both x
    assert got.item() == pytest.approx(math.sqrt(h2), rel=1e-8)


def test_bad_input_is_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="K <= k"):
        GaussianMoE(2, 1, top_k=3)
    with pytest.raises(ValueError, match="K <= k"):
        topk_setting("x", 2, 3)
    bad = {**TOPK_TRUTH, "nu": torch.tensor([0.3, 0.0])}
    with pytest.raises(ValueError, match="variances"):
        topk_setting("x", 3, 2, truth=bad)
    with pytest.raises(ValueError, match="nu0"):
        ContaminatedMoE(1, "gaussian", (1.0,), -1.0)
    with pytest.raises(ValueError, match="case"):
        contaminated_setting("c")
    with pytest.raises(ValueError, match="tau must be > 0"):
        GaussianMoE(2, 1, gate="temperature").free({**TOPK_TRUTH, "tau": torch.tensor(0.0)})
    with pytest.raises(ValueError, match="unknown gate"):
        GaussianMoE(2, 1, gate="relu")


def test_cli_bad_replicates_writes_nothing(tmp_path) -> None:
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["rates", "--preset", "contaminated", "--out", str(out), "--replicates", "1"])
    assert res.exit_code == 2 and "replicates" in res.output and not out.exists()


TINY = LikPreset("tiny", "test", ("contaminated-a",), (100, 200), 2, (100, 200), 2)


@pytest.mark.filterwarnings("ignore:.*line 2 skipped:RuntimeWarning")
def test_study_resumes_exactly_and_refuses_other_options(tmp_path) -> None:
    args = StudyArgs(out=tmp_path, progress=False)
    first = run_lik_study(TINY, args)
    assert first.fitted == 4
    text = (tmp_path / "records.jsonl").read_text()
    for line in text.splitlines():  # strict JSON: no NaN / Infinity anywhere
        json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    again = run_lik_study(TINY, args)
    assert (again.fitted, again.reused) == (0, 4) and (tmp_path / "records.jsonl").read_text() == text
    (tmp_path / "records.jsonl").write_text(text.splitlines()[0] + "\n" + text.splitlines()[1][:20])
    redo = run_lik_study(TINY, args)  # a truncated line is redone, with the same numbers
    assert redo.fitted == 3
    got = {(r["n"], r["seed"]): r for r in map(json.loads, (tmp_path / "records.jsonl").read_text().splitlines()[-3:])}
    want = {(r["n"], r["seed"]): r for r in map(json.loads, text.splitlines())}
    assert all(got[k] == want[k] for k in got)
    other = LikPreset("other", "test", ("contaminated-a",), (100, 200), 2, (100, 200), 2)
    with pytest.raises(ValueError, match="resume with the same preset"):
        run_lik_study(other, args)


def test_study_with_two_workers_writes_the_records_of_one(tmp_path) -> None:
    """--workers 2 (spawned processes, jobs finishing in any order) gives the same record for
    every (setting, n, seed) as one process."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    run_lik_study(TINY, StudyArgs(out=one, progress=False, workers=1, threads=1))
    result = run_lik_study(TINY, StudyArgs(out=two, progress=False, workers=2, threads=1))
    assert result.fitted == 4

    def records(path):
        return {(r["n"], r["seed"]): r for r in map(json.loads, (path / "records.jsonl").read_text().splitlines())}

    assert records(one) == records(two)


# ------------------------------------------------------------------ estimators (sklearn)
import warnings  # noqa: E402

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from attnmoe.estimation.sklearn.likelihood import GaussianMoERegressor, MoEClassifier  # noqa: E402


# every scikit-learn check, short optimiser budget; ~3 min on 2 cores in all, hence slow
@pytest.mark.slow
@parametrize_with_checks([GaussianMoERegressor(n_init=2, max_iter=30),
                          GaussianMoERegressor(gate="polynomial", n_init=2, max_iter=30),
                          MoEClassifier(n_init=2, max_iter=30)])
def test_sklearn_compatible(estimator, check) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_regressor_density_integrates_to_one_and_mean_is_its_first_moment() -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (400, 1))
    y = np.where(X[:, 0] < 0.5, 3 * X[:, 0], -2 + X[:, 0]) + 0.1 * rng.standard_normal(400)
    reg = GaussianMoERegressor(n_experts=2, n_init=4, random_state=0).fit(X, y)
    x0 = np.array([[0.2], [0.8]])
    grid = np.linspace(-10, 10, 20001)
    dens = np.stack([reg.predict_density(np.repeat(x0[i : i + 1], len(grid), 0), grid) for i in range(2)])
    assert np.trapezoid(dens, grid, axis=1) == pytest.approx([1, 1], abs=1e-6)
    assert np.trapezoid(dens * grid, grid, axis=1) == pytest.approx(reg.predict(x0), abs=1e-6)
    assert reg.score(X, y) > 0.9  # a two-regime line is within the model


def test_classifier_probabilities_and_label_checks() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 2))
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 1).astype(int)]
    clf = MoEClassifier(n_experts=2, input_map="tanh", random_state=0).fit(X, y)
    p = clf.predict_proba(X)
    assert p.shape == (300, 3) and np.allclose(p.sum(1), 1)
    assert (clf.predict(X) == y).mean() > 0.85
    with pytest.raises(ValueError, match="labels must be integers"):
        LikelihoodObjective(MultinomialLogisticMoE(2, 1, 3), torch.zeros(1, 4, 1), torch.tensor([[0.0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        MoEClassifier().fit(X, np.zeros(300))
    with pytest.raises(ValueError, match="K <= k"):
        GaussianMoERegressor(n_experts=2, top_k=3).fit(X, X[:, 0])


@pytest.mark.parametrize("input_map", ["identity", "tanh"])
def test_multinomial_nll_matches_a_loop_and_its_gradient_finite_differences(input_map) -> None:
    gen = torch.Generator().manual_seed(4)
    model = MultinomialLogisticMoE(3, 2, 3, input_map)
    flat = torch.randn(1, model.n_params, generator=gen)
    X = torch.randn(1, 23, 2, generator=gen)
    y = torch.randint(0, 3, (1, 23), generator=gen).double()
    nat = {k: v[0].numpy() for k, v in model.natural(flat).items()}
    ref = 0.0
    for x, s in zip(X[0].numpy(), y[0].numpy().astype(int)):
        mx = np.tanh(x) if input_map == "tanh" else x
        w = _softmax(nat["beta1"] @ mx + nat["beta0"])
        probs = [_softmax(np.concatenate([[0.0], nat["a"][i] @ x + nat["b"][i]]))[s] for i in range(3)]
        ref -= math.log(float(w @ np.array(probs)))
    obj = LikelihoodObjective(model, X, y)
    assert obj(flat)[0].item() == pytest.approx(ref / 23, rel=1e-10)
    _, g = obj.value_and_grad(flat)
    h, eye = 1e-6, torch.eye(model.n_params)
    fd = torch.stack([(obj(flat + h * eye[p]) - obj(flat - h * eye[p])) / (2 * h) for p in range(model.n_params)], -1)
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["topk-over-K3", "temp-temperature", "mlogit-softmax-vanish"])
def test_fits_are_bitwise_the_same_at_every_batch_position(name: str) -> None:
    """Whole fits (odd parameter counts 13 and 9 included): replicate r alone equals replicate r
    at each place, odd and even, of a batch of 5 (n = 61, 8 trust-region iterations)."""
    from attnmoe.estimation.families.likelihood.objective import fit_likelihood
    from attnmoe.estimation.families.likelihood.settings import _settings, sample_data, start_points

    torch.set_num_threads(1)
    s = _settings()[name]
    seeds = [3, 4, 5, 6, 7]
    X, y = sample_data(s, 61, seeds)
    x0 = start_points(s, 61, seeds)
    batch = fit_likelihood(s.fit_model, X, y, x0, max_iter=8)
    for r in range(5):
        alone = fit_likelihood(s.fit_model, X[r : r + 1], y[r : r + 1], x0[r : r + 1], max_iter=8)
        assert torch.equal(batch.flat[r : r + 1], alone.flat), f"replicate {r}"


def test_data_and_starts_of_a_seed_do_not_depend_on_its_block() -> None:
    """Every setting: seed 4's data and start are bitwise the same alone and second of three
    (the contaminated starts differed by 5.6e-17 before the starts were drawn seed by seed)."""
    from attnmoe.estimation.families.likelihood.settings import SETTINGS, sample_data, start_points

    for name, s in SETTINGS.items():
        X3, y3 = sample_data(s, 70, [3, 4, 5])
        X1, y1 = sample_data(s, 70, [4])
        assert torch.equal(X3[1], X1[0]) and torch.equal(y3[1], y1[0]), name
        assert torch.equal(start_points(s, 70, [3, 4, 5])[1], start_points(s, 70, [4])[0]), name


@pytest.mark.parametrize("gate,top_k", [("softmax", None), ("softmax", 2), ("softmax", 1),
                                        ("temperature", None), ("temperature", 2),
                                        ("activation", 2)])
def test_likelihood_gates_are_the_shared_registry_bitwise(gate, top_k) -> None:
    """GaussianMoE's gate (log-density path, layout (k, n), and ``weights``, layout (R, n, k)) is
    exactly the registry's score transform followed by the shared top-K sparse softmax."""
    from attnmoe.estimation.families.likelihood.model import _linear
    from attnmoe.moe import make_linear_score, topk_log_weights, topk_softmax

    gen = torch.Generator().manual_seed(6)
    model = GaussianMoE(3, 2, top_k=top_k, gate=gate)
    R, n = 2, 31
    flat = torch.randn(R, model.n_params, generator=gen)
    X = torch.randn(R, n, 2, generator=gen)
    nat = model.natural(flat)
    score = make_linear_score(gate)
    tau = nat.get("tau")
    # weights(): (R, n, k), expert axis -1
    lin = torch.einsum("rkd,rnd->rnk", nat["beta1"], X)
    u = score(lin, None if tau is None else tau.view(-1, 1, 1)) + nat["beta0"].unsqueeze(1)
    assert torch.equal(model.weights(nat, X), topk_softmax(u, top_k, dim=-1))
    # log-density path: (k, n) per replicate, expert axis 0
    free = model.unpack(flat)
    for r in range(R):
        fr = {k: v[r] for k, v in free.items()}
        xT = X[r].T
        beta1 = torch.cat([fr["beta1"], fr["beta1"].new_zeros(1, 2)], 0)
        beta0 = torch.cat([fr["beta0"], fr["beta0"].new_zeros(1)], 0)
        tau_r = torch.exp(fr["logtau"]) if gate != "softmax" else None
        u_r = score(_linear(beta1, xT), tau_r) + beta0.unsqueeze(-1)
        assert torch.equal(model._gate(fr, xT), u_r)
        logw, mask = topk_log_weights(u_r, top_k, dim=0)
        # the two layouts agree on the weights (different reductions: to rounding)
        w = torch.exp(logw) if mask is None else torch.where(mask, torch.exp(logw), 0.0)
        assert torch.allclose(w.T, model.weights(nat, X)[r], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("input_map", ["identity", "tanh"])
def test_multinomial_gate_is_the_shared_input_map_bitwise(input_map) -> None:
    from attnmoe.estimation.families.likelihood.model import _linear
    from attnmoe.moe import make_input_map

    gen = torch.Generator().manual_seed(7)
    model = MultinomialLogisticMoE(3, 2, 3, input_map)
    free = model.unpack(torch.randn(model.n_params, generator=gen))
    xT = torch.randn(2, 13, generator=gen)
    beta1 = torch.cat([free["beta1"], free["beta1"].new_zeros(1, 2)], 0)
    beta0 = torch.cat([free["beta0"], free["beta0"].new_zeros(1)], 0)
    u, _ = model._logits(free, xT)
    assert torch.equal(u, _linear(beta1, make_input_map(input_map)(xT)) + beta0.unsqueeze(-1))


def test_unknown_likelihood_gate_names_are_refused_with_one_line() -> None:
    with pytest.raises(ValueError, match="unknown gate 'relu'.*'temperature'.*'polynomial'") as err:
        GaussianMoE(2, 1, gate="relu")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown input map 'relu'") as err:
        MultinomialLogisticMoE(2, 1, 2, "relu")
    assert "\n" not in str(err.value)


def test_near_best_width_of_an_identified_fit_is_its_local_error() -> None:
    """Exact-specified top-K: both starts reach the same MLE, so the near-best set has both fits
    and its widest loss equals the near-truth fit's loss."""
    from attnmoe.estimation.families.likelihood.experiment import fit_block

    (rec,) = fit_block("topk-exact", 2000, [0])
    assert rec["converged"] and all(v["converged"] for v in rec["starts"].values())
    assert rec["near_best"] == 2
    assert abs(rec["starts"]["near-truth"]["nll"] - rec["starts"]["displaced"]["nll"]) < 1e-6
    for loss in ("voronoi", "hellinger"):
        assert rec["losses"][f"width_{loss}"] == pytest.approx(rec["losses"][loss], rel=1e-3)


def test_displaced_starts_are_farther_and_kinds_are_checked() -> None:
    from attnmoe.estimation.families.likelihood.settings import SETTINGS

    s = SETTINGS["topk-over-K3"]
    base = s.start(s.batched_truth(500, 1), torch.zeros(1, s.fit_model.n_params))
    near = (start_points(s, 500, list(range(20))) - base).norm(dim=-1)
    far = (start_points(s, 500, list(range(20)), "displaced") - base).norm(dim=-1)
    assert far.mean() > 2 * near.mean()
    with pytest.raises(ValueError, match="unknown start kind"):
        start_points(s, 500, [0], "random")
