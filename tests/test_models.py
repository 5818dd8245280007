"""Task models and registry: forward/backward for every task x variant, causality, structure, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from attnmoe.tasks import GPT, ITransformer, ViT, build_task

VARIANTS = [
    "softmax", "active-gelu", "active-relu", "gated-g1", "gated-g1-headwise", "gated-g2", "sigmoid",
    "active-gelu+gated-g1",
]




def tiny_models(attention: str) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "vision": ViT(image_size=8, patch_size=4, in_channels=1, num_classes=3, dim=16, depth=2, heads=2,
                      attention=attention),
        "lm": GPT(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=16, attention=attention),
        "forecast": ITransformer(seq_len=12, pred_len=5, n_channels=3, d_model=16, d_ff=24, e_layers=2,
                                 heads=2, attention=attention, dropout=0.1),
    }


@pytest.mark.parametrize("attention", VARIANTS)
def test_forward_backward_every_task_and_variant(attention: str) -> None:
    models = tiny_models(attention)
    g = torch.Generator().manual_seed(1)
    batches = {
        "vision": (torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 1])),
        "lm": (torch.randint(11, (3, 6), generator=g), torch.randint(11, (3, 6), generator=g)),
        "forecast": (torch.randn(4, 12, 3, generator=g), torch.randn(4, 5, 3, generator=g)),
    }
    for name, model in models.items():
        x, y = batches[name]
        out = model(x)
        if name == "vision":
            assert out.shape == (4, 3)
            loss = F.cross_entropy(out, y)
        elif name == "lm":
            assert out.shape == (3, 6, 11)
            loss = F.cross_entropy(out.flatten(0, 1), y.flatten())
        else:
            assert out.shape == (4, 5, 3)
            loss = F.mse_loss(out, y)
        assert torch.isfinite(out).all(), (name, attention)
        loss.backward()
        for pname, param in model.named_parameters():
            assert param.grad is not None, (name, attention, pname)
            assert torch.isfinite(param.grad).all(), (name, attention, pname)
            assert param.grad.abs().sum() > 0, (name, attention, pname)


@pytest.mark.parametrize("attention", ["softmax", "active-relu", "gated-g1", "sigmoid"])
def test_gpt_is_causal(attention: str) -> None:
    model = GPT(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, attention=attention).eval()
    idx = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(0))
    for t in (0, 3, 7):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 11
        a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
        assert (a[:, t] - b[:, t]).abs().max() > 1e-4  # the changed token itself does matter
    # gradients agree: no position's loss reaches back from the future
    emb = model.tok_embed(idx).detach().requires_grad_(True)
    h = emb + model.pos_embed(torch.arange(8))
    for block in model.blocks:
        h = block(h)
    h[:, 2].sum().backward()
    assert emb.grad[:, 3:].abs().max() == 0 and emb.grad[:, :3].abs().max() > 0


def test_gpt_ties_weights_and_rejects_long_input() -> None:
    model = GPT(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8)
    assert model.lm_head.weight is model.tok_embed.weight
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 7, dtype=torch.long))


def test_vit_patches_match_manual_slicing() -> None:
    model = ViT(image_size=8, patch_size=4, in_channels=2, num_classes=3, dim=16, depth=1, heads=2)
    x = torch.randn(2, 2, 8, 8)
    patches = model.to_patches(x)  # (B, 4, 32)
    assert patches.shape == (2, 4, 32)
    for i in range(2):
        for j in range(2):
            manual = x[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].permute(0, 2, 3, 1).reshape(2, -1)
            torch.testing.assert_close(patches[:, 2 * i + j], manual)
    with pytest.raises(ValueError, match="does not divide"):
        ViT(image_size=8, patch_size=3, in_channels=1, num_classes=3)
    with pytest.raises(ValueError, match="expected images"):
        model(torch.randn(2, 1, 8, 8))


def test_itransformer_channel_equivariance_and_shift() -> None:
    model = ITransformer(seq_len=12, pred_len=5, n_channels=4, d_model=16, d_ff=16, heads=2).eval()
    x = torch.randn(3, 12, 4)
    y = model(x)
    perm = torch.tensor([2, 0, 3, 1])
    # variates are tokens without a channel embedding: permuting channels permutes forecasts
    torch.testing.assert_close(model(x[:, :, perm]), y[:, :, perm], rtol=1e-5, atol=1e-5)
    # instance normalisation: a constant shift of a channel shifts its forecast exactly
    shift = torch.tensor([0.0, 5.0, -3.0, 100.0])
    torch.testing.assert_close(model(x + shift), y + shift, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the registry


def _tiny_csv(path: Path, rows: int = 200) -> None:
    t = np.arange(rows)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=rows, freq="h").astype(str),
                          "a": np.sin(t / 5), "b": np.cos(t / 7) + 0.01 * t, "OT": np.sin(t / 3) * 2})
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("attention", ["softmax", "gated-g1"])
def test_build_task_forecast_evaluate_is_mean_over_every_window(tmp_path: Path, attention: str) -> None:
    _tiny_csv(tmp_path / "s.csv")
    task = build_task("forecast", str(tmp_path / "s.csv"), data_dir=None, attention=attention, seed=0,
                      horizon=6, overrides={"seq_len": 16, "d_model": 16, "d_ff": 16, "heads": 2, "e_layers": 1})
    assert task.spec.eval_interval == 0 and task.spec.model["seq_len"] == 16  # 0 = once per epoch
    metrics = task.evaluate(task.model, "test")
    task.model.eval()
    with torch.no_grad():  # independent: one window at a time through __getitem__
        errs = np.stack([(task.model(x[None]) - y[None]).numpy() for x, y in
                         (task.test_data[i] for i in range(len(task.test_data)))])
    assert metrics["n_test_windows"] == len(errs) == 40 + 16 - 16 - 6 + 1
    assert metrics["test_mse"] == pytest.approx(float((errs.astype(np.float64) ** 2).mean()), rel=1e-6)
    assert metrics["test_mae"] == pytest.approx(float(np.abs(errs.astype(np.float64)).mean()), rel=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(task.train_data, batch_size=4)))
    assert torch.isfinite(task.loss_fn(task.model, batch))


def test_build_task_lm_and_vision(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("to be or not to be, that is the question\n" * 40, encoding="utf-8")
    task = build_task("lm", str(tmp_path / "c.txt"), data_dir=None, attention="active-gelu", seed=0,
                      overrides={"block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16, "eval_blocks": None, "steps": 5})
    assert task.spec.steps == 5 and task.spec.epochs is None and task.test_data is None
    x, y = task.get_batch("train", 3, torch.Generator().manual_seed(0))
    x2, _ = task.get_batch("train", 3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 8) and torch.equal(x, x2) and torch.equal(x[:, 1:], y[:, :-1])
    # val_loss: mean cross-entropy over every non-overlapping block of the val split
    val = task.val_data.ids
    n_blocks = len(val) // 9
    blocks = val[: n_blocks * 9].view(n_blocks, 9)  # (n, T + 1)
    task.model.eval()
    with torch.no_grad():
        logits = task.model(blocks[:, :-1])
        ref = F.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten())
    assert task.evaluate(task.model, "val")["val_loss"] == pytest.approx(float(ref), rel=1e-5)
    with pytest.raises(ValueError, match="val' split only"):
        task.evaluate(task.model, "test")

    vis = build_task("vision", "digits", data_dir=None, attention="sigmoid", seed=0,
                     overrides={"dim": 16, "depth": 1, "heads": 2})
    metrics = vis.evaluate(vis.model, "val")
    x, y = vis.val_data.tensors
    vis.model.eval()
    with torch.no_grad():
        acc = (vis.model(x).argmax(-1) == y).double().mean()
    assert metrics["val_accuracy"] == pytest.approx(float(acc))
    assert vis.primary_metric == "test_accuracy" and not vis.lower_is_better
    # the same seed gives the same initial weights
    again = build_task("vision", "digits", data_dir=None, attention="sigmoid", seed=0,
                       overrides={"dim": 16, "depth": 1, "heads": 2})
    assert all(torch.equal(a, b) for a, b in zip(vis.model.parameters(), again.model.parameters()))


def test_build_task_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task"):
        build_task("audio", "x", data_dir=None, attention="softmax", seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown attention variant"):
        build_task("vision", "digits", data_dir=None, attention="softmaxx", seed=0)
    with pytest.raises(ValueError, match="unknown vision data set"):
        build_task("vision", "cifar", data_dir=None, attention="softmax", seed=0)
    with pytest.raises(ValueError, match="unknown --model key.*widht"):
        build_task("vision", "digits", data_dir=None, attention="softmax", seed=0, overrides={"widht": 3})
    with pytest.raises(ValueError, match="horizon is only used"):
        build_task("vision", "digits", data_dir=None, attention="softmax", seed=0, horizon=3)
    with pytest.raises(ValueError, match="no data directory|does not exist"):
        build_task("vision", "fashion-mnist", data_dir=tmp_path / "nope", attention="softmax", seed=0)
