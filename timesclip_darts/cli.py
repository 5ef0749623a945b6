"""The ``timesclip-darts`` command: demo, train, predict and backtest (export and stream come from
the export package). User errors print one line and exit 1; no tracebacks."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_model(path: str | Path):
    """``TimesCLIPModel.load``: every unusable file is a ``ModelFileError`` naming the problem."""
    from timesclip_darts.darts_model import TimesCLIPModel

    return TimesCLIPModel.load(str(path))


def scaler_path(model_path: str | Path) -> Path:
    return Path(f"{model_path}.scaler.json")


@dataclass
class Inputs:
    target: object  # TimeSeries
    past_covariates: object | None
    label: str


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="CSV file: a time column, then numeric columns")
    source.add_argument("--dataset", help="Darts dataset name: ETTh1, ETTh2, ETTm1 or ETTm2")
    parser.add_argument(
        "--data-dir",
        help="folder with local copies of the ETT CSV files "
        "(default: ../shared/data/ETT when it exists)",
    )
    parser.add_argument("--time-col", help="time column of the CSV (default: the first)")
    parser.add_argument("--columns", nargs="+", help="target columns (default: all)")
    parser.add_argument(
        "--past-covariates",
        nargs="+",
        default=[],
        help="columns used as past covariates (inputs only, not forecast)",
    )
    parser.add_argument(
        "--fill-missing", action="store_true", help="interpolate missing values instead of failing"
    )


def _load_inputs(args: argparse.Namespace, columns: list[str] | None = None) -> Inputs:
    from timesclip_darts.data import DataError, check_values, load_csv, load_darts_dataset

    if args.csv:
        series = load_csv(args.csv, args.time_col, fill_missing=args.fill_missing)
        label = args.csv
    else:
        series = check_values(
            load_darts_dataset(args.dataset, args.data_dir), args.dataset, args.fill_missing
        )
        label = args.dataset
    available = list(series.components)
    covariates = list(args.past_covariates)
    targets = columns or args.columns or [c for c in available if c not in covariates]
    unknown = [c for c in targets + covariates if c not in available]
    if unknown:
        raise DataError(f"unknown column(s) {unknown} in {label}; columns: {available}")
    return Inputs(series[targets], series[covariates] if covariates else None, label)


def _scale(inputs: Inputs, model_path: str | Path) -> tuple[Inputs, object | None]:
    """Apply the scaler saved beside a model, if any; returns it for inverse transforms."""
    from timesclip_darts.data import load_scaler_json

    path = scaler_path(model_path)
    if not path.is_file():
        return inputs, None
    payload = load_scaler_json(path)
    scaler = _JsonScaler(payload)
    return Inputs(scaler.transform(inputs.target), inputs.past_covariates, inputs.label), scaler


class _JsonScaler:
    """The standard scaler saved as JSON beside a model, applied by component name."""

    def __init__(self, payload: dict) -> None:
        self.mean = dict(zip(payload["components"], payload["mean"], strict=True))
        self.scale = dict(zip(payload["components"], payload["scale"], strict=True))

    def _params(self, series) -> tuple[np.ndarray, np.ndarray]:
        from timesclip_darts.data import DataError

        missing = [c for c in series.components if c not in self.mean]
        if missing:
            raise DataError(f"the model's scaler knows no column(s) {missing}")
        names = list(series.components)
        return (
            np.array([self.mean[c] for c in names], dtype=np.float32),
            np.array([self.scale[c] for c in names], dtype=np.float32),
        )

    def transform(self, series):
        mean, scale = self._params(series)
        return series.with_values(
            ((series.all_values() - mean[:, None]) / scale[:, None]).astype(np.float32)
        )

    def inverse_transform(self, series):
        mean, scale = self._params(series)
        return series.with_values(
            (series.all_values() * scale[:, None] + mean[:, None]).astype(np.float32)
        )


def _check_model_columns(model, inputs: Inputs) -> None:
    from timesclip_darts.data import DataError

    expected = getattr(model, "target_components", None)
    if expected and list(inputs.target.components) != expected:
        raise DataError(
            f"the model was trained on columns {expected} (in this order); got "
            f"{list(inputs.target.components)}. Pass --columns {' '.join(expected)}"
        )
    if len(inputs.target) < model.input_chunk_length:
        raise DataError(
            f"{inputs.label} has {len(inputs.target)} rows; the model needs at least "
            f"{model.input_chunk_length} (its input_chunk_length)"
        )


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def _trainer_kwargs(progress: bool) -> dict:
    return {"enable_progress_bar": progress, "enable_model_summary": False}


# ----------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from darts.dataprocessing.transformers import Scaler
    from sklearn.preprocessing import StandardScaler

    from timesclip_darts.darts_model import TimesCLIPModel
    from timesclip_darts.data import ett_splits, save_scaler_json

    out = Path(args.model_out)
    _refuse_overwrite(out, args.overwrite)
    inputs = _load_inputs(args)
    icl, ocl = args.input_chunk_length, args.output_chunk_length
    if args.dataset and not inputs.past_covariates:
        splits = ett_splits(inputs.target, args.dataset, icl)
        train, val, scaler = splits.train, splits.val, splits.scaler
    else:
        cut = int(len(inputs.target) * (1 - args.val_fraction))
        scaler = Scaler(StandardScaler())
        train = scaler.fit_transform(inputs.target[:cut])
        val = scaler.transform(inputs.target[max(cut - icl, 0) :]) if args.val_fraction else None
    minimum = icl + ocl
    if len(train) < minimum:
        raise ValueError(
            f"the training part of {inputs.label} has {len(train)} rows; "
            f"TimesCLIP needs at least {minimum} (input + output chunk length)"
        )
    if val is not None and len(val) < minimum:
        val = None
    model = TimesCLIPModel(
        icl,
        ocl,
        clip_model_name=args.clip_model,
        d_model=args.d_model,
        n_heads=args.n_heads,
        batch_size=args.batch_size,
        n_epochs=args.epochs,
        random_state=args.seed,
        likelihood=_likelihood(args.likelihood),
        optimizer_kwargs={"lr": args.lr},
        pl_trainer_kwargs=_trainer_kwargs(progress=True),
    )
    covariates = inputs.past_covariates
    model.fit(
        train,
        past_covariates=covariates,
        val_series=val,
        val_past_covariates=covariates if val is not None else None,
        max_samples_per_ts=args.max_train_windows,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    save_scaler_json(scaler, list(inputs.target.components), scaler_path(out))
    print(f"backbone: {model.core.backbone_info.describe()}")
    print(f"saved {out} (+ .ckpt, .scaler.json)")
    return 0


def _likelihood(name: str):
    from darts.utils.likelihood_models import GaussianLikelihood, QuantileRegression

    return {
        "none": None,
        "gaussian": GaussianLikelihood(),
        "quantile": QuantileRegression([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]),
    }[name]


# --------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    inputs = _load_inputs(args, columns=getattr(model, "target_components", None))
    _check_model_columns(model, inputs)
    scaled, scaler = _scale(inputs, args.model)
    forecast = model.predict(
        args.n,
        series=scaled.target,
        past_covariates=scaled.past_covariates,
        num_samples=args.num_samples,
        verbose=False,
    )
    if scaler is not None:
        forecast = scaler.inverse_transform(forecast)
    frame = (forecast.quantile(0.5) if forecast.is_stochastic else forecast).to_dataframe()
    text = frame.to_csv(index_label="time")
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.n} forecast rows to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# -------------------------------------------------------------------------------- backtest
def cmd_backtest(args: argparse.Namespace) -> int:
    from darts.metrics import mae, mse

    from timesclip_darts.data import ett_splits

    model = load_model(args.model)
    inputs = _load_inputs(args, columns=getattr(model, "target_components", None))
    _check_model_columns(model, inputs)
    if args.dataset and args.split == "test":
        series = ett_splits(inputs.target, args.dataset, model.input_chunk_length).test
    else:
        series = _scale(inputs, args.model)[0].target
    horizon = args.horizon or model.output_chunk_length
    forecasts = model.historical_forecasts(
        series,
        past_covariates=inputs.past_covariates,
        forecast_horizon=horizon,
        stride=args.stride,
        retrain=False,
        last_points_only=False,
        verbose=False,
    )
    errors = model.backtest(series, historical_forecasts=forecasts, metric=[mse, mae])
    print(
        f"{inputs.label}: {len(forecasts)} windows, horizon {horizon}, stride {args.stride} "
        "(scaled values)"
    )
    print(f"MSE {errors[0]:.4f}  MAE {errors[1]:.4f}")
    return 0


# ------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from timesclip_darts.demo import run_demo

    run_demo(
        out_dir=Path(args.out_dir),
        data_dir=args.data_dir,
        preset=args.clip_model,
        epochs=args.epochs,
        max_train_windows=args.max_train_windows,
        test_windows=args.test_windows,
        d_model=args.d_model,
        n_heads=args.n_heads,
        overwrite=args.overwrite,
    )
    return 0


# ---------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timesclip-darts",
        description="TimesCLIP forecasting with Darts: train, predict, backtest, demo.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train a small TimesCLIP on ETTh1 (CPU, minutes) and backtest it"
    )
    demo.add_argument(
        "--out-dir",
        default="timesclip-demo",
        help="where the model and pictures go (default: ./timesclip-demo)",
    )
    demo.add_argument("--data-dir", help="local ETT CSV folder (default: ../shared/data/ETT)")
    demo.add_argument(
        "--clip-model",
        default="small",
        help="CLIP preset, local folder or hub id (default: the small preset)",
    )
    demo.add_argument("--epochs", type=int, default=2)
    demo.add_argument(
        "--max-train-windows",
        type=int,
        default=2000,
        help="training windows per epoch, the most recent first (default 2000)",
    )
    demo.add_argument(
        "--test-windows",
        type=int,
        default=None,
        help="backtest only the first N test windows (default: all 2785)",
    )
    demo.add_argument("--d-model", type=int, default=128)
    demo.add_argument("--n-heads", type=int, default=4)
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo model")
    demo.set_defaults(func=cmd_demo)

    train = commands.add_parser("train", help="train a TimesCLIPModel on a CSV or a dataset")
    _add_data_arguments(train)
    train.add_argument("--model-out", required=True, help="where to save the model")
    train.add_argument("--overwrite", action="store_true")
    train.add_argument("--input-chunk-length", type=int, default=96)
    train.add_argument("--output-chunk-length", type=int, default=96)
    train.add_argument(
        "--clip-model",
        default="small",
        help="CLIP preset, local folder or hub id (default: the small preset)",
    )
    train.add_argument("--d-model", type=int, default=128)
    train.add_argument("--n-heads", type=int, default=4)
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--max-train-windows", type=int, default=None)
    train.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="CSV only: the last part kept for validation (default 0.2)",
    )
    train.add_argument("--likelihood", choices=["none", "quantile", "gaussian"], default="none")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="forecast the next N steps after the data")
    predict.add_argument("model", help="a model saved by `train` or `demo`")
    _add_data_arguments(predict)
    predict.add_argument("-n", type=int, required=True, help="steps to forecast")
    predict.add_argument("--num-samples", type=int, default=1)
    predict.add_argument("--output", help="CSV file (default: standard output)")
    predict.set_defaults(func=cmd_predict)

    backtest = commands.add_parser("backtest", help="stride-1 historical forecasts and errors")
    backtest.add_argument("model", help="a model saved by `train` or `demo`")
    _add_data_arguments(backtest)
    backtest.add_argument(
        "--split",
        choices=["test", "all"],
        default="test",
        help="datasets: the standard test split (default) or everything",
    )
    backtest.add_argument("--horizon", type=int, default=None)
    backtest.add_argument("--stride", type=int, default=1)
    backtest.set_defaults(func=cmd_backtest)

    _add_export_commands(commands)
    return parser


def _add_export_commands(commands: argparse._SubParsersAction) -> None:
    """`export` and `stream` live in the export package, which may not be installed."""
    try:
        from timesclip_export.commands import add_commands
    except ImportError:
        return
    add_commands(commands)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
