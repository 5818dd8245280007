"""Image loaders: the IDX parser against files written here, the split protocol, corrupt input."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from attnmoe.tasks.data.images import IDX_FILES, load_digits_splits, load_idx_splits, read_idx


def shared_data_dir() -> Path | None:
    env = os.environ.get("ATTNMOE_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08, compress: bool = True) -> None:
    """Write an IDX file by the format's definition (independent of the reader)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist_dir(root: Path, n_train: int = 60, n_test: int = 10, side: int = 28) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (n_train, side, side), dtype=np.uint8)
    x_train[:, 0, 0] = np.arange(n_train)  # a tag that identifies each image
    y_train = rng.integers(0, 10, n_train, dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, side, side), dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test, dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / IDX_FILES["train_images"], x_train)
    write_idx(root / IDX_FILES["train_labels"], y_train)
    write_idx(root / IDX_FILES["test_images"], x_test)
    write_idx(root / IDX_FILES["test_labels"], y_test)
    return x_train, y_train, x_test, y_test


@pytest.mark.parametrize(
    ("dtype", "code"), [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D)]
)
def test_read_idx_round_trip(tmp_path: Path, dtype: type, code: int) -> None:
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a.gz", array, code)
    write_idx(tmp_path / "a.idx", array, code, compress=False)
    for name in ("a.gz", "a.idx"):
        got = read_idx(tmp_path / name)
        assert got.shape == array.shape and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, array)


def test_truncated_gz_names_file(tmp_path: Path) -> None:
    write_idx(tmp_path / "imgs.gz", np.zeros((50, 28, 28), np.uint8) + 7)
    raw = (tmp_path / "imgs.gz").read_bytes()
    (tmp_path / "imgs.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="imgs.gz.*truncated or corrupt"):
        read_idx(tmp_path / "imgs.gz")


def test_not_gzip_and_bad_magic_and_size(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(ValueError, match="x.gz"):
        read_idx(tmp_path / "x.gz")
    with gzip.open(tmp_path / "magic.gz", "wb") as fh:
        fh.write(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="magic.gz.*magic"):
        read_idx(tmp_path / "magic.gz")
    # header says 10 items, the data holds 9: a gzip that is valid but an IDX that is short
    with gzip.open(tmp_path / "short.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(9))
    with pytest.raises(ValueError, match="short.gz.*header says"):
        read_idx(tmp_path / "short.gz")
    with pytest.raises(ValueError, match="missing.gz.*not found"):
        read_idx(tmp_path / "missing.gz")


def test_split_protocol_on_synthetic_mnist(tmp_path: Path) -> None:
    x_train, y_train, x_test, _y_test = make_mnist_dir(tmp_path / "mnist")
    splits = load_idx_splits(tmp_path / "mnist", val_size=15, split_seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45, 15, 10)
    assert splits.train.tensors[0].shape == (45, 1, 28, 28)
    # undo the standardisation and find each image's tag: val and train are a partition of train
    def tags(ds):
        pixels = ds.tensors[0][:, 0, 0, 0].numpy() * splits.std + splits.mean
        return np.rint(pixels * 255).astype(int)

    tr, va = tags(splits.train), tags(splits.val)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(60))
    np.testing.assert_array_equal(splits.train.tensors[1].numpy(), y_train[tr])
    np.testing.assert_array_equal(splits.val.tensors[1].numpy(), y_val := y_train[va])
    assert len(y_val) == 15
    # scaler fitted on the train part only, scalar mean/std of x/255
    ref = x_train[tr].astype(np.float64) / 255
    assert splits.mean == pytest.approx(ref.mean(), rel=1e-5)
    assert splits.std == pytest.approx(ref.std(), rel=1e-5)
    np.testing.assert_allclose(
        splits.test.tensors[0][:, 0].numpy(), (x_test / 255 - ref.mean()) / ref.std(), rtol=1e-5, atol=1e-5
    )
    # the split depends on split_seed only
    again = load_idx_splits(tmp_path / "mnist", val_size=15, split_seed=3)
    assert np.array_equal(tags(again.val), va)
    assert not np.array_equal(tags(load_idx_splits(tmp_path / "mnist", val_size=15, split_seed=4).val), va)


def test_label_count_mismatch_names_files(tmp_path: Path) -> None:
    make_mnist_dir(tmp_path / "m")
    write_idx(tmp_path / "m" / IDX_FILES["train_labels"], np.zeros(59, np.uint8))
    with pytest.raises(ValueError, match="60 images.*59 labels"):
        load_idx_splits(tmp_path / "m", val_size=5)


def test_digits_fallback() -> None:
    splits = load_digits_splits()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1258, 180, 359)
    assert splits.train.tensors[0].shape[1:] == (1, 8, 8)
    flat = [ds.tensors[0].flatten(1).numpy() for ds in (splits.train, splits.val, splits.test)]
    rows = {r.tobytes() for r in np.concatenate(flat)}
    assert len(rows) >= 1790  # (the 1,797 digits include a few exact duplicates)
    assert abs(float(splits.train.tensors[0].mean())) < 1e-4


@pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not available")
def test_real_fashion_mnist() -> None:
    root = shared_data_dir() / "fashion-mnist"  # type: ignore[operator]
    splits = load_idx_splits(root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert splits.test.tensors[0].shape == (10000, 1, 28, 28)
    # classes are balanced in Fashion-MNIST: 6,000 per class in train, 1,000 in test
    counts = np.bincount(np.concatenate([splits.train.tensors[1].numpy(), splits.val.tensors[1].numpy()]))
    assert counts.tolist() == [6000] * 10
    assert np.bincount(splits.test.tensors[1].numpy()).tolist() == [1000] * 10


def test_build_task_reads_mnist_folder(tmp_path: Path) -> None:
    from attnmoe.tasks import build_task

    make_mnist_dir(tmp_path / "mnist", n_train=5010, n_test=7)
    task = build_task("vision", "mnist", data_dir=tmp_path, attention="softmax", seed=0,
                      overrides={"dim": 16, "depth": 1, "heads": 2})
    assert (len(task.train_data), len(task.val_data), len(task.test_data)) == (10, 5000, 7)
    assert set(task.evaluate(task.model, "test")) == {"test_loss", "test_accuracy"}
    with pytest.raises(ValueError, match=r"fashion-mnist.*train-images-idx3-ubyte.gz.*not found"):
        build_task("vision", "fashion-mnist", data_dir=tmp_path, attention="softmax", seed=0)
