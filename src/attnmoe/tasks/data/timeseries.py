"""Long-horizon forecasting data in the Time-Series-Library (TSL) layout and protocol.

File layout: a CSV whose first column is ``date`` and whose other columns are numeric channels.

Protocol, as in TSL's ``Dataset_ETT_hour`` / ``Dataset_ETT_minute`` / ``Dataset_Custom``
(``data_provider/data_loader.py``; Informer arXiv 2012.07436, Autoformer arXiv 2106.13008, used
by iTransformer arXiv 2310.06625), with input length ``L`` (``seq_len``) and horizon ``H``
(``pred_len``):

- ETT (``ETTh1/2`` hourly, ``ETTm1/2`` every 15 minutes), by months of 30 days with ``r`` rows
  a month (``r = 30 * 24`` hourly, ``30 * 24 * 4`` for 15-minute data): train rows
  ``[0, 12 r)``, val ``[12 r - L, 16 r)``, test ``[16 r - L, 20 r)``; later rows are unused.
  Chosen by name (``ETTh*`` / ``ETTm*``, also for a CSV path whose file name starts so).
- every other file (``exchange_rate``, ``illness``, ``weather``, ``electricity``, ``traffic``,
  any CSV), ``N`` rows: ``n_train = int(0.7 N)``, ``n_test = int(0.2 N)``,
  ``n_val = N - n_train - n_test``; train ``[0, n_train)``, val
  ``[n_train - L, n_train + n_val)``, test ``[N - n_test - L, N)``.
- features (TSL ``--features``): ``M`` all channels in, all channels out; ``S`` the target
  channel in and out; ``MS`` all channels in, the target out. The target (default ``OT``) is
  moved to the last column, as ``Dataset_Custom`` does (TSL's ETT loaders keep the file's order
  and, with ``MS``, score the last column, which is ``OT``; ours score the named target).
  Windows yield ``x (L, C)`` and ``y (H, n_targets)``: the last ``n_targets`` channels.
- per-channel z-score ``(x - mu_c) / sigma_c`` with ``mu_c`` and the population std
  ``sigma_c`` (ddof 0, as sklearn's ``StandardScaler``) fitted on the TRAIN rows only and
  applied to all splits.
- a split of ``n`` rows holds ``n - L - H + 1`` windows, every one of them used (no
  ``drop_last``): window ``i`` is input rows ``[i, i + L)`` and target rows ``[i + L, i + L + H)``.
  ETTh1 with ``L = H = 96`` gives 8,449 / 2,785 / 2,785 windows.
- input length 96 and horizons 96/192/336/720; ILI (``illness``): input 36, horizons 24/36/48/60.
- MSE and MAE are reported on the normalised scale (of the target channels).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from attnmoe.tasks.spec import FEATURES
from attnmoe.utils import did_you_mean, lookup_name

ETT_COLUMNS = ("HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")

# name -> (relative path under the data directory, expected channel columns or None, border
# style); the paths are TSL's ``--root_path``/``--data_path`` under its ``dataset/`` folder.
FORECAST_DATASETS: dict[str, tuple[str, tuple[str, ...] | None, str]] = {
    "ETTh1": ("ETT-small/ETTh1.csv", ETT_COLUMNS, "ett_hour"),
    "ETTh2": ("ETT-small/ETTh2.csv", ETT_COLUMNS, "ett_hour"),
    "ETTm1": ("ETT-small/ETTm1.csv", ETT_COLUMNS, "ett_minute"),
    "ETTm2": ("ETT-small/ETTm2.csv", ETT_COLUMNS, "ett_minute"),
    "exchange_rate": ("exchange_rate/exchange_rate.csv", ("0", "1", "2", "3", "4", "5", "6", "OT"), "ratio"),
    "illness": (
        "illness/national_illness.csv",
        ("% WEIGHTED ILI", "%UNWEIGHTED ILI", "AGE 0-4", "AGE 5-24", "ILITOTAL", "NUM. OF PROVIDERS", "OT"),
        "ratio",
    ),
    "weather": ("weather/weather.csv", None, "ratio"),
    "electricity": ("electricity/electricity.csv", None, "ratio"),
    "traffic": ("traffic/traffic.csv", None, "ratio"),
}
#: Other names TSL's scripts use for the same files (matched case-insensitively, as names are).
FORECAST_ALIASES = {"ECL": "electricity", "ILI": "illness", "national_illness": "illness", "exchange": "exchange_rate"}

#: Rows in a month of 30 days, per ETT border style; the ETT splits are 12 / 4 / 4 months.
ETT_ROWS_PER_MONTH = {"ett_hour": 30 * 24, "ett_minute": 30 * 24 * 4}
ETT_MONTHS = (12, 4, 4)
DEFAULT_TARGET = "OT"

STANDARD_HORIZONS = (96, 192, 336, 720)
ILI_HORIZONS = (24, 36, 48, 60)


def forecast_name(dataset: str) -> str:
    """The canonical name of a forecasting data set (case-insensitive, TSL aliases), or ``dataset``
    unchanged when it names a ``.csv`` file; otherwise ``ValueError`` with close matches."""
    if Path(dataset).suffix.lower() == ".csv":
        return dataset
    return lookup_name(dataset, FORECAST_DATASETS, "forecasting data set", FORECAST_ALIASES, "a path to a .csv file")


def border_style(dataset: str) -> str:
    """``ett_hour`` / ``ett_minute`` for a name or a file name starting with ``ETTh`` / ``ETTm``
    (any case), else ``ratio``."""
    name = FORECAST_DATASETS[dataset][0] if dataset in FORECAST_DATASETS else dataset
    stem = Path(name).name.lower()
    return "ett_hour" if stem.startswith("etth") else "ett_minute" if stem.startswith("ettm") else "ratio"


def default_lengths(dataset: str) -> tuple[int, tuple[int, ...]]:
    """Standard ``(input length, horizons)`` of a data set name: ILI ``(36, (24, 36, 48, 60))``, else ``(96, (96, 192, 336, 720))``."""
    if Path(dataset).suffix.lower() != ".csv" and forecast_name(dataset) == "illness":
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
        row, j = (int(i[0]) for i in np.nonzero(~np.isfinite(values)))
        raise ValueError(f"{path}: column {channels[j]!r} has an infinite value {float(values[row, j])} "
                         f"at data row {row}")
    return frame["date"], values, channels


def split_borders(n_rows: int, seq_len: int, style: str) -> list[tuple[int, int]]:
    """Row ranges ``[(b1, b2)]`` of train / val / test under the TSL protocol (see module doc)."""
    if style in ETT_ROWS_PER_MONTH:
        month = ETT_ROWS_PER_MONTH[style]
        a, b, c = (month * sum(ETT_MONTHS[: i + 1]) for i in range(3))  # 12, 16, 20 months
        if n_rows < c:
            raise ValueError(f"the {style} protocol (12/4/4 months of {month} rows) needs at least {c} rows, got {n_rows}")
        return [(0, a), (a - seq_len, b), (b - seq_len, c)]
    if style == "ratio":
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        return [(0, n_train), (n_train - seq_len, n_train + n_val), (n_rows - n_test - seq_len, n_rows)]
    raise ValueError(f"unknown border style {style!r}; expected one of {[*ETT_ROWS_PER_MONTH, 'ratio']}")


class WindowDataset(Dataset):
    """Sliding windows of a normalised series: item ``i`` is ``(x (L, C), y (H, n_targets))``.

    ``x = series[i : i + L]``, ``y = series[i + L : i + L + H, C - n_targets:]`` (the last
    ``n_targets`` channels, default all); ``len = n - L - H + 1``.
    """

    def __init__(self, series: torch.Tensor, seq_len: int, pred_len: int, n_targets: int | None = None) -> None:
        if series.ndim != 2:
            raise ValueError(f"series must be (rows, channels), got shape {tuple(series.shape)}")
        if seq_len < 1 or pred_len < 1:
            raise ValueError(f"seq_len and pred_len must be >= 1, got {seq_len}, {pred_len}")
        if len(series) < seq_len + pred_len:
            raise ValueError(
                f"a split of {len(series)} rows holds no window of {seq_len} + {pred_len} rows"
            )
        n_targets = series.shape[1] if n_targets is None else n_targets
        if not 1 <= n_targets <= series.shape[1]:
            raise ValueError(f"n_targets must be in [1, {series.shape[1]}], got {n_targets}")
        self.series = series
        self.seq_len = seq_len
        self.pred_len = pred_len
        self.n_targets = n_targets

    def __len__(self) -> int:
        return len(self.series) - self.seq_len - self.pred_len + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        s = self.series
        return s[i : i + self.seq_len], s[i + self.seq_len : i + self.seq_len + self.pred_len, -self.n_targets :]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch (used by ``DataLoader``)."""
        x, y = self.batch(torch.as_tensor(indices, dtype=torch.long))
        return list(zip(x, y))

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows starting at ``starts`` ``(B,)``: ``x (B, L, C)``, ``y (B, H, n_targets)``."""
        pos = starts[:, None] + torch.arange(self.seq_len + self.pred_len)  # (B, L + H)
        chunk = self.series[pos]  # (B, L + H, C)
        return chunk[:, : self.seq_len], chunk[:, self.seq_len :, -self.n_targets :]


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
    features: str = "M"
    target: str = DEFAULT_TARGET

    @property
    def n_channels(self) -> int:
        """Input channels ``C`` (the target is the last)."""
        return len(self.channels)

    @property
    def n_targets(self) -> int:
        """Forecast channels: ``C`` for ``M``, 1 for ``S`` and ``MS`` (the last ``n_targets`` channels)."""
        return self.n_channels if self.features == "M" else 1


def select_channels(channels: list[str], features: str, target: str) -> list[int]:
    """Column indices of the model's channels under TSL ``features``, the target last.

    ``M`` / ``MS``: every channel, ``target`` moved to the end (as TSL's ``Dataset_Custom``);
    ``S``: the target only. With ``M`` and the default target absent, the file's order is kept
    (every channel is a target anyway). Raises ``ValueError`` for an unknown mode or target.
    """
    if features not in FEATURES:
        raise ValueError(f"unknown features mode {features!r}; expected one of {list(FEATURES)} "
                         "(M: multivariate -> multivariate, S: target -> target, MS: multivariate -> target)")
    if features == "M" and target == DEFAULT_TARGET and target not in channels:
        return list(range(len(channels)))
    if target not in channels:
        hint = did_you_mean(difflib.get_close_matches(target, channels, n=3))
        raise ValueError(f"target column {target!r} not in the file{hint} (columns: {channels})")
    t = channels.index(target)
    if features == "S":
        return [t]
    return [j for j in range(len(channels)) if j != t] + [t]


def load_forecast_splits(
    dataset: str,
    data_dir: str | Path | None = None,
    *,
    seq_len: int | None = None,
    pred_len: int,
    features: str = "M",
    target: str = DEFAULT_TARGET,
) -> ForecastSplits:
    """Load a forecasting set under the TSL protocol.

    Args:
        dataset: a name of :data:`FORECAST_DATASETS` (any case; TSL aliases such as ``ECL``), or
            a path to a TSL-layout CSV (70/10/20 split; ETT borders if its file name starts with
            ``ETTh`` / ``ETTm``).
        data_dir: directory holding the named data sets (unused for a path).
        seq_len: input length; default 96 (36 for ``illness``).
        pred_len: forecast horizon ``H``.
        features: ``M``, ``S`` or ``MS`` (module doc).
        target: the target column for ``S`` / ``MS`` (and the last channel for ``M``).
    """
    dataset = forecast_name(dataset)
    if dataset in FORECAST_DATASETS:
        rel, expected, style = FORECAST_DATASETS[dataset]
        if data_dir is None:
            raise ValueError(f"data set {dataset!r} needs a data directory")
        path = Path(data_dir) / rel
    else:
        path, expected, style = Path(dataset), None, border_style(dataset)
    if seq_len is None:
        seq_len = default_lengths(dataset)[0]
    if seq_len < 1 or pred_len < 1:
        raise ValueError(f"seq_len and pred_len must be >= 1, got {seq_len}, {pred_len}")
    if features not in FEATURES:
        select_channels([target], features, target)  # raises, naming the modes, before reading
    _, values, columns = read_tsl_csv(path, expected)
    try:
        order = select_channels(columns, features, target)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    values, channels = values[:, order], [columns[j] for j in order]
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
    n_targets = len(channels) if features == "M" else 1
    windows = [WindowDataset(normed[b1:b2], seq_len, pred_len, n_targets) for b1, b2 in borders]
    return ForecastSplits(
        train=windows[0], val=windows[1], test=windows[2], mean=mean, std=std,
        channels=channels, borders=borders, seq_len=seq_len, pred_len=pred_len, source=str(path),
        features=features, target=target,
    )
