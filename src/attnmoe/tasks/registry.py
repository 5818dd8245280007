"""Task registry: ``build_task(task, dataset, ...)`` returns data + model + loss + metrics + recipe.

Three tasks, each with its reference training recipe (the defaults of ``attnmoe train``; why
each value was chosen is in ``docs/tasks.md``):

- ``vision``: ViT on ``fashion-mnist`` / ``mnist`` (IDX files) or ``digits`` (sklearn 8x8);
  loss = mean cross-entropy; metrics ``{split}_loss``, ``{split}_accuracy``.
- ``lm``: character GPT on ``shakespeare`` or any UTF-8 text file; loss = mean next-character
  cross-entropy (nats/char); metric ``val_loss`` over non-overlapping blocks of the validation
  split (no test split: 90/10 protocol, as nanoGPT).
- ``forecast``: iTransformer on ``ETTh1``, ``ETTh2``, ``exchange_rate``, ``illness`` or a
  TSL-layout CSV; loss = MSE on the normalised scale; metrics ``{split}_mse``, ``{split}_mae``
  averaged over every window and element, and ``n_{split}_windows``.

``Task.evaluate(model, split)`` returns metric names prefixed by ``split`` (``val``/``test``),
evaluates in eval mode without gradients, and restores the model's mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from attnmoe.attention.variants import attention_kwargs
from attnmoe.tasks.data import (
    load_char_corpus,
    load_digits_splits,
    load_forecast_splits,
    load_idx_splits,
    resolve_data_dir,
)
from attnmoe.tasks.data.images import IDX_DATASETS
from attnmoe.tasks.data.text import BlockDataset
from attnmoe.tasks.data.timeseries import FORECAST_DATASETS, WindowDataset, default_lengths
from attnmoe.tasks.forecasting import ITransformer
from attnmoe.tasks.language import GPT
from attnmoe.tasks.vision import ViT

TaskName = Literal["vision", "lm", "forecast"]
TASKS: tuple[str, ...] = ("vision", "lm", "forecast")
TEXT_DATASETS = {"shakespeare": "shakespeare/shakespeare_complete.txt"}
EVAL_BATCH = 1000
"""Images / windows / LM blocks per forward pass in ``evaluate``."""


@dataclass(frozen=True)
class Recipe:
    """A reference training recipe (field names match ``attnmoe.train.loop.TrainConfig``).

    Args:
        steps / epochs: training length (exactly one is set).
        batch_size: global batch size.
        lr: peak learning rate; ``min_lr_ratio``: cosine floor as a fraction of ``lr``.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay (Linear weights only, applied by the loop).
        beta1, beta2: AdamW betas.
        grad_clip: global gradient-norm clip (``None``: none).
        eval_interval: steps between validation evaluations.
        patience: early-stopping patience in evaluations (``None``: no early stopping).
        checkpoint_interval: steps between checkpoints.
        model: model sizes (keyword arguments of the model class); overridable.
    """

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = 1.0
    eval_interval: int = 250
    patience: int | None = None
    checkpoint_interval: int = 500
    model: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """A task instance: data, model, loss, metrics and recipe.

    Attributes:
        name: ``"<task>/<dataset>/<attention>"``.
        task, dataset, attention: what was built.
        model: the model (``nn.Module``), built from ``recipe.model``.
        train_data, val_data, test_data: map-style Datasets yielding ``(x, y)`` (``test_data``
            is ``None`` for ``lm``).
        loss_fn: ``loss_fn(model, batch) -> scalar mean loss`` for a collated ``(x, y)`` batch.
        evaluate: ``evaluate(model, split) -> {f"{split}_{metric}": value}`` for ``val``/``test``.
        recipe: the reference training recipe.
        primary_metric: the headline metric of the output contract.
        monitor: the validation metric for early stopping / model selection.
        lower_is_better: for ``monitor`` and ``primary_metric``.
        throughput_unit: ``"images"``, ``"tokens"`` or ``"windows"``.
        get_batch: ``lm`` only: ``get_batch(split, batch_size, generator) -> (x, y)`` random
            blocks (nanoGPT sampling); ``None`` otherwise.
        info: data facts (split sizes, vocabulary, scaler, ...), for ``config.json``.
    """

    name: str
    task: str
    dataset: str
    attention: str
    model: nn.Module
    train_data: Dataset
    val_data: Dataset
    test_data: Dataset | None
    loss_fn: Callable[[nn.Module, Any], Tensor]
    evaluate: Callable[[nn.Module, str], dict[str, float]]
    recipe: Recipe
    primary_metric: str
    monitor: str
    lower_is_better: bool
    throughput_unit: str
    get_batch: Callable[[str, int, torch.Generator], tuple[Tensor, Tensor]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reference recipes

VISION_RECIPE = Recipe(
    epochs=10, batch_size=128, lr=2e-3, min_lr_ratio=0.01, warmup_steps=200, weight_decay=0.05,
    beta1=0.9, beta2=0.999, grad_clip=1.0, eval_interval=430, checkpoint_interval=430,
    model={"patch_size": 7, "dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "dropout": 0.0},
)
"""ViT on 28x28 images: 16 patches of 7x7 + class token, 4 blocks of width 64, 10 epochs
(88.4 % Fashion-MNIST test accuracy at seed 0, ``docs/tasks.md``)."""

DIGITS_RECIPE = replace(
    VISION_RECIPE, epochs=60, batch_size=64, warmup_steps=50, eval_interval=100, checkpoint_interval=500,
    model={"patch_size": 2, "dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "dropout": 0.0},
)
"""ViT on the 8x8 digits: 16 patches of 2x2."""

LM_RECIPE = Recipe(
    steps=2000, batch_size=12, lr=1e-3, min_lr_ratio=0.1, warmup_steps=100, weight_decay=0.1,
    beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=250, checkpoint_interval=500,
    model={"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0, "eval_blocks": 2048},
)
"""nanoGPT's CPU recipe for shakespeare_char (4 layers, 4 heads, 128 wide, block 64, batch 12,
2,000 steps, lr 1e-3 -> 1e-4 cosine, warm-up 100, AdamW betas (0.9, 0.99), weight decay 0.1,
clip 1.0, dropout 0). ``eval_blocks``: validation blocks per evaluation (see ``docs/tasks.md``)."""

FORECAST_RECIPE = Recipe(
    epochs=10, batch_size=32, lr=1e-4, min_lr_ratio=0.1, warmup_steps=0, weight_decay=0.0,
    beta1=0.9, beta2=0.999, grad_clip=1.0, eval_interval=0, patience=3, checkpoint_interval=0,
    model={"d_model": 256, "d_ff": 256, "e_layers": 2, "heads": 8, "dropout": 0.1, "use_norm": True},
)
"""iTransformer's ETTh1 script (d_model 256, d_ff 256, 2 layers, 8 heads, dropout 0.1, batch 32,
lr 1e-4, 10 epochs, patience 3). ``eval_interval = 0`` / ``checkpoint_interval = 0`` mean
"once per epoch" and are resolved by ``build_task`` from the number of training windows."""


def default_recipe(task: str, dataset: str) -> Recipe:
    """The reference recipe of a task / data set (before data-dependent resolution)."""
    if task == "vision":
        return DIGITS_RECIPE if dataset == "digits" else VISION_RECIPE
    if task == "lm":
        return LM_RECIPE
    if task == "forecast":
        return FORECAST_RECIPE
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


# ---------------------------------------------------------------- helpers


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _xy_loss(loss: Callable[[Tensor, Tensor], Tensor]) -> Callable[[nn.Module, Any], Tensor]:
    def loss_fn(model: nn.Module, batch: Any) -> Tensor:
        x, y = batch
        return loss(model(x), y)

    return loss_fn


def _lm_loss(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch  # (B, T), (B, T)
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _mse_loss(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch  # (B, L, C), (B, H, C)
    return F.mse_loss(model(x), y)


def _split_of(splits: dict[str, Dataset | None], split: str, task: str) -> Dataset:
    data = splits.get(split)
    if data is None:
        raise ValueError(f"task {task!r} has no {split!r} split; expected one of "
                         f"{[k for k, v in splits.items() if v is not None]}")
    return data


def _in_eval_mode(fn: Callable[[nn.Module, str], dict[str, float]]) -> Callable[[nn.Module, str], dict[str, float]]:
    def wrapped(model: nn.Module, split: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(model, split)
        finally:
            model.train(was_training)

    return wrapped


def _check_overrides(overrides: dict[str, Any], recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split overrides into (recipe fields, model sizes); unknown keys raise."""
    recipe_fields = set(Recipe.__dataclass_fields__) - {"model"}
    rec, mod = {}, {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in recipe_fields:
            rec[key] = value
        elif key in recipe.model:
            mod[key] = value
        else:
            raise ValueError(
                f"unknown override {key!r}; recipe fields {sorted(recipe_fields)}, "
                f"model sizes {sorted(recipe.model)}"
            )
    if "steps" in rec:
        rec.setdefault("epochs", None)
    if "epochs" in rec:
        rec.setdefault("steps", None)
    return rec, mod


# ---------------------------------------------------------------- builders


def build_task(
    task: TaskName,
    dataset: str,
    *,
    data_dir: str | Path | None,
    attention: str,
    seed: int,
    horizon: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> Task:
    """Build a task: load and validate the data, build the model with ``seed``, attach the recipe.

    Args:
        task: ``"vision"``, ``"lm"`` or ``"forecast"``.
        dataset: vision: ``fashion-mnist``, ``mnist``, ``digits``; lm: ``shakespeare`` or a text
            file path; forecast: ``ETTh1``, ``ETTh2``, ``exchange_rate``, ``illness`` or a CSV path.
        data_dir: folder of the named data sets (else ``$ATTNMOE_DATA_DIR``; not needed for
            ``digits`` or a file path).
        attention: attention variant name (``softmax``, ``active-gelu``, ``gated-g1``, ``sigmoid``,
            combinations joined by ``+``; see ``attnmoe.attention.variants``).
        seed: seeds the model initialisation (``torch.manual_seed``).
        horizon: forecast horizon (forecast only; default the data set's first standard horizon).
        overrides: recipe fields (``steps``, ``epochs``, ``batch_size``, ``lr``, ...) or model sizes
            (the keys of ``recipe.model``, e.g. ``dim``, ``n_layer``, ``d_model``, ``seq_len``).

    Raises:
        ValueError: unknown task / data set / variant / override, bad data (naming the file).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    attention_kwargs(attention)  # fail on a bad variant name before loading any data
    if horizon is not None and task != "forecast":
        raise ValueError(f"horizon is only used by the forecast task, not {task!r}")
    overrides = dict(overrides or {})
    if task == "vision":
        return _build_vision(dataset, data_dir, attention, seed, overrides)
    if task == "lm":
        return _build_lm(dataset, data_dir, attention, seed, overrides)
    return _build_forecast(dataset, data_dir, attention, seed, horizon, overrides)


def _build_vision(dataset: str, data_dir: str | Path | None, attention: str, seed: int,
                  overrides: dict[str, Any]) -> Task:
    if dataset == "digits":
        splits = load_digits_splits()
    elif dataset in IDX_DATASETS:
        splits = load_idx_splits(resolve_data_dir(data_dir) / dataset)
    else:
        raise ValueError(f"unknown vision data set {dataset!r}; expected one of {['digits', *IDX_DATASETS]}")
    recipe = default_recipe("vision", dataset)
    rec, mod = _check_overrides(overrides, recipe)
    recipe = replace(recipe, **rec, model={**recipe.model, **mod})
    torch.manual_seed(seed)
    model = ViT(image_size=splits.image_size, in_channels=splits.channels, num_classes=splits.num_classes,
                attention=attention, **recipe.model)
    data = {"val": splits.val, "test": splits.test}

    @_in_eval_mode
    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        x_all, y_all = _split_of(data, split, "vision").tensors
        device = _device_of(model)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y_all), EVAL_BATCH):
            x = x_all[start : start + EVAL_BATCH].to(device)
            y = y_all[start : start + EVAL_BATCH].to(device)
            logits = model(x)  # (b, classes)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        n = len(y_all)
        return {f"{split}_loss": loss_sum / n, f"{split}_accuracy": correct / n}

    return Task(
        name=f"vision/{dataset}/{attention}", task="vision", dataset=dataset, attention=attention,
        model=model, train_data=splits.train, val_data=splits.val, test_data=splits.test,
        loss_fn=_xy_loss(F.cross_entropy), evaluate=evaluate, recipe=recipe,
        primary_metric="test_accuracy", monitor="val_accuracy", lower_is_better=False,
        throughput_unit="images",
        info={"n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
                  "pixel_mean": splits.mean, "pixel_std": splits.std, "image_size": splits.image_size},
    )


def _build_lm(dataset: str, data_dir: str | Path | None, attention: str, seed: int,
              overrides: dict[str, Any]) -> Task:
    if dataset in TEXT_DATASETS:
        path = resolve_data_dir(data_dir) / TEXT_DATASETS[dataset]
    else:
        path = Path(dataset)
        if not path.is_file():
            raise ValueError(f"unknown text data set {dataset!r}: not one of {sorted(TEXT_DATASETS)} "
                             f"and not an existing file")
    corpus = load_char_corpus(path)
    recipe = default_recipe("lm", dataset)
    rec, mod = _check_overrides(overrides, recipe)
    recipe = replace(recipe, **rec, model={**recipe.model, **mod})
    sizes = dict(recipe.model)
    eval_blocks = sizes.pop("eval_blocks")
    block = int(sizes["block_size"])
    torch.manual_seed(seed)
    model = GPT(vocab_size=corpus.vocab_size, attention=attention, **sizes)
    train_data, val_data = BlockDataset(corpus.train, block), BlockDataset(corpus.val, block)
    blocks = {"train": train_data, "val": val_data}

    # validation blocks: non-overlapping, evenly spread over the whole split, fixed for the run
    n_val_blocks = len(corpus.val) // (block + 1)
    chosen = torch.arange(n_val_blocks) if eval_blocks is None or eval_blocks >= n_val_blocks else \
        torch.linspace(0, n_val_blocks - 1, int(eval_blocks)).round().long()
    val_starts = chosen * (block + 1)

    def get_batch(split: str, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        data = _split_of(blocks, split, "lm")
        starts = torch.randint(len(data), (batch_size,), generator=generator)
        return data.batch(starts)

    @_in_eval_mode
    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        if split != "val":
            raise ValueError(f"task 'lm' evaluates the 'val' split only (90/10 protocol), got {split!r}")
        device = _device_of(model)
        total = 0.0
        for start in range(0, len(val_starts), EVAL_BATCH):
            x, y = val_data.batch(val_starts[start : start + EVAL_BATCH])
            logits = model(x.to(device))  # (b, T, V)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1),
                                           reduction="sum"))
        return {"val_loss": total / (len(val_starts) * block)}

    return Task(
        name=f"lm/{dataset}/{attention}", task="lm", dataset=dataset, attention=attention,
        model=model, train_data=train_data, val_data=val_data, test_data=None,
        loss_fn=_lm_loss, evaluate=evaluate, recipe=recipe,
        primary_metric="val_loss", monitor="val_loss", lower_is_better=True,
        throughput_unit="tokens", get_batch=get_batch,
        info={"source": corpus.source, "vocab_size": corpus.vocab_size, "n_train_chars": len(corpus.train),
                  "n_val_chars": len(corpus.val), "n_unk_val": corpus.n_unk_val, "unk_id": corpus.unk_id,
                  "n_eval_blocks": len(val_starts), "eval_tokens": len(val_starts) * block,
                  "chars": "".join(corpus.chars)},  # the vocabulary: id i is chars[i], UNK = V
    )


def _build_forecast(dataset: str, data_dir: str | Path | None, attention: str, seed: int,
                    horizon: int | None, overrides: dict[str, Any]) -> Task:
    default_len, horizons = default_lengths(dataset)
    seq_len = int(overrides.pop("seq_len", None) or default_len)
    pred_len = horizons[0] if horizon is None else horizon
    if not isinstance(pred_len, int) or pred_len < 1:
        raise ValueError(f"horizon must be a positive int, got {pred_len!r}")
    if dataset in FORECAST_DATASETS:
        splits = load_forecast_splits(dataset, resolve_data_dir(data_dir), seq_len=seq_len, pred_len=pred_len)
    else:
        splits = load_forecast_splits(dataset, None, seq_len=seq_len, pred_len=pred_len)
    recipe = default_recipe("forecast", dataset)
    rec, mod = _check_overrides(overrides, recipe)
    recipe = replace(recipe, **rec, model={**recipe.model, **mod})
    batch = int(recipe.batch_size)
    per_epoch = max(1, len(splits.train) // batch)
    recipe = replace(recipe, eval_interval=recipe.eval_interval or per_epoch,
                     checkpoint_interval=recipe.checkpoint_interval or per_epoch)
    torch.manual_seed(seed)
    model = ITransformer(seq_len=seq_len, pred_len=pred_len, n_channels=splits.n_channels,
                         attention=attention, **recipe.model)
    data: dict[str, WindowDataset | None] = {"val": splits.val, "test": splits.test}

    @_in_eval_mode
    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        windows = _split_of(data, split, "forecast")
        device = _device_of(model)
        sq, ab, count = 0.0, 0.0, 0
        for start in range(0, len(windows), EVAL_BATCH):
            idx = torch.arange(start, min(start + EVAL_BATCH, len(windows)))
            x, y = windows.batch(idx)  # (b, L, C), (b, H, C)
            err = model(x.to(device)) - y.to(device)
            sq += float(err.double().square().sum())
            ab += float(err.double().abs().sum())
            count += err.numel()
        return {f"{split}_mse": sq / count, f"{split}_mae": ab / count, f"n_{split}_windows": len(windows)}

    return Task(
        name=f"forecast/{dataset}/H{pred_len}/{attention}", task="forecast", dataset=dataset,
        attention=attention, model=model, train_data=splits.train, val_data=splits.val,
        test_data=splits.test, loss_fn=_mse_loss, evaluate=evaluate, recipe=recipe,
        primary_metric="test_mse", monitor="val_mse", lower_is_better=True, throughput_unit="windows",
        info={"source": splits.source, "seq_len": seq_len, "pred_len": pred_len, "channels": splits.channels,
                  "borders": splits.borders, "n_train_windows": len(splits.train), "n_val_windows": len(splits.val),
                  "n_test_windows": len(splits.test), "scaler_mean": splits.mean.tolist(),
                  "scaler_std": splits.std.tolist(), "steps_per_epoch": per_epoch},
    )


__all__ = ["TASKS", "Recipe", "Task", "build_task", "default_recipe"]
