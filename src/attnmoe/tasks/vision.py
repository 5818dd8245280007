"""A small Vision Transformer (ViT, Dosovitskiy et al., arXiv 2010.11929) for image classification.

Every self-attention layer is ``attnmoe.attention.Attention`` built from a variant NAME, so all
attention variants (softmax, active, gated, sigmoid) plug in unchanged.

For an image ``x`` of shape ``(B, C, S, S)`` and patch size ``p`` (``N = (S/p)^2`` patches)::

    z_0 = [x_cls ; P(x) W_E + b_E] + E_pos        # (B, 1 + N, dim), P = patchify (einops)
    z'_l = z_{l-1} + Attn(LN(z_{l-1}))            # pre-norm blocks, l = 1..depth
    z_l  = z'_l + MLP(LN(z'_l)),  MLP(u) = GELU(u W_1 + b_1) W_2 + b_2
    logits = LN(z_depth)[:, 0] W_head + b_head    # the class token's final state

Linear weights, the class token and the position table start from a truncated normal with
std 0.02 (as in the ViT / timm reference code); biases at 0, LayerNorm at (1, 0).

The task ``vision`` (registered at the end of this file, beside its reference recipe):
``fashion-mnist`` / ``mnist`` (IDX files) or ``digits`` (scikit-learn 8x8); loss = mean
cross-entropy; metrics ``{split}_loss``, ``{split}_accuracy``; headline ``test_accuracy``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from attnmoe.attention import Attention, KVCache
from attnmoe.attention.variants import attention_kwargs
from attnmoe.tasks.data import load_digits_splits, load_idx_splits, resolve_data_dir
from attnmoe.tasks.data.images import IDX_DATASETS
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


class MLP(nn.Module):
    """Position-wise feed-forward block ``GELU(x W_1 + b_1) W_2 + b_2`` with dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class PreNormBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``.

    Args:
        dim: model width.
        heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        attention: attention variant name (see ``attnmoe.attention.variants``).
        causal: causal self-attention (language models).
        dropout: dropout on the attention weights, the attention output and the MLP output.
    """

    def __init__(
        self, dim: int, heads: int, *, mlp_ratio: float, attention: str, causal: bool, dropout: float
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal=causal, dropout=dropout, **attention_kwargs(attention))
        self.attn_dropout = nn.Dropout(dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, round(mlp_ratio * dim), dropout)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:  # (B, T, dim)
        x = x + self.attn_dropout(self.attn(self.ln1(x), cache=cache))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Small ViT classifier with a class token, learned position embedding and pre-norm blocks.

    Args:
        image_size: side ``S`` of the square input images.
        patch_size: side ``p`` of the square patches; must divide ``image_size``.
        in_channels: image channels ``C``.
        num_classes: number of classes.
        dim: model width.
        depth: number of transformer blocks.
        heads: attention heads (must divide ``dim``).
        mlp_ratio: MLP hidden width / ``dim``.
        attention: attention variant name, e.g. ``"softmax"``, ``"active-gelu"``, ``"gated-g1"``.
        dropout: dropout probability (embeddings, attention, MLP).

    Raises:
        ValueError: ``patch_size`` does not divide ``image_size`` or a size is not positive
            (attention options are validated by ``Attention``).
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        in_channels: int,
        num_classes: int,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        attention: str = "softmax",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, val in (("image_size", image_size), ("patch_size", patch_size),
                          ("in_channels", in_channels), ("num_classes", num_classes),
                          ("dim", dim), ("depth", depth), ("heads", heads)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide image_size={image_size}")
        n_patches = (image_size // patch_size) ** 2
        self.image_size, self.in_channels = image_size, in_channels
        self.to_patches = Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
        self.patch_embed = nn.Linear(patch_size * patch_size * in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, heads, mlp_ratio=mlp_ratio, attention=attention, causal=False, dropout=dropout)
            for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_vit)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of images ``x`` ``(B, C, S, S)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(x.shape)}"
            )
        z = self.patch_embed(self.to_patches(x))  # (B, N, dim)
        cls = self.cls_token.expand(z.shape[0], -1, -1)  # (B, 1, dim)
        z = self.dropout(torch.cat([cls, z], dim=1) + self.pos_embed)  # (B, 1 + N, dim)
        for block in self.blocks:
            z = block(z)
        return self.head(self.ln_f(z[:, 0]))  # (B, num_classes)


def _init_vit(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------- task: recipe and builder

VISION_RECIPE = RunSpec(
    task="vision", dataset="fashion-mnist",
    epochs=10, batch_size=128, lr=2e-3, min_lr_ratio=0.01, warmup_steps=200, weight_decay=0.05,
    beta1=0.9, beta2=0.999, grad_clip=1.0, eval_interval=430, checkpoint_interval=430,
    model={"patch_size": 7, "dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "dropout": 0.0},
)
"""ViT on 28x28 images: 16 patches of 7x7 + class token, 4 blocks of width 64, 10 epochs
(88.4 % Fashion-MNIST test accuracy at seed 0, ``docs/tasks.md``)."""

DIGITS_RECIPE = replace(
    VISION_RECIPE, dataset="digits", epochs=60, batch_size=64, warmup_steps=50, eval_interval=100,
    checkpoint_interval=500,
    model={"patch_size": 2, "dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "dropout": 0.0},
)
"""ViT on the 8x8 digits: 16 patches of 2x2."""


def vision_recipe(dataset: str) -> RunSpec:
    """The reference recipe of a vision data set."""
    return DIGITS_RECIPE if dataset == "digits" else replace(VISION_RECIPE, dataset=dataset)


@register_task("vision", recipe=vision_recipe, primary_metric="test_accuracy", monitor="val_accuracy",
               lower_is_better=False, throughput_unit="images", datasets=lambda: ("digits", *IDX_DATASETS))
def build_vision(spec: RunSpec, data_dir: Path | None, entry: TaskEntry) -> Task:
    """ViT on ``digits`` (scikit-learn) or an IDX data set under ``data_dir``; loss = mean
    cross-entropy; metrics ``{split}_loss``, ``{split}_accuracy``."""
    if spec.dataset == "digits":
        splits = load_digits_splits()
    else:
        splits = load_idx_splits(resolve_data_dir(data_dir) / spec.dataset)
    tokens = (splits.image_size // max(1, int_size(spec.model["patch_size"]))) ** 2 + 1
    check_model_memory(lambda: ViT(image_size=splits.image_size, in_channels=splits.channels,
                                   num_classes=splits.num_classes, attention=spec.attention, **spec.model), spec,
                       floats_per_example=tokens * int_size(spec.model["dim"]) * int_size(spec.model["depth"]))
    torch.manual_seed(spec.seed)
    model = ViT(image_size=splits.image_size, in_channels=splits.channels, num_classes=splits.num_classes,
                attention=spec.attention, **spec.model)
    data = {"val": splits.val, "test": splits.test}

    @in_eval_mode
    def evaluate(model: nn.Module, split: str) -> dict[str, float]:
        x_all, y_all = split_of(data, split, "vision").tensors
        device = device_of(model)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y_all), EVAL_BATCH):
            x = x_all[start : start + EVAL_BATCH].to(device)
            y = y_all[start : start + EVAL_BATCH].to(device)
            logits = model(x)  # (b, classes)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        n = len(y_all)
        return {f"{split}_loss": loss_sum / n, f"{split}_accuracy": correct / n}

    def loss_fn(model: nn.Module, batch: Any) -> Tensor:
        x, y = batch  # (B, C, S, S), (B,)
        return F.cross_entropy(model(x), y)

    return make_task(
        entry, spec, f"vision/{spec.dataset}/{spec.attention}",
        model=model, train_data=splits.train, val_data=splits.val, test_data=splits.test,
        loss_fn=loss_fn, evaluate=evaluate,
        info={"n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
              "pixel_mean": splits.mean, "pixel_std": splits.std, "image_size": splits.image_size},
    )
