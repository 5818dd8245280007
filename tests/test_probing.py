"""Attention-sink probes recorded with a run's final evaluation (train/probing.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from attnmoe.attention import Attention
from attnmoe.tasks.spec import RunSpec
from attnmoe.train.loop import train_task
from attnmoe.train.probing import evaluate_with_probes

DIM, HEADS, B, T = 8, 2, 3, 5


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a1 = Attention(DIM, HEADS)
        self.a2 = Attention(DIM, HEADS, output_gate="G1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.a1(x)
        return x + self.a2(x)


def _share_by_hand(layer: Attention, x: torch.Tensor) -> float:
    """Mean first-key weight of softmax(Q K^T / sqrt(D)), from the projections' weights."""
    q = (x @ layer.q_proj.weight.T + layer.q_proj.bias).view(B, T, HEADS, -1).transpose(1, 2)
    k = (x @ layer.k_proj.weight.T + layer.k_proj.bias).view(B, T, HEADS, -1).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, T, T)
    return w[..., 0].mean().item()


def test_probe_metrics_by_hand_and_evaluation_unchanged() -> None:
    torch.manual_seed(0)
    model = TwoLayers().double()
    x = torch.randn(B, T, DIM, dtype=torch.float64)

    def evaluate(m: nn.Module, split: str) -> dict[str, float]:
        return {f"{split}_out": float(m(x).sum().detach())}

    metrics, probed = evaluate_with_probes(evaluate, model, "test")
    assert metrics == evaluate(model, "test")  # the probes only read
    with torch.no_grad():
        x2 = x + model.a1(x)
        shares = [_share_by_hand(model.a1, x), _share_by_hand(model.a2, x2)]
        outs = [model.a1(x), model.a2(x2)]
    assert probed["test_first_token_share"] == pytest.approx(sum(shares) / 2, abs=1e-12)
    assert probed["test_max_abs_hidden"] == pytest.approx(max(x.abs().max().item(), x2.abs().max().item()))
    assert probed["test_max_abs_output"] == pytest.approx(max(o.abs().max().item() for o in outs))


def test_a_model_without_attention_gets_no_probe_metrics() -> None:
    metrics, probed = evaluate_with_probes(lambda m, s: {f"{s}_x": 1.0}, nn.Linear(2, 2), "val")
    assert metrics == {"val_x": 1.0} and probed == {}


class _Task:
    """One attention layer regressing a fixed target; val and test splits."""

    name, primary_metric, lower_is_better, throughput_unit = "toy", "test_loss", True, "examples"

    def __init__(self, test: bool) -> None:
        torch.manual_seed(0)
        self.model = TwoLayers()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(64, T, DIM, generator=g)
        data = torch.utils.data.TensorDataset(x, x.flip(1))
        self.train_data, self.val_data = data, data
        self.test_data = data if test else None

    def loss_fn(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y = self.val_data.tensors
        return {f"{split}_loss": float(nn.functional.mse_loss(model(x), y))}


@pytest.mark.parametrize("test_split", [True, False])
def test_runs_record_probes_of_their_last_split(tmp_path: Path, test_split: bool) -> None:
    spec = RunSpec(task="toy", dataset="toy", steps=3, batch_size=16, lr=1e-3, warmup_steps=1,
                   eval_interval=3, checkpoint_interval=3, log_interval=1, seed=0)
    metrics = train_task(_Task(test_split), spec, tmp_path, progress=False)
    split = "test" if test_split else "val"
    keys = {f"{split}_{q}" for q in ("first_token_share", "max_abs_hidden", "max_abs_output")}
    assert keys <= set(metrics) and keys <= set(json.loads((tmp_path / "metrics.json").read_text()))
    assert 0.0 < metrics[f"{split}_first_token_share"] < 1.0
    assert f"{'val' if test_split else 'test'}_first_token_share" not in metrics
