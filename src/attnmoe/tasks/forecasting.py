"""A transformer forecaster: iTransformer (Liu et al., arXiv 2310.06625), variates as tokens.

Each of the ``C`` channels' whole input window (length ``L``) is one token; attention mixes
channels, the feed-forward network acts on each channel's representation. With series
normalisation (RevIN-style instance normalisation, Kim et al. 2022, as in the iTransformer
reference code, ``use_norm=True``), for an input ``x`` of shape ``(B, L, C)``::

    mu = mean_t x,  s = sqrt(var_t x + 1e-5)            # (B, 1, C), population variance
    u  = ((x - mu) / s)^T W_emb + b_emb                  # (B, C, d_model): embed each channel's L values
    u' = LN(u + Dropout(Attn(u)))                        # post-norm encoder layer (as the paper's code)
    u  = LN(u' + Dropout(GELU(u' W_1 + b_1) W_2 + b_2))  #   x e_layers, then a final LayerNorm
    y  = (u W_proj + b_proj)^T * s + mu                  # (B, H, C)

With ``n_targets`` (TSL's ``MS`` / ``S`` features), only the last ``n_targets`` channel tokens
are projected: ``y`` is ``(B, H, n_targets)``, the same numbers as slicing the full output (the
projection acts on each token alone), as TSL's ``outputs[:, :, f_dim:]``.

Attention is ``attnmoe.attention.Attention`` (non-causal) built from a variant NAME, so every
variant plugs in. Departure from the reference code, written down in ``docs/tasks.md``: the
time-stamp covariates (``x_mark``, extra tokens in the reference code) are not used; the model
sees only the channels.

The task ``forecast`` (registered at the end of this file, beside its reference recipe): a named
Time-Series-Library data set or a TSL-layout CSV; headline metric ``test_mse`` (normalised scale).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmoe.attention import Attention
from attnmoe.attention.variants import attention_kwargs
from attnmoe.tasks.data import load_forecast_splits, resolve_data_dir
from attnmoe.tasks.data.timeseries import (
    DEFAULT_TARGET,
    FORECAST_ALIASES,
    FORECAST_DATASETS,
    WindowDataset,
    default_lengths,
)
from attnmoe.tasks.registry import (
    EVAL_BATCH,
    Task,
    TaskEntry,
    check_model_memory,
    device_of,
    in_eval_mode,
    int_size,
    make_task,
    register_task,
    split_of,
)
from attnmoe.tasks.spec import RunSpec


class InvertedEncoderLayer(nn.Module):
    """Post-norm encoder layer of iTransformer: ``LN(x + Attn(x))`` then ``LN(x + FFN(x))``.

    Args:
        d_model: token width.
        heads: attention heads.
        d_ff: feed-forward hidden width.
        attention: attention variant name.
        dropout: dropout on attention weights, attention output and FFN.
    """

    def __init__(self, d_model: int, heads: int, d_ff: int, *, attention: str, dropout: float) -> None:
        super().__init__()
        self.attn = Attention(d_model, heads, causal=False, dropout=dropout, **attention_kwargs(attention))
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, d_model) -> (B, C, d_model)
        x = self.norm1(x + self.dropout(self.attn(x)))
        return self.norm2(x + self.ff(x))


class ITransformer(nn.Module):
    """iTransformer forecaster (variates as tokens, instance normalisation).

    Args:
        seq_len: input length ``L``.
        pred_len: horizon ``H``.
        n_channels: number of channels ``C`` (checked in ``forward``).
        d_model: token width.
        d_ff: feed-forward hidden width.
        e_layers: encoder layers.
        heads: attention heads (must divide ``d_model``).
        attention: attention variant name.
        dropout: dropout probability.
        use_norm: instance (series) normalisation of each input window.
        n_targets: forecast only the last ``n_targets`` channels (default: all ``C``).
    """

    def __init__(
        self,
        *,
        seq_len: int,
        pred_len: int,
        n_channels: int,
        d_model: int = 256,
        d_ff: int = 256,
        e_layers: int = 2,
        heads: int = 8,
        attention: str = "softmax",
        dropout: float = 0.1,
        use_norm: bool = True,
        n_targets: int | None = None,
    ) -> None:
        super().__init__()
        n_targets = n_channels if n_targets is None else n_targets
        for name, val in (("seq_len", seq_len), ("pred_len", pred_len), ("n_channels", n_channels),
                          ("d_model", d_model), ("d_ff", d_ff), ("e_layers", e_layers), ("heads", heads),
                          ("n_targets", n_targets)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if n_targets > n_channels:
            raise ValueError(f"n_targets ({n_targets}) must be <= n_channels ({n_channels})")
        self.seq_len, self.pred_len, self.n_channels, self.use_norm = seq_len, pred_len, n_channels, use_norm
        self.n_targets = n_targets
        self.embed = nn.Linear(seq_len, d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            InvertedEncoderLayer(d_model, heads, d_ff, attention=attention, dropout=dropout)
            for _ in range(e_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.projector = nn.Linear(d_model, pred_len)

    def forward(self, x: Tensor) -> Tensor:
        """Forecast ``(B, H, n_targets)`` (the last channels) from an input window ``x`` ``(B, L, C)``."""
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.n_channels:
            raise ValueError(
                f"expected input (B, {self.seq_len}, {self.n_channels}), got {tuple(x.shape)}"
            )
        if self.use_norm:
            mu = x.mean(dim=1, keepdim=True).detach()  # (B, 1, C)
            x = x - mu
            s = (x.var(dim=1, keepdim=True, unbiased=False) + 1e-5).sqrt().detach()  # (B, 1, C)
            x = x / s
        u = self.embed_dropout(self.embed(x.transpose(1, 2)))  # (B, C, d_model)
        for layer in self.layers:
            u = layer(u)
        k = self.n_targets
        y = self.projector(self.norm(u[:, -k:])).transpose(1, 2)  # (B, H, k)
        if self.use_norm:
            y = y * s[..., -k:] + mu[..., -k:]
        return y


# ---------------------------------------------------------------- task: recipe and builder

FORECAST_RECIPE = RunSpec(
    task="forecast", dataset="ETTh1", horizon=96, features="M", target=DEFAULT_TARGET,
    epochs=10, batch_size=32, lr=1e-4, min_lr_ratio=0.1, warmup_steps=0, weight_decay=0.0,
    beta1=0.9, beta2=0.999, grad_clip=1.0, eval_interval=0, patience=3, checkpoint_interval=0,
    model={"seq_len": 96, "d_model": 256, "d_ff": 256, "e_layers": 2, "heads": 8, "dropout": 0.1,
           "use_norm": True},
)
"""iTransformer's ETTh1 script (d_model 256, d_ff 256, 2 layers, 8 heads, dropout 0.1, batch 32,
lr 1e-4, 10 epochs, patience 3). ``eval_interval = 0`` / ``checkpoint_interval = 0`` mean "once
per epoch" (resolved by the loop from the number of training windows). The input length
``seq_len`` and the horizon default to the data set's standard ones (:func:`forecast_recipe`);
features ``M`` (all channels -> all) with target ``OT``, as TSL's scripts."""


def forecast_recipe(dataset: str) -> RunSpec:
    """The reference recipe on ``dataset``: its standard input length and first horizon."""
    seq_len, horizons = default_lengths(dataset)
    return replace(FORECAST_RECIPE, dataset=dataset, horizon=horizons[0],
                   model={**FORECAST_RECIPE.model, "seq_len": seq_len})


def _mse_loss(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch  # (B, L, C), (B, H, n_targets)
    return F.mse_loss(model(x), y)


@register_task("forecast", recipe=forecast_recipe, primary_metric="test_mse", monitor="val_mse",
               lower_is_better=True, throughput_unit="windows", datasets=lambda: tuple(FORECAST_DATASETS),
               paths=True, aliases=FORECAST_ALIASES)
def build_forecast(spec: RunSpec, data_dir: Path | None, entry: TaskEntry) -> Task:
    """iTransformer on a named TSL data set or a TSL-layout CSV, with TSL's ``spec.features``
    (``M``/``S``/``MS``) and ``spec.target``; loss = MSE on the normalised scale of the target
    channels; metrics ``{split}_mse``, ``{split}_mae`` averaged over every window and element,
    and ``n_{split}_windows``."""
    horizon, features, target = spec.horizon, spec.features, spec.target
    if horizon is None or features is None or target is None:  # the recipe sets all three
        raise ValueError(f"the forecast task needs --horizon, --features and --target, got {horizon!r}, "
                         f"{features!r}, {target!r}")
    sizes = dict(spec.model)
    seq_len = sizes["seq_len"]
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"--model seq_len must be a positive integer, got {seq_len!r}")
    root = resolve_data_dir(data_dir) if spec.dataset in FORECAST_DATASETS else None
    splits = load_forecast_splits(spec.dataset, root, seq_len=seq_len, pred_len=horizon,
                                  features=features, target=target)
    check_model_memory(lambda: ITransformer(pred_len=horizon, n_channels=splits.n_channels,
                                            n_targets=splits.n_targets, attention=spec.attention, **sizes), spec,
                       floats_per_example=splits.n_channels
                       * (seq_len + int_size(sizes["d_model"]) * int_size(sizes["e_layers"])))
    torch.manual_seed(spec.seed)
    model = ITransformer(pred_len=horizon, n_channels=splits.n_channels, n_targets=splits.n_targets,
                         attention=spec.attention, **sizes)
    data: dict[str, WindowDataset | None] = {"val": splits.val, "test": splits.test}

    @in_eval_mode
    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        windows = split_of(data, split, "forecast")
        device = device_of(model)
        sq, ab, count = 0.0, 0.0, 0
        for start in range(0, len(windows), EVAL_BATCH):
            idx = torch.arange(start, min(start + EVAL_BATCH, len(windows)))
            x, y = windows.batch(idx)  # (b, L, C), (b, H, n_targets)
            err = model(x.to(device)) - y.to(device)
            sq += float(err.double().square().sum())
            ab += float(err.double().abs().sum())
            count += err.numel()
        return {f"{split}_mse": sq / count, f"{split}_mae": ab / count, f"n_{split}_windows": len(windows)}

    mode = "" if spec.features == "M" else f"/{spec.features}-{spec.target}"
    return make_task(
        entry, spec, f"forecast/{spec.dataset}/H{spec.horizon}{mode}/{spec.attention}",
        model=model, train_data=splits.train, val_data=splits.val, test_data=splits.test,
        loss_fn=_mse_loss, evaluate=evaluate,
        info={"source": splits.source, "seq_len": seq_len, "pred_len": spec.horizon, "channels": splits.channels,
              "features": splits.features, "target": splits.target, "n_targets": splits.n_targets,
              "borders": splits.borders, "n_train_windows": len(splits.train), "n_val_windows": len(splits.val),
              "n_test_windows": len(splits.test), "scaler_mean": splits.mean.tolist(),
              "scaler_std": splits.std.tolist()},
    )
