"""Data loaders for the three evidence tasks (images, character text, forecasting).

Every loader reads standard files from a directory given explicitly (``--data-dir``) or by the
environment variable ``ATTNMOE_DATA_DIR``; nothing is downloaded and nothing is copied into the
repository. Loaders validate what they read and raise ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "ATTNMOE_DATA_DIR"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$ATTNMOE_DATA_DIR``.

    Raises:
        ValueError: neither is set, or the directory does not exist.
    """
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        if not env:
            raise ValueError(
                f"no data directory: pass --data-dir (data_dir=...) or set {DATA_DIR_ENV}"
            )
        data_dir = env
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise ValueError(f"data directory {str(path)!r} does not exist or is not a directory")
    return path


from attnmoe.tasks.data.images import ImageSplits, load_digits_splits, load_idx_splits, read_idx
from attnmoe.tasks.data.text import BlockDataset, CharCorpus, load_char_corpus
from attnmoe.tasks.data.timeseries import (
    ForecastSplits,
    WindowDataset,
    default_lengths,
    load_forecast_splits,
    read_tsl_csv,
)

__all__ = [
    "DATA_DIR_ENV",
    "BlockDataset",
    "CharCorpus",
    "ForecastSplits",
    "ImageSplits",
    "WindowDataset",
    "default_lengths",
    "load_char_corpus",
    "load_digits_splits",
    "load_forecast_splits",
    "load_idx_splits",
    "read_idx",
    "read_tsl_csv",
    "resolve_data_dir",
]
