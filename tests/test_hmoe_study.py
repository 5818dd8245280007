"""The gate-position study of attnmoe.estimation.study.presets.hmoe (preset ``hmoe``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.estimation.families import hmoe
from attnmoe.estimation.study.presets.hmoe import run_hmoe
from attnmoe.estimation.study import registry
from attnmoe.estimation.study.engine import StudyArgs
from attnmoe.moe import HierarchicalLayout


def _objective(setting: hmoe.HMoESetting, n: int, seeds: list[int]) -> hmoe.HMoEObjective:
    X = hmoe.sample(n, seeds)
    truth = {k: v.expand(len(seeds), *v.shape[1:]) for k, v in hmoe.true_params(setting).items()}
    layout = HierarchicalLayout(setting.spec(hmoe.HEADS_TRUE))
    y = layout.forward(layout.pack(truth), X) + 0.1 * torch.randn(len(seeds), n, dtype=torch.float64)
    return hmoe.HMoEObjective(HierarchicalLayout(setting.spec()), X, y)


@pytest.mark.parametrize("position", list(hmoe.POSITIONS))
def test_gradient_and_hessian_against_finite_differences(position: str) -> None:
    torch.manual_seed(0)
    setting = hmoe.HMoESetting(position, 3)
    obj = _objective(setting, 50, [0, 1])
    x = obj.extend(hmoe.start_points(setting, [0, 1], "near-truth", hmoe.HMoEConfig()))
    f, g, H = obj.hessian(x)
    torch.testing.assert_close(f, obj(x), rtol=1e-13, atol=0)
    eps = 1e-6
    P = x.shape[1]
    for p in range(0, P, 3):
        e = torch.zeros_like(x)
        e[:, p] = eps
        torch.testing.assert_close(g[:, p], (obj(x + e) - obj(x - e)) / (2 * eps), rtol=1e-6, atol=1e-8)
        gp = obj.hessian(x + e)[1]
        gm = obj.hessian(x - e)[1]
        torch.testing.assert_close(H[:, p], (gp - gm) / (2 * eps), rtol=1e-5, atol=1e-6)


def test_a_replicate_does_not_depend_on_its_batch() -> None:
    """Loss, gradient and Hessian of a replicate are bitwise the same alone or in any block."""
    torch.set_num_threads(1)
    setting = hmoe.HMoESetting("G2", 3)
    seeds = [3, 4, 5]
    obj = _objective(setting, 70, seeds)
    x = obj.extend(hmoe.start_points(setting, seeds, "near-truth", hmoe.HMoEConfig()))
    assert x.shape[1] % 2 == 0  # 27 free parameters + the dummy coordinate
    f, g, H = obj.hessian(x)
    for r in range(3):
        fr, gr, Hr = obj.hessian(x[r : r + 1], torch.tensor([r]))
        assert torch.equal(fr[0], f[r]) and torch.equal(gr[0], g[r]) and torch.equal(Hr[0], H[r])
    cfg = hmoe.HMoEConfig(n_test=200, max_iter=25)
    together = hmoe.fit_block(setting, 60, [7, 8], cfg)
    alone = hmoe.fit_block(setting, 60, [8], cfg)
    for key in ("losses", "iterations", "train_loss", "converged"):
        assert together[1][key] == alone[0][key]


def test_data_are_nested_in_n_and_shared_by_positions() -> None:
    big, small = hmoe.sample(300, [1, 2]), hmoe.sample(120, [2])
    assert torch.equal(big[1, :120], small[0])
    # one truth: the plain heads' parameters are the gated positions' too
    plain = hmoe.true_params(hmoe.HMoESetting("plain", 2))
    for p in ("G1", "G2", "G3", "G4"):
        gated = hmoe.true_params(hmoe.HMoESetting(p, 2))
        assert torch.equal(gated["M"], plain["M"]) and torch.equal(gated["a"], plain["a"])


@pytest.mark.parametrize("position", list(hmoe.POSITIONS))
def test_nearly_noise_free_exact_fit_recovers_every_level(position: str) -> None:
    setting = hmoe.HMoESetting(position, 2)
    cfg = hmoe.HMoEConfig(sigma=1e-7, n_test=200)  # nearly noise-free (the decrement test is relative to L)
    (rec,) = hmoe.fit_block(setting, 200, [0], cfg)
    assert rec["converged"], rec["reason"]
    for name, value in rec["losses"].items():
        assert value < 1e-5, (name, value)


def test_level_losses_vanish_on_the_flat_set_and_ignore_head_order() -> None:
    setting = hmoe.HMoESetting("G1", 3)
    layout = HierarchicalLayout(setting.spec())
    x = hmoe.start_points(setting, [0], "displaced", hmoe.HMoEConfig())  # exact split, copies apart
    params = layout.unpack(x)
    losses = hmoe.level_losses(setting, params)
    assert losses["expert"].item() < 1e-12 and losses["inner"].item() < 1e-12
    assert losses["outer"].item() < 1e-12
    assert abs(losses["expert_spread"].item() - 0.3) < 1e-12  # moved +-0.3 along a_0 - a_2
    perm = {k: v[:, [2, 0, 1]] for k, v in params.items()}
    for k, v in hmoe.level_losses(setting, perm).items():
        torch.testing.assert_close(v, losses[k], rtol=0, atol=1e-12)
    # and f is the truth's there: the split with displaced copies is an exact reparametrisation
    X = hmoe.sample(30, [0])
    truth = hmoe.true_params(setting)
    f_true = HierarchicalLayout(setting.spec(2)).forward(HierarchicalLayout(setting.spec(2)).pack(truth), X)
    torch.testing.assert_close(layout.forward(x, X), f_true, rtol=0, atol=1e-12)


def test_preset_is_registered_resumes_and_refuses_bad_input(tmp_path: Path) -> None:
    assert "hmoe" in registry.preset_table()
    out = tmp_path / "run"
    bad = CliRunner().invoke(app, ["rates", "--preset", "hmoe", "--out", str(out), "--n-grid", "10,40",
                                   "--no-progress"])
    assert bad.exit_code == 2 and "every n must be >=" in bad.output and not out.exists()
    cfg = hmoe.HMoEConfig(n_test=100, max_iter=20)
    settings = hmoe.hmoe_settings(["plain"], [2])
    args = StudyArgs(out=out, n_grid=(40, 60), replicates=2, progress=False)
    first = run_hmoe(args, cfg, settings)
    assert first.fitted == 4 and first.reused == 0
    again = run_hmoe(args, cfg, settings)
    assert again.fitted == 0 and again.reused == 4
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["settings"]) == {"plain-exact"}
    assert "converged_fraction" in summary["settings"]["plain-exact"]
    assert "| plain-exact |" in again.markdown
    with pytest.raises(ValueError, match="other options"):
        run_hmoe(args, hmoe.HMoEConfig(n_test=100, max_iter=21), settings)
    with pytest.raises(ValueError, match="unknown gate position"):
        hmoe.hmoe_settings(["G6"])
