"""Time-Series-Library protocol beyond ETTh: ETTm borders, custom 70/10/20 sets, M/S/MS features,
case-insensitive names; on small synthetic CSVs with the real files' layouts, in tmp dirs.

Expected borders are written here from TSL's ``data_provider/data_loader.py`` formulas
(``Dataset_ETT_minute``: ``border1s = [0, 12*30*24*4 - seq_len, 12*30*24*4 + 4*30*24*4 - seq_len]``,
``border2s = [12*30*24*4, 12*30*24*4 + 4*30*24*4, 12*30*24*4 + 8*30*24*4]``; ``Dataset_Custom``:
``num_train = int(len * 0.7)``, ``num_test = int(len * 0.2)``), not from the loader's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from attnmoe.cli import app
from attnmoe.tasks import build_task
from attnmoe.tasks.data.timeseries import load_forecast_splits
from attnmoe.tasks.forecasting import ITransformer

ETT = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
WEATHER = ["p (mbar)", "T (degC)", "rh (%)", "wv (m/s)", "OT"]  # weather.csv's layout, fewer columns


def _write(path: Path, rows: int, columns: list[str], freq: str = "15min", seed: int = 0) -> pd.DataFrame:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(columns))).cumsum(0) + np.arange(len(columns)),
                         columns=columns)
    frame.insert(0, "date", pd.date_range("2016-07-01", periods=rows, freq=freq).astype(str))
    frame.to_csv(path, index=False)
    return frame


def _tsl_ett_minute(seq_len: int) -> list[tuple[int, int]]:
    b1 = [0, 12 * 30 * 24 * 4 - seq_len, 12 * 30 * 24 * 4 + 4 * 30 * 24 * 4 - seq_len]
    b2 = [12 * 30 * 24 * 4, 12 * 30 * 24 * 4 + 4 * 30 * 24 * 4, 12 * 30 * 24 * 4 + 8 * 30 * 24 * 4]
    return list(zip(b1, b2))


def _tsl_custom(n: int, seq_len: int) -> list[tuple[int, int]]:
    num_train, num_test = int(n * 0.7), int(n * 0.2)
    num_vali = n - num_train - num_test
    return list(zip([0, num_train - seq_len, n - num_test - seq_len], [num_train, num_train + num_vali, n]))


@pytest.fixture(scope="module")
def ettm_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("data")
    frame = _write(root / "ETT-small" / "ETTm1.csv", 20 * 30 * 24 * 4 + 50, ETT)  # 57,650 rows: 50 unused
    return root, frame


def test_ettm_borders_by_name_and_by_file_name(ettm_dir: tuple[Path, pd.DataFrame]) -> None:
    root, frame = ettm_dir
    splits = load_forecast_splits("ettm1", root, pred_len=96)  # any case
    assert splits.source.endswith("ETTm1.csv")
    assert splits.borders == _tsl_ett_minute(96)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (34560 - 96 - 96 + 1, 11520 - 96 + 1, 11520 - 96 + 1)
    train = frame.iloc[:34560][ETT]
    np.testing.assert_allclose(splits.mean, train.mean().to_numpy(), rtol=1e-12)
    normed = ((frame[ETT] - train.mean()) / train.std(ddof=0)).to_numpy()
    x, y = splits.test[len(splits.test) - 1]  # last test window ends at row 20 months
    np.testing.assert_allclose(y.numpy(), normed[57600 - 96 : 57600], rtol=1e-5, atol=1e-5)
    x, _ = splits.val[0]
    np.testing.assert_allclose(x.numpy(), normed[34560 - 96 : 34560], rtol=1e-5, atol=1e-5)
    # the same file given as a path keeps the ETTm borders (it used to get 70/10/20 silently)
    by_path = load_forecast_splits(str(root / "ETT-small" / "ETTm1.csv"), seq_len=48, pred_len=24)
    assert by_path.borders == _tsl_ett_minute(48)


def test_ettm_too_short_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "ETTm2.csv", 1000, ETT)
    with pytest.raises(ValueError, match="ett_minute protocol .* needs at least 57600 rows, got 1000"):
        load_forecast_splits(str(tmp_path / "ETTm2.csv"), pred_len=96)


@pytest.mark.parametrize("name,rel,columns", [
    ("weather", "weather/weather.csv", WEATHER),
    ("ECL", "electricity/electricity.csv", [str(i) for i in range(6)] + ["OT"]),
    ("Traffic", "traffic/traffic.csv", [str(i) for i in range(4)] + ["OT"]),
])
def test_custom_sets_use_70_10_20(tmp_path: Path, name: str, rel: str, columns: list[str]) -> None:
    frame = _write(tmp_path / rel, 997, columns, freq="10min")
    splits = load_forecast_splits(name, tmp_path, seq_len=24, pred_len=12)
    assert splits.borders == _tsl_custom(997, 24)
    assert splits.channels == columns and splits.n_targets == len(columns)
    n_train = int(997 * 0.7)
    np.testing.assert_allclose(splits.std, frame[columns].iloc[:n_train].std(ddof=0).to_numpy(), rtol=1e-12)


def test_features_s_ms_m_against_pandas(tmp_path: Path) -> None:
    columns = ["a", "b", "OT", "c"]  # target not last in the file
    frame = _write(tmp_path / "mine.csv", 300, columns, freq="h")
    path = str(tmp_path / "mine.csv")
    n_train = int(300 * 0.7)
    train = frame[columns].iloc[:n_train]
    normed = (frame[columns] - train.mean()) / train.std(ddof=0)
    start = _tsl_custom(300, 16)[2][0]  # first test window's first row

    s = load_forecast_splits(path, seq_len=16, pred_len=8, features="S", target="b")
    x, y = s.test[0]
    assert s.channels == ["b"] and x.shape == (16, 1) and y.shape == (8, 1)
    np.testing.assert_allclose(x[:, 0].numpy(), normed["b"].iloc[start : start + 16], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[:, 0].numpy(), normed["b"].iloc[start + 16 : start + 24], rtol=1e-5, atol=1e-5)

    ms = load_forecast_splits(path, seq_len=16, pred_len=8, features="MS", target="b")
    x, y = ms.test[0]
    assert ms.channels == ["a", "OT", "c", "b"] and x.shape == (16, 4) and y.shape == (8, 1)
    np.testing.assert_allclose(x.numpy(), normed[["a", "OT", "c", "b"]].iloc[start : start + 16], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[:, 0].numpy(), normed["b"].iloc[start + 16 : start + 24], rtol=1e-5, atol=1e-5)
    _xb, yb = ms.test.batch(torch.tensor([0, 3]))
    assert yb.shape == (2, 8, 1) and torch.equal(yb[0], y)

    m = load_forecast_splits(path, seq_len=16, pred_len=8)  # default target OT moved last
    assert m.channels == ["a", "b", "c", "OT"] and m.test[0][1].shape == (8, 4)

    with pytest.raises(ValueError, match="unknown features mode 'X'"):
        load_forecast_splits(path, pred_len=8, features="X")
    with pytest.raises(ValueError, match="target column 'OTT' not in the file; did you mean 'OT'"):
        load_forecast_splits(path, seq_len=16, pred_len=8, features="MS", target="OTT")


def test_name_suggestions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown forecasting data set 'ETTh3'; did you mean one of .*'ETTh1'.*\(valid: ETTh1, "):
        load_forecast_splits("ETTh3", tmp_path, pred_len=4)
    with pytest.raises(ValueError, match="did you mean 'weather'"):
        load_forecast_splits("wheather", tmp_path, pred_len=4)
    with pytest.raises(ValueError, match="unknown vision data set 'fashion_mnist'; did you mean 'fashion-mnist'"):
        build_task("vision", "fashion_mnist", data_dir=tmp_path, attention="softmax", seed=0)


def test_itransformer_targets_are_the_last_channels_of_the_full_output() -> None:
    torch.manual_seed(0)
    full = ITransformer(seq_len=12, pred_len=6, n_channels=5, d_model=16, d_ff=16, e_layers=1, heads=2).eval()
    ms = ITransformer(seq_len=12, pred_len=6, n_channels=5, d_model=16, d_ff=16, e_layers=1, heads=2, n_targets=1).eval()
    ms.load_state_dict(full.state_dict())
    x = torch.randn(3, 12, 5)
    torch.testing.assert_close(ms(x), full(x)[..., -1:])
    with pytest.raises(ValueError, match="n_targets"):
        ITransformer(seq_len=12, pred_len=6, n_channels=2, n_targets=3)


def test_cli_ms_run_and_option_errors(tmp_path: Path) -> None:
    _write(tmp_path / "series.csv", 300, ["a", "b", "OT"], freq="h")
    runner = CliRunner()
    base = ["train", "--task", "forecast", "--dataset", str(tmp_path / "series.csv"), "--horizon", "4",
            "--steps", "2", "--batch-size", "8", "--no-progress", "--model", "seq_len=8",
            "--model", "d_model=16", "--model", "d_ff=16", "--model", "e_layers=1", "--model", "heads=2"]
    result = runner.invoke(app, [*base, "--features", "MS", "--target", "a", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    text = json.dumps(config)
    assert '"features": "MS"' in text and '"target": "a"' in text
    result = runner.invoke(app, [*base, "--features", "XS", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "unknown features mode 'XS'" in result.output
    result = runner.invoke(app, ["train", "--task", "vision", "--dataset", "digits", "--features", "S",
                                 "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "--features only applies to the forecast task" in result.output
