"""The training loop: schedule, weight-decay groups, resume == uninterrupted, early stopping.

A toy task (an ``Attention`` sequence classifier on synthetic data, and a random-block
variant with ``get_batch``) keeps these tests independent of the real task harnesses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from attnmoe.attention import Attention
from attnmoe.attention.variants import attention_kwargs
from attnmoe.tasks.spec import RunSpec
from attnmoe.train.loop import WarmupCosine, parameter_groups, train_task


class ToyNet(nn.Module):
    """Embedding -> one attention layer -> mean pool -> linear head (tied-free)."""

    def __init__(self, attention: str, vocab: int = 11, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        # bias=False: a key bias has an exactly-zero gradient under softmax (shift invariance),
        # and Adam would turn its float noise into O(lr) updates that differ between runs
        # whose summation order differs (1 vs 2 processes).
        self.attn = Attention(dim, 2, bias=False, **attention_kwargs(attention))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, T, D)
        h = h + self.attn(self.norm(h))
        return self.head(h.mean(dim=1))  # (B, C)


@dataclass
class ToyTask:
    """Synthetic classification: label = (sum of tokens) mod 3."""

    name: str = "toy"
    attention: str = "softmax"
    seed: int = 0
    n_train: int = 96
    random_blocks: bool = False
    primary_metric: str = "test_loss"
    lower_is_better: bool = True
    throughput_unit: str = "examples"
    eval_trace: list[tuple[str, dict[str, torch.Tensor]]] = field(default_factory=list)
    scripted_val: list[float] | None = None

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        self.model = ToyNet(self.attention)
        g = torch.Generator().manual_seed(1234)
        x = torch.randint(0, 11, (self.n_train + 64, 6), generator=g)
        y = x.sum(dim=1) % 3
        self.train_data = None if self.random_blocks else TensorDataset(x[: self.n_train], y[: self.n_train])
        self._x, self._y = x, y
        self.val_data = TensorDataset(x[self.n_train : self.n_train + 32], y[self.n_train : self.n_train + 32])
        self.test_data = TensorDataset(x[self.n_train + 32 :], y[self.n_train + 32 :])
        if self.random_blocks:
            self.get_batch = self._get_batch

    def _get_batch(self, split: str, batch_size: int, generator: torch.Generator) -> Any:
        idx = torch.randint(0, self.n_train, (batch_size,), generator=generator)
        return self._x[idx], self._y[idx]

    def loss_fn(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y = (self.val_data if split == "val" else self.test_data).tensors
        self.eval_trace.append((split, {k: v.clone() for k, v in model.state_dict().items()}))
        loss = float(nn.functional.cross_entropy(model(x), y))
        if split == "val" and self.scripted_val is not None:
            loss = self.scripted_val[sum(1 for s, _ in self.eval_trace if s == "val") - 1]
        return {f"{split}_loss": loss}


def _config(**kw: Any) -> RunSpec:
    base = {"task": "toy", "dataset": "toy", "steps": 12, "batch_size": 16, "lr": 3e-3,
            "warmup_steps": 2, "eval_interval": 4, "checkpoint_interval": 4, "log_interval": 2,
            "seed": 3, "weight_decay": 0.1}
    base.update(kw)
    return RunSpec(**base)


def train(task: Any, spec: RunSpec, out_dir: Path, **kw: Any) -> dict[str, Any]:
    return train_task(task, spec, out_dir, **kw)


def test_warmup_cosine_matches_formula() -> None:
    sched = WarmupCosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert sched(0) == pytest.approx(1 / 10) and sched(9) == pytest.approx(1.0)
    assert sched(10) == pytest.approx(1.0)
    assert sched(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert sched(110) == pytest.approx(0.1)
    assert sched(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 25 / 100)))


def test_weight_decay_groups() -> None:
    net = ToyNet("softmax")
    groups = parameter_groups(net, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert id(net.head.weight) in decayed and id(net.head.bias) not in decayed
    assert id(net.embed.weight) not in decayed and id(net.norm.weight) not in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    # tied embedding / head weight: one parameter, no decay
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    groups = parameter_groups(tied, 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and len(groups[0]["params"]) == 1


@pytest.mark.parametrize("random_blocks", [False, True])
def test_resume_equals_uninterrupted(tmp_path: Path, random_blocks: bool) -> None:
    full = train(ToyTask(random_blocks=random_blocks), _config(), tmp_path / "full", progress=False)
    part = train(ToyTask(random_blocks=random_blocks), _config(), tmp_path / "cut", progress=False,
                 stop_after=6)  # 6 is not a checkpoint step: the loop saves on interruption
    assert part == {} and not (tmp_path / "cut" / "metrics.json").exists()
    resumed = train(ToyTask(random_blocks=random_blocks), _config(), tmp_path / "cut",
                    progress=False, resume=True)
    a = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed["test_loss"] == full["test_loss"] and resumed["val_loss"] == full["val_loss"]
    curve = lambda p: [r for r in map(json.loads, (p / "log.jsonl").read_text().splitlines())
                       if "val_loss" in r]
    assert curve(tmp_path / "full") == curve(tmp_path / "cut")


def test_run_writes_outputs_and_refuses_to_mix(tmp_path: Path) -> None:
    metrics = train(ToyTask(), _config(steps=4), tmp_path, progress=False,
                    run_info={"task": "toy"})
    for name in ("metrics.json", "log.jsonl", "config.json"):
        assert (tmp_path / name).is_file()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics and saved["steps"] == 4
    assert saved["n_params"] == sum(p.numel() for p in ToyNet("softmax").parameters())
    assert json.loads((tmp_path / "config.json").read_text())["task"] == "toy"
    with pytest.raises(FileExistsError, match="resume"):
        train(ToyTask(), _config(steps=4), tmp_path, progress=False)


def test_epochs_set_steps_from_training_size(tmp_path: Path) -> None:
    metrics = train(ToyTask(), _config(steps=None, epochs=2.0, batch_size=32), tmp_path,
                    progress=False)
    assert metrics["steps"] == 2 * (96 // 32)


def test_early_stopping_restores_best_weights(tmp_path: Path) -> None:
    # validation metric scripted: best at the 2nd evaluation (step 4), then worse twice
    task = ToyTask(scripted_val=[0.9, 0.5, 0.7, 0.8, 0.95, 0.99])
    metrics = train(task, _config(steps=40, eval_interval=2, patience=2), tmp_path, progress=False)
    assert metrics["stopped_early"] and metrics["steps"] == 8 and metrics["best_step"] == 4
    vals = [w for s, w in task.eval_trace if s == "val"]
    tested = [w for s, w in task.eval_trace if s == "test"]
    best, tested = vals[1], tested[-1]
    for k in best:
        torch.testing.assert_close(tested[k], best[k], rtol=0, atol=0)
    assert not torch.equal(vals[3]["head.weight"], best["head.weight"])  # weights at step 8


def test_spec_errors() -> None:
    with pytest.raises(ValueError, match="exactly one of --steps or --epochs"):
        _config(steps=3, epochs=1.0)
    with pytest.raises(ValueError, match="--lr"):
        _config(lr=0.0)
    with pytest.raises(ValueError, match="unknown run option"):
        _config().override(stepz=4)
    spec = _config(steps=None, epochs=2.0, model={"dim": 64}).override(steps=7, model={"dim": 8})
    assert spec.steps == 7 and spec.epochs is None and spec.model["dim"] == 8
    with pytest.raises(ValueError, match="--model key"):
        spec.override(model={"width": 3})
