"""Forecasting loader against the Time-Series-Library protocol, with pandas as the independent check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attnmoe.tasks.data.timeseries import WindowDataset, load_forecast_splits, read_tsl_csv


def shared_data_dir() -> Path | None:
    env = os.environ.get("ATTNMOE_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="../shared/data not available")


@needs_data
def test_etth1_protocol_against_pandas() -> None:
    data_dir = shared_data_dir()
    splits = load_forecast_splits("ETTh1", data_dir, pred_len=96)
    assert splits.seq_len == 96
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8449, 2785, 2785)
    frame = pd.read_csv(data_dir / "ETT-small" / "ETTh1.csv")  # type: ignore[operator]
    channels = frame.columns[1:]
    assert splits.channels == list(channels)
    train = frame.iloc[:8640][channels]
    np.testing.assert_allclose(splits.mean, train.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(splits.std, train.std(ddof=0).to_numpy(), rtol=1e-12)
    normed = (frame[channels] - train.mean()) / train.std(ddof=0)
    # first and last test window: input rows [11424, 11520) / [14209, 14305), targets after
    x, y = splits.test[0]
    np.testing.assert_allclose(x.numpy(), normed.iloc[11424:11520].to_numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y.numpy(), normed.iloc[11520:11616].to_numpy(), rtol=1e-5, atol=1e-5)
    x, y = splits.test[len(splits.test) - 1]
    np.testing.assert_allclose(y.numpy(), normed.iloc[14304:14400].to_numpy(), rtol=1e-5, atol=1e-5)
    x, _ = splits.val[0]
    np.testing.assert_allclose(x.numpy(), normed.iloc[8544:8640].to_numpy(), rtol=1e-5, atol=1e-5)
    # ETTh1 horizon 336: 8640-96-336+1 train windows, 2880-336+1 val/test windows
    long = load_forecast_splits("ETTh1", data_dir, pred_len=336)
    assert (len(long.train), len(long.val), len(long.test)) == (8209, 2545, 2545)


@needs_data
def test_exchange_rate_70_10_20() -> None:
    data_dir = shared_data_dir()
    splits = load_forecast_splits("exchange_rate", data_dir, pred_len=96)
    n = len(pd.read_csv(data_dir / "exchange_rate" / "exchange_rate.csv"))  # type: ignore[operator]
    assert n == 7588
    n_train, n_test = round(0.7 * n - 0.5), round(0.2 * n - 0.5)  # floors: 5311, 1517
    n_val = n - n_train - n_test
    assert splits.borders == [(0, n_train), (n_train - 96, n_train + n_val), (n - n_test - 96, n)]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (
        n_train - 96 - 96 + 1, n_val - 96 + 1, n_test - 96 + 1)


@needs_data
def test_illness_defaults_to_input_36() -> None:
    splits = load_forecast_splits("illness", shared_data_dir(), pred_len=24)
    assert splits.seq_len == 36
    assert (len(splits.train), len(splits.val), len(splits.test)) == (676 - 36 - 24 + 1, 97 - 24 + 1, 193 - 24 + 1)


def _write_csv(path: Path, rows: int = 60, channels: tuple[str, ...] = ("a", "b", "OT")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, len(channels))), columns=list(channels))
    frame.insert(0, "date", pd.date_range("2020-01-01", periods=rows, freq="h").astype(str))
    frame.to_csv(path, index=False)
    return frame


def test_csv_path_protocol(tmp_path: Path) -> None:
    frame = _write_csv(tmp_path / "mine.csv", rows=100)
    splits = load_forecast_splits(str(tmp_path / "mine.csv"), seq_len=8, pred_len=4)
    assert splits.borders == [(0, 70), (62, 80), (72, 100)]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (59, 7, 17)
    train = frame.iloc[:70, 1:]
    np.testing.assert_allclose(splits.mean, train.mean().to_numpy())
    # the scaler ignores val/test: changing the test rows leaves it unchanged
    frame.iloc[90:, 1:] += 1000.0
    frame.to_csv(tmp_path / "mine2.csv", index=False)
    other = load_forecast_splits(str(tmp_path / "mine2.csv"), seq_len=8, pred_len=4)
    np.testing.assert_array_equal(other.mean, splits.mean)
    np.testing.assert_array_equal(other.std, splits.std)


def test_window_dataset_batch_matches_items() -> None:
    series = torch.arange(40.0).reshape(20, 2)
    ds = WindowDataset(series, 5, 3)
    assert len(ds) == 13
    x, y = ds.batch(torch.tensor([0, 12]))
    assert torch.equal(x[1], series[12:17]) and torch.equal(y[1], series[17:20])
    items = ds.__getitems__([4])
    assert torch.equal(items[0][0], ds[4][0]) and torch.equal(items[0][1], ds[4][1])
    with pytest.raises(ValueError, match="no window"):
        WindowDataset(series[:7], 5, 3)


def test_missing_column_in_named_dataset(tmp_path: Path) -> None:
    (tmp_path / "ETT-small").mkdir()
    _write_csv(tmp_path / "ETT-small" / "ETTh1.csv", channels=("HUFL", "HULL", "MUFL", "MULL", "LUFL", "OT"))
    with pytest.raises(ValueError, match=r"ETTh1.csv: missing column\(s\) \['LULL'\]"):
        load_forecast_splits("ETTh1", tmp_path, pred_len=96)


def test_short_row_text_values_and_bad_header(tmp_path: Path) -> None:
    lines = ["date,a,b", "2020-01-01,1.0,2.0", "2020-01-02,3.0", "2020-01-03,5.0,6.0"]
    (tmp_path / "short.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"short.csv: column 'b' has a missing/NaN value at data row 1"):
        read_tsl_csv(tmp_path / "short.csv")
    lines[2] = "2020-01-02,3.0,oops"
    (tmp_path / "text.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"text.csv: column 'b' has a non-numeric value 'oops'"):
        read_tsl_csv(tmp_path / "text.csv")
    (tmp_path / "nodate.csv").write_text("time,a\n1,2\n")
    with pytest.raises(ValueError, match="nodate.csv: first column must be 'date'"):
        read_tsl_csv(tmp_path / "nodate.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        read_tsl_csv(tmp_path / "empty.csv")
    with pytest.raises(ValueError, match="unknown forecasting data set"):
        load_forecast_splits("ETTm9", tmp_path, pred_len=4)


def test_too_few_rows(tmp_path: Path) -> None:
    _write_csv(tmp_path / "tiny.csv", rows=20)
    with pytest.raises(ValueError, match="tiny.csv: 20 rows are too few|no window"):
        load_forecast_splits(str(tmp_path / "tiny.csv"), seq_len=16, pred_len=8)
