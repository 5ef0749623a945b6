"""The timesclip-darts command: the demo, train/predict/backtest, and one-line errors."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from timesclip_cli.main import main
from timesclip_darts import TimesCLIPModel

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
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(args) == 0
    # Lightning's pytree deprecation fires on every Darts fit (the DLinear row too): the command
    # filters it for its process, so it never lands between the printed tables.
    assert not [w for w in seen if "LeafSpec" in str(w.message)]
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
        "--lr",
        "0.001",
        "--weight-decay",
        "0.01",
    ]
    assert main(args) == 0
    assert (tmp_path / "m.pt.scaler.json").is_file()
    optimiser = TimesCLIPModel.load(str(model)).pl_module_params["optimizer_kwargs"]
    assert optimiser == {"lr": 0.001, "weight_decay": 0.01}


def test_train_keeps_the_models_optimiser_defaults(trained: Path) -> None:
    from timesclip_darts.config import DEFAULT_LR, DEFAULT_WEIGHT_DECAY

    optimiser = TimesCLIPModel.load(str(trained)).pl_module_params["optimizer_kwargs"]
    assert optimiser == {"lr": DEFAULT_LR, "weight_decay": DEFAULT_WEIGHT_DECAY}


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


# ------------------------------------------------------------ likelihoods: point and quantiles
WINDOW = slice(600 - 48, 600)  # the last input window of csv_path, which predict forecasts after


@pytest.fixture(scope="module")
def gaussian(csv_path: Path, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("gaussian") / "model.pt"
    args = ["train", "--csv", str(csv_path), "--model-out", str(model), "--likelihood", "gaussian"]
    assert main([*args, *MODEL_ARGS]) == 0
    return model


@pytest.fixture(scope="module")
def gaussian_runtime(gaussian: Path, tmp_path_factory):
    """The Gaussian model exported (with its scaler) and loaded by the runtime."""
    from timesclip_export.runtime.forecaster import RollingForecaster

    bundle = tmp_path_factory.mktemp("gaussian_bundle") / "bundle"
    assert main(["export", str(gaussian), str(bundle), "--no-optimize"]) == 0
    return RollingForecaster(bundle)


def _predict(model: Path, csv_path: Path, out: Path, *extra: str) -> pd.DataFrame:
    args = ["predict", str(model), "--csv", str(csv_path), "-n", "12", "--output", str(out)]
    assert main([*args, *extra]) == 0
    return pd.read_csv(out, parse_dates=["time"])


def test_predict_with_a_likelihood_prints_the_runtimes_point_forecast(
    gaussian: Path, gaussian_runtime, csv_path: Path, etth1: pd.DataFrame, tmp_path: Path
) -> None:
    frame = _predict(gaussian, csv_path, tmp_path / "a.csv")
    assert list(frame.columns[1:]) == gaussian_runtime.targets == list(etth1.columns[1:])
    window = etth1.iloc[WINDOW, 1:].to_numpy(np.float32)
    runtime = gaussian_runtime.forecast(window)  # [12, 7]: the location, in original units
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), runtime, rtol=0, atol=1e-4)
    _predict(gaussian, csv_path, tmp_path / "b.csv")  # deterministic: no sampling
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_quantiles_in_predict_and_stream_agree_with_the_runtime(
    gaussian: Path, gaussian_runtime, csv_path: Path, etth1: pd.DataFrame, tmp_path: Path
) -> None:
    frame = _predict(gaussian, csv_path, tmp_path / "q.csv", "--quantiles", "0.9", "0.1", "0.5")
    targets = gaussian_runtime.targets
    labels = ["q0.1", "q0.5", "q0.9"]
    assert list(frame.columns[1:]) == [
        c for t in targets for c in [t] + [f"{t}_{q}" for q in labels]
    ]
    point = frame[targets].to_numpy()
    quantiles = np.stack([frame[[f"{t}_{q}" for t in targets]].to_numpy() for q in labels], -1)
    assert (np.diff(quantiles, axis=-1) > 0).all()  # sigma > 0: strictly increasing in q
    np.testing.assert_array_equal(quantiles[..., 1], point)  # the median is the location
    # Against torch's own Normal quantiles of the runtime's (de-scaled) mu and sigma.
    params = gaussian_runtime.forecast(etth1.iloc[WINDOW, 1:].to_numpy(np.float32), parameters=True)
    normal = torch.distributions.Normal(
        torch.from_numpy(params[..., 0]), torch.from_numpy(params[..., 1])
    )
    expected = np.stack([normal.icdf(torch.tensor(q)).numpy() for q in (0.1, 0.5, 0.9)], -1)
    np.testing.assert_allclose(quantiles, expected, rtol=0, atol=1e-4)
    # `stream` prints the same columns, step by step, for the same window.
    window = tmp_path / "window.csv"
    etth1.iloc[WINDOW].to_csv(window, index=False)
    out = tmp_path / "stream.csv"
    args = ["stream", str(gaussian_runtime.bundle), "--input", str(window), "--output", str(out)]
    assert main([*args, "--plain", "--quantiles", "0.1", "0.5", "0.9"]) == 0
    streamed = pd.read_csv(out)
    assert len(streamed) == 1
    for column in frame.columns[1:]:
        steps = streamed[[f"{column}+{k}" for k in range(1, 13)]].to_numpy()[0]
        np.testing.assert_allclose(steps, frame[column].to_numpy(), rtol=0, atol=1e-4)


def test_backtest_with_a_likelihood_scores_the_point_forecast(
    gaussian: Path, gaussian_runtime, csv_path: Path, etth1: pd.DataFrame, capsys
) -> None:
    import json

    args = ["backtest", str(gaussian), "--csv", str(csv_path), "--stride", "50"]
    assert main([*args, "--quantiles", "0.1", "0.5", "0.9"]) == 0
    out = capsys.readouterr().out
    assert main([*args, "--quantiles", "0.1", "0.5", "0.9"]) == 0
    assert capsys.readouterr().out == out
    mse, mae = (float(v) for v in re.search(r"MSE (\S+)  MAE (\S+)", out).groups())
    pinball = {q: float(v) for q, v in re.findall(r"q(0\.\d): pinball loss ([^,]+),", out)}
    assert list(pinball) == ["0.1", "0.5", "0.9"]
    assert abs(pinball["0.5"] - mae / 2) <= 1e-4  # the 0.5 quantile is the point forecast
    # The same MSE from the runtime's point forecasts on the same scaled windows.
    scaler = json.loads(Path(f"{gaussian}.scaler.json").read_text())
    raw = etth1.iloc[:600, 1:].to_numpy(np.float32)
    mean, scale = (np.array(scaler[k], np.float32) for k in ("mean", "scale"))
    scaled = ((raw - mean) / scale).astype(np.float32)
    windows = int(re.search(r"(\d+) windows", out).group(1))
    forecasts = gaussian_runtime.rolling(raw, stride=50)[:windows]
    forecasts = (forecasts - mean) / scale
    actual = np.stack([scaled[s + 48 : s + 60] for s in range(0, 50 * windows, 50)])
    assert windows == 11 and abs(np.mean((forecasts - actual) ** 2) - mse) <= 2e-4


@pytest.fixture(scope="module")
def quantile_model(csv_path: Path, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("quantile") / "model.pt"
    args = ["train", "--csv", str(csv_path), "--model-out", str(model), "--likelihood", "quantile"]
    assert main([*args, *MODEL_ARGS, "--max-train-windows", "16"]) == 0
    return model


@pytest.mark.parametrize(
    ("model", "quantiles", "message"),
    [
        ("gaussian", ["0"], "quantile '0' must be strictly between 0 and 1"),
        ("gaussian", ["0.5", "1"], "quantile '1' must be strictly between 0 and 1"),
        ("gaussian", ["1.5"], "quantile '1.5' must be strictly between 0 and 1"),
        ("gaussian", ["abc"], "quantile 'abc' is not a number"),
        (
            "quantile_model",
            ["0.5", "0.3"],
            "quantile(s) 0.3 were not fitted; the model's QuantileRegression has "
            "0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95",
        ),
        ("trained", ["0.5"], "the model has no likelihood"),
    ],
    ids=["zero", "one", "above-one", "not-a-number", "not-fitted", "point-model"],
)
@pytest.mark.parametrize("command", ["predict", "backtest"])
def test_bad_quantiles_are_one_line_usage_errors(
    request, command: str, model: str, quantiles: list[str], message: str, csv_path: Path, capsys
) -> None:
    path = request.getfixturevalue(model)
    extra = ["-n", "3"] if command == "predict" else []
    assert (
        main([command, str(path), "--csv", str(csv_path), *extra, "--quantiles", *quantiles]) == 2
    )
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_stream_refuses_quantiles_of_a_point_model(tiny_bundle: Path, capsys) -> None:
    assert main(["stream", str(tiny_bundle), "--quantiles", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "the model has no likelihood" in err and err.count("\n") == 1
