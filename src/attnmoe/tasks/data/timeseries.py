"""Multivariate long-horizon forecasting data in the Time-Series-Library (TSL) layout and protocol.

File layout: a CSV whose first column is ``date`` and whose other columns are numeric channels.

Protocol, as in TSL's ``Dataset_ETT_hour`` / ``Dataset_Custom`` (Informer arXiv 2012.07436,
Autoformer arXiv 2106.13008, used by iTransformer arXiv 2310.06625), with input length ``L``
(``seq_len``) and horizon ``H`` (``pred_len``):

- ETTh* (hourly): train rows ``[0, 8640)`` (12 months of 30 days), val ``[8640 - L, 11520)``,
  test ``[11520 - L, 14400)`` (4 + 4 months); rows after 14,400 are unused.
- every other file, ``N`` rows: ``n_train = int(0.7 N)``, ``n_test = int(0.2 N)``,
  ``n_val = N - n_train - n_test``; train ``[0, n_train)``, val ``[n_train - L, n_train + n_val)``,
  test ``[N - n_test - L, N)``.
- per-channel z-score ``(x - mu_c) / sigma_c`` with ``mu_c`` and the population std
  ``sigma_c`` (ddof 0, as sklearn's ``StandardScaler``) fitted on the TRAIN rows only and
  applied to all splits.
- a split of ``n`` rows holds ``n - L - H + 1`` windows, every one of them used (no
  ``drop_last``): window ``i`` is input rows ``[i, i + L)`` and target rows ``[i + L, i + L + H)``.
  ETTh1 with ``L = H = 96`` gives 8,449 / 2,785 / 2,785 windows.
- input length 96 and horizons 96/192/336/720; ILI (``illness``): input 36, horizons 24/36/48/60.
- MSE and MAE are reported on the normalised scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

# name -> (relative path, expected channel columns or None, border style)
FORECAST_DATASETS: dict[str, tuple[str, tuple[str, ...] | None, str]] = {
    "ETTh1": ("ETT-small/ETTh1.csv", ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"), "ett_hour"),
    "ETTh2": ("ETT-small/ETTh2.csv", ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"), "ett_hour"),
    "exchange_rate": ("exchange_rate/exchange_rate.csv", ("0", "1", "2", "3", "4", "5", "6", "OT"), "ratio"),
    "illness": (
        "illness/national_illness.csv",
        ("% WEIGHTED ILI", "%UNWEIGHTED ILI", "AGE 0-4", "AGE 5-24", "ILITOTAL", "NUM. OF PROVIDERS", "OT"),
        "ratio",
    ),
}

ETT_HOUR_TRAIN = 12 * 30 * 24  # 8,640 rows
ETT_HOUR_VAL = 4 * 30 * 24  # 2,880 rows
ETT_HOUR_TEST = 4 * 30 * 24  # 2,880 rows

STANDARD_HORIZONS = (96, 192, 336, 720)
ILI_HORIZONS = (24, 36, 48, 60)


def default_lengths(dataset: str) -> tuple[int, tuple[int, ...]]:
    """Standard ``(input length, horizons)`` of a data set name: ILI ``(36, (24, 36, 48, 60))``, else ``(96, (96, 192, 336, 720))``."""
    if dataset == "illness":
        return 36, ILI_HORIZONS
    return 96, STANDARD_HORIZONS


def read_tsl_csv(path: str | Path, expected_columns: tuple[str, ...] | None = None) -> tuple[pd.Series, np.ndarray, list[str]]:
    """Read and validate a TSL-layout CSV.

    Returns:
        ``(dates, values, columns)``: the ``date`` column, a float64 array ``(N, C)`` of the
        channels, and the channel names.

    Raises:
        ValueError: missing file, unparsable CSV, first column not ``date``, no channel column,
            expected columns missing, non-numeric or missing values; the message names the file
            (and the column / row where it applies).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: CSV file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse as CSV ({exc})") from exc
    columns = [str(c) for c in frame.columns]
    if not columns or columns[0] != "date":
        raise ValueError(f"{path}: first column must be 'date', got {columns[:1]}")
    channels = columns[1:]
    if not channels:
        raise ValueError(f"{path}: no channel columns after 'date'")
    if expected_columns is not None:
        missing = [c for c in expected_columns if c not in channels]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(expected_columns)}")
    if len(frame) == 0:
        raise ValueError(f"{path}: no data rows")
    values = np.empty((len(frame), len(channels)), dtype=np.float64)
    for j, name in enumerate(channels):
        col = frame.iloc[:, j + 1]
        numeric = pd.to_numeric(col, errors="coerce")
        bad = numeric.isna() & col.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path}: column {name!r} has a non-numeric value {col.iloc[row]!r} at data row {row}"
            )
        if numeric.isna().any():
            row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise ValueError(f"{path}: column {name!r} has a missing/NaN value at data row {row}")
        values[:, j] = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: infinite values in the channels")
    return frame["date"], values, channels


def split_borders(n_rows: int, seq_len: int, style: str) -> list[tuple[int, int]]:
    """Row ranges ``[(b1, b2)]`` of train / val / test under the TSL protocol (see module doc)."""
    if style == "ett_hour":
        needed = ETT_HOUR_TRAIN + ETT_HOUR_VAL + ETT_HOUR_TEST
        if n_rows < needed:
            raise ValueError(f"ETTh protocol needs at least {needed} rows, got {n_rows}")
        a, b = ETT_HOUR_TRAIN, ETT_HOUR_TRAIN + ETT_HOUR_VAL
        return [(0, a), (a - seq_len, b), (b - seq_len, b + ETT_HOUR_TEST)]
    if style == "ratio":
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        return [(0, n_train), (n_train - seq_len, n_train + n_val), (n_rows - n_test - seq_len, n_rows)]
    raise ValueError(f"unknown border style {style!r}; expected 'ett_hour' or 'ratio'")


class WindowDataset(Dataset):
    """Sliding windows of a normalised series: item ``i`` is ``(x (L, C), y (H, C))``.

    ``x = series[i : i + L]``, ``y = series[i + L : i + L + H]``; ``len = n - L - H + 1``.
    """

    def __init__(self, series: torch.Tensor, seq_len: int, pred_len: int) -> None:
        if series.ndim != 2:
            raise ValueError(f"series must be (rows, channels), got shape {tuple(series.shape)}")
        if seq_len < 1 or pred_len < 1:
            raise ValueError(f"seq_len and pred_len must be >= 1, got {seq_len}, {pred_len}")
        if len(series) < seq_len + pred_len:
            raise ValueError(
                f"a split of {len(series)} rows holds no window of {seq_len} + {pred_len} rows"
            )
        self.series = series
        self.seq_len = seq_len
        self.pred_len = pred_len

    def __len__(self) -> int:
        return len(self.series) - self.seq_len - self.pred_len + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        s = self.series
        return s[i : i + self.seq_len], s[i + self.seq_len : i + self.seq_len + self.pred_len]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch (used by ``DataLoader``)."""
        x, y = self.batch(torch.as_tensor(indices, dtype=torch.long))
        return list(zip(x, y))

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows starting at ``starts`` ``(B,)``: ``x (B, L, C)``, ``y (B, H, C)``."""
        pos = starts[:, None] + torch.arange(self.seq_len + self.pred_len)  # (B, L + H)
        chunk = self.series[pos]  # (B, L + H, C)
        return chunk[:, : self.seq_len], chunk[:, self.seq_len :]


CONSTANT_RTOL = 1e-10
"""A train-split channel whose std is at most this fraction of its largest absolute value is
constant up to rounding (e.g. 0.1 repeated has a float64 std of ~1e-17, not 0): standardising
it would divide by rounding noise, so it is rejected like an exactly constant one."""


def _names(channels: list[str], mask: np.ndarray) -> list[str]:
    return [c for c, m in zip(channels, mask) if m]


def _scaler(path: Path, train_rows: np.ndarray, channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of the train rows, checked to be usable."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = train_rows.mean(axis=0)
        std = train_rows.std(axis=0)  # population std (ddof 0), as sklearn's StandardScaler
    huge = ~(np.isfinite(mean) & np.isfinite(std))
    if huge.any():
        raise ValueError(f"{path}: channel(s) {_names(channels, huge)} are too large to standardise "
                         "(their mean or std overflows float64)")
    flat = std <= CONSTANT_RTOL * np.abs(train_rows).max(axis=0)
    if flat.any():
        raise ValueError(f"{path}: constant channel(s) {_names(channels, flat)} in the train split "
                         f"(std <= {CONSTANT_RTOL:g} x the largest |value|)")
    return mean, std


@dataclass
class ForecastSplits:
    """Normalised train / val / test windows plus the scaler fitted on train."""

    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    mean: np.ndarray
    std: np.ndarray
    channels: list[str]
    borders: list[tuple[int, int]]
    seq_len: int
    pred_len: int
    source: str

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def load_forecast_splits(
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    seq_len: int | None = None,
    pred_len: int,
) -> ForecastSplits:
    """Load a forecasting set under the TSL protocol.

    Args:
        dataset: ``ETTh1``, ``ETTh2``, ``exchange_rate``, ``illness``, or a path to a TSL-layout
            CSV (70/10/20 split; ETTh borders if its file name starts with ``ETTh``).
        data_dir: directory holding the named data sets (unused for a path).
        seq_len: input length; default 96 (36 for ``illness``).
        pred_len: forecast horizon ``H``.
    """
    if dataset in FORECAST_DATASETS:
        rel, expected, style = FORECAST_DATASETS[dataset]
        if data_dir is None:
            raise ValueError(f"data set {dataset!r} needs a data directory")
        path = Path(data_dir) / rel
    else:
        path = Path(dataset)
        if path.suffix.lower() != ".csv":
            raise ValueError(
                f"unknown forecasting data set {dataset!r}; expected one of "
                f"{sorted(FORECAST_DATASETS)} or a path to a .csv file"
            )
        expected = None
        style = "ett_hour" if path.name.startswith("ETTh") else "ratio"
    if seq_len is None:
        seq_len = default_lengths(dataset)[0]
    if seq_len < 1 or pred_len < 1:
        raise ValueError(f"seq_len and pred_len must be >= 1, got {seq_len}, {pred_len}")
    _, values, channels = read_tsl_csv(path, expected)
    borders = split_borders(len(values), seq_len, style)
    if borders[1][0] < 0 or borders[0][1] < seq_len + pred_len:
        raise ValueError(f"{path}: {len(values)} rows are too few for input {seq_len} + horizon {pred_len}")
    train_rows = values[borders[0][0] : borders[0][1]]
    mean, std = _scaler(path, train_rows, channels)
    with np.errstate(over="ignore"):
        scaled = ((values - mean) / std).astype(np.float32)
    overflow = ~np.isfinite(scaled).all(axis=0)
    if overflow.any():
        raise ValueError(f"{path}: standardised values of channel(s) {_names(channels, overflow)} "
                         "overflow float32 (values far outside the train split's range)")
    normed = torch.from_numpy(scaled)
    windows = [WindowDataset(normed[b1:b2], seq_len, pred_len) for b1, b2 in borders]
    return ForecastSplits(
        train=windows[0], val=windows[1], test=windows[2], mean=mean, std=std,
        channels=channels, borders=borders, seq_len=seq_len, pred_len=pred_len, source=str(path),
    )
