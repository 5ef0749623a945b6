"""The timesclip-darts command: the demo, train/predict/backtest, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from timesclip_darts.cli import main

MODEL_ARGS = [
    "--input-chunk-length",
    "48",
    "--output-chunk-length",
    "12",
    "--clip-model",
    "tiny",
    "--d-model",
    "32",
    "--epochs",
    "1",
    "--max-train-windows",
    "64",
]


@pytest.fixture(scope="module")
def csv_path(etth1: pd.DataFrame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "etth1_part.csv"
    etth1.iloc[:600].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(csv_path: Path, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("model") / "model.pt"
    assert main(["train", "--csv", str(csv_path), "--model-out", str(model), *MODEL_ARGS]) == 0
    return model


def test_demo_prints_the_table_and_writes_model_and_pictures(tmp_path: Path, capsys) -> None:
    args = [
        "demo",
        "--out-dir",
        str(tmp_path),
        "--clip-model",
        "tiny",
        "--epochs",
        "1",
        "--max-train-windows",
        "32",
        "--test-windows",
        "4",
        "--d-model",
        "32",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 stride-1 windows, input 96 -> horizon 96" in out
    for row in ("TimesCLIP (tiny)", "DLinear", "repeat last value", "published"):
        assert row in out
    assert "backbone: preset 'tiny' (random weights, NOT pretrained CLIP)" in out
    for name in (
        "timesclip_etth1.pt",
        "timesclip_etth1.pt.ckpt",
        "timesclip_etth1.pt.scaler.json",
        "forecasts.png",
        "vision_inputs.png",
        "selection_attention.png",
    ):
        assert (tmp_path / name).stat().st_size > 0
    before = (tmp_path / "timesclip_etth1.pt").read_bytes()
    assert main(args) == 1  # never overwrites a saved model unasked
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "timesclip_etth1.pt").read_bytes() == before


def test_predict_writes_forecasts_in_original_units(
    trained: Path, csv_path: Path, tmp_path: Path, etth1: pd.DataFrame
) -> None:
    out = tmp_path / "forecast.csv"
    assert (
        main(["predict", str(trained), "--csv", str(csv_path), "-n", "20", "--output", str(out)])
        == 0
    )
    frame = pd.read_csv(out, parse_dates=["time"])
    assert len(frame) == 20 and list(frame.columns[1:]) == list(etth1.columns[1:])
    assert frame["time"].iloc[0] == etth1["date"].iloc[600]
    # De-scaled: the oil temperature forecast lives near the data's own level, not near 0.
    level = etth1["OT"].iloc[400:600]
    assert abs(frame["OT"].mean() - level.mean()) < 4 * level.std()


def test_backtest_prints_errors(trained: Path, csv_path: Path, capsys) -> None:
    assert main(["backtest", str(trained), "--csv", str(csv_path), "--stride", "50"]) == 0
    out = capsys.readouterr().out
    assert "windows, horizon 12, stride 50" in out and "MSE" in out


def test_train_on_a_dataset_name_with_covariates(tmp_path: Path) -> None:
    model = tmp_path / "m.pt"
    args = [
        "train",
        "--dataset",
        "ETTh1",
        "--columns",
        "OT",
        "--past-covariates",
        "HUFL",
        "HULL",
        "--model-out",
        str(model),
        *MODEL_ARGS,
        "--max-train-windows",
        "32",
    ]
    assert main(args) == 0
    assert (tmp_path / "m.pt.scaler.json").is_file()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda d: ["train", "--dataset", "ETTx9", "--model-out", str(d / "m.pt")],
            "unknown dataset 'ETTx9'",
        ),
        (
            lambda d: [
                "train",
                "--dataset",
                "ETTh1",
                "--columns",
                "nope",
                "--model-out",
                str(d / "m.pt"),
            ],
            "unknown column",
        ),
        (
            lambda d: ["predict", str(d / "missing.pt"), "--dataset", "ETTh1", "-n", "3"],
            "does not exist",
        ),
        (
            lambda d: ["train", "--csv", str(d / "none.csv"), "--model-out", str(d / "m.pt")],
            "does not exist",
        ),
    ],
    ids=["unknown-dataset", "unknown-column", "missing-model", "missing-csv"],
)
def test_user_errors_are_one_line_without_traceback(
    tmp_path: Path, capsys, make_args, message: str
) -> None:
    assert main(make_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_nan_gap_is_located_and_can_be_filled(etth1: pd.DataFrame, tmp_path: Path, capsys) -> None:
    frame = etth1.iloc[:400].copy()
    frame.loc[150:152, "OT"] = np.nan
    path = tmp_path / "gappy.csv"
    frame.to_csv(path, index=False)
    args = ["train", "--csv", str(path), "--model-out", str(tmp_path / "m.pt"), *MODEL_ARGS]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "missing values" in err and "2016-07-07 06:00:00" in err and "--fill-missing" in err
    assert main([*args, "--fill-missing"]) == 0


def test_too_short_series_names_the_minimum(etth1: pd.DataFrame, tmp_path: Path, capsys) -> None:
    path = tmp_path / "short.csv"
    etth1.iloc[:50].to_csv(path, index=False)
    assert (
        main(["train", "--csv", str(path), "--model-out", str(tmp_path / "m.pt"), *MODEL_ARGS]) == 1
    )
    assert "needs at least 60" in capsys.readouterr().err


def test_predict_with_other_columns_or_frequency_is_refused(
    trained: Path, etth1: pd.DataFrame, tmp_path: Path, capsys
) -> None:
    fewer = tmp_path / "fewer.csv"
    etth1.iloc[:300, :5].to_csv(fewer, index=False)
    assert main(["predict", str(trained), "--csv", str(fewer), "-n", "3"]) == 1
    assert "unknown column" in capsys.readouterr().err
    daily = etth1.iloc[:300].copy()
    daily["date"] = pd.date_range("2020-01-01", periods=300, freq="D")
    path = tmp_path / "daily.csv"
    daily.to_csv(path, index=False)
    assert main(["predict", str(trained), "--csv", str(path), "-n", "3"]) == 1
    assert "frequency 'D'" in capsys.readouterr().err


def test_corrupt_model_file_is_named(trained: Path, tmp_path: Path, csv_path: Path, capsys) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(trained.read_bytes()[:200])
    Path(f"{broken}.ckpt").write_bytes(Path(f"{trained}.ckpt").read_bytes()[:1000])
    assert main(["predict", str(broken), "--csv", str(csv_path), "-n", "3"]) == 1
    err = capsys.readouterr().err
    assert "could not load a TimesCLIPModel" in err and "Traceback" not in err
