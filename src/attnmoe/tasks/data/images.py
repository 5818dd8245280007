"""Image classification data: IDX ``.gz`` files (MNIST, Fashion-MNIST) and sklearn's 8x8 digits.

IDX format (LeCun et al., the MNIST distribution): two zero bytes, one type byte (0x08 = uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), one byte with the number of
dimensions ``k``, ``k`` big-endian uint32 sizes, then the data, big-endian, row-major.

Protocol used here (documented in ``docs/tasks.md``):
- train = the 60,000-image training file minus a validation split of ``val_size`` (default
  5,000) images chosen by a permutation drawn from ``split_seed`` (default 0, fixed across
  training seeds so that every run of a comparison sees the same split);
- test = the 10,000-image test file;
- pixels scaled to [0, 1], then standardised with the scalar mean and std of the train split.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

IDX_DATASETS = ("fashion-mnist", "mnist")


@dataclass
class ImageSplits:
    """Train / val / test splits of an image classification set.

    Each split is a ``TensorDataset`` of ``(x, y)`` with ``x`` float32 ``(N, C, H, W)``
    (standardised) and ``y`` int64 ``(N,)``.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    channels: int
    image_size: int
    mean: float
    std: float


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed if its name ends in ``.gz``) into a numpy array.

    Raises:
        ValueError: the file is missing, truncated, not gzip, has a bad magic number, or its
            size does not match the header; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: IDX file not found")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot decompress ({exc}); the file is truncated or corrupt") from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number {raw[:4].hex()} (expected 0000 + type byte in "
            f"{sorted(hex(c) for c in IDX_DTYPES)} + ndim >= 1)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} data bytes) but the file has "
            f"{len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _read_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.max(initial=0) >= num_classes:
        raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return images, labels


def _split_and_standardise(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    val_size: int,
    split_seed: int,
    num_classes: int,
    scale: float,
) -> ImageSplits:
    """Carve ``val_size`` images from train by a seeded permutation; standardise with train stats."""
    n = len(x_train)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in 1..{n - 1}, got {val_size}")
    perm = np.random.default_rng(split_seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    xtr = x_train[train_idx].astype(np.float32) / scale
    mean, std = float(xtr.mean()), float(xtr.std())

    def prep(x: np.ndarray) -> torch.Tensor:
        x = (x.astype(np.float32) / scale - mean) / std
        return torch.from_numpy(x).unsqueeze(1)  # (N, 1, H, W)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return ImageSplits(
        train=TensorDataset(prep(x_train[train_idx]), labels(y_train[train_idx])),
        val=TensorDataset(prep(x_train[val_idx]), labels(y_train[val_idx])),
        test=TensorDataset(prep(x_test), labels(y_test)),
        num_classes=num_classes,
        channels=1,
        image_size=int(x_train.shape[-1]),
        mean=mean,
        std=std,
    )


def load_idx_splits(
    directory: str | Path, *, val_size: int = 5000, split_seed: int = 0, num_classes: int = 10
) -> ImageSplits:
    """Load an MNIST-style directory holding the four standard IDX ``.gz`` files.

    Args:
        directory: folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``.
        val_size: images carved from the training file for validation.
        split_seed: seed of the permutation that chooses the validation images.
        num_classes: number of classes (labels must lie in ``0..num_classes-1``).
    """
    directory = Path(directory)
    paths = {key: directory / name for key, name in IDX_FILES.items()}
    x_train, y_train = _read_pair(paths["train_images"], paths["train_labels"], num_classes)
    x_test, y_test = _read_pair(paths["test_images"], paths["test_labels"], num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{paths['test_images']}: image size {x_test.shape[1:]} differs from the training "
            f"file's {x_train.shape[1:]}"
        )
    return _split_and_standardise(
        x_train, y_train, x_test, y_test,
        val_size=val_size, split_seed=split_seed, num_classes=num_classes, scale=255.0,
    )


def load_digits_splits(*, split_seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> ImageSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images, pixel values 0..16), split by a seeded permutation.

    The test split is the first ``round(test_fraction * N)`` images of a permutation drawn from
    ``split_seed`` (359 images), the validation split the next ``round(val_fraction * N)`` (180),
    the rest (1,258) is train.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (N, 8, 8)
    targets = np.asarray(bunch.target, dtype=np.uint8)
    n = len(images)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    perm = np.random.default_rng(split_seed).permutation(n)
    test_idx, rest = np.sort(perm[:n_test]), perm[n_test:]
    # the remaining images go through the same val carve-out as the IDX sets
    return _split_and_standardise(
        images[rest], targets[rest], images[test_idx], targets[test_idx],
        val_size=n_val, split_seed=split_seed + 1, num_classes=10, scale=16.0,
    )
