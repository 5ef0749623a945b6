"""``demo``, ``train``, ``predict`` and ``backtest``: the commands on the model package's side.
User errors are ``ValueError`` subclasses, which :func:`timesclip_cli.main.main` prints as one
line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timesclip_cli.mlflow_logging import (
    add_mlflow_arguments,
    check_mlflow_arguments,
    darts_autolog,
    log_model_to_mlflow,
    mlflow_run,
)
from timesclip_cli.model_files import load_model, scaler_path
from timesclip_darts.atomic_files import write_text_atomic
from timesclip_darts.likelihoods import by_cli_name, cli_names
from timesclip_darts.scaling import ScalerError, StandardScaling


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``demo``, ``train``, ``predict`` and ``backtest`` to the ``timesclip-darts`` parser."""
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
        help="train on a random sample of N training windows, fixed by the seed (default "
        "2000; 0: every window, the benchmark's protocol)",
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
    train.add_argument("--lr", type=float, default=None, help="default: TimesCLIPModel's, 3e-4")
    train.add_argument(
        "--weight-decay", type=float, default=None, help="AdamW's; default: TimesCLIPModel's, 0.1"
    )
    train.add_argument("--max-train-windows", type=int, default=None)
    train.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="CSV only: the last part kept for validation (default 0.2)",
    )
    train.add_argument("--likelihood", choices=cli_names(), default="none")
    train.add_argument("--seed", type=int, default=0)
    add_mlflow_arguments(train, "the training parameters and per-epoch losses, and the model")
    train.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="forecast the next N steps after the data")
    predict.add_argument("model", help="a model saved by `train` or `demo`")
    _add_data_arguments(predict)
    predict.add_argument("-n", type=int, required=True, help="steps to forecast")
    predict.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="with a likelihood: sample N paths and print their median (and sample quantiles) "
        "instead of the likelihood's point forecast; needed for -n beyond output_chunk_length",
    )
    _add_quantile_argument(predict, "columns <target>_q<q> beside each target's forecast")
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
    _add_quantile_argument(backtest, "each one's pinball loss and share of actual values below it")
    backtest.set_defaults(func=cmd_backtest)


def _add_quantile_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--quantiles",
        nargs="+",
        metavar="Q",
        help=f"quantiles strictly between 0 and 1, e.g. 0.1 0.5 0.9 (models with a likelihood; "
        f"QuantileRegression: fitted ones only): {what}",
    )


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
    """The standard scaler saved as JSON beside a model, applied to Darts series by name."""

    def __init__(self, payload: dict) -> None:
        self.scaling = StandardScaling.from_payload(payload)

    def _params(self, series) -> tuple[np.ndarray, np.ndarray]:
        from timesclip_darts.data import DataError

        try:
            return self.scaling.params(list(series.components))
        except ScalerError as err:
            raise DataError(str(err)) from err

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

    def inverse_values(self, values: np.ndarray, components: list[str]) -> np.ndarray:
        """Inverse-scale ``[time, component]`` or ``[time, component, k]`` values (forecasts
        or quantiles: both scale like the data, as the scale is positive)."""
        mean, scale = self._params(_Components(components))
        shape = (len(components),) + (1,) * (values.ndim - 2)
        return (values * scale.reshape(shape) + mean.reshape(shape)).astype(np.float32)


@dataclass
class _Components:
    """Anything with ``components``, for :meth:`_JsonScaler._params`."""

    components: list[str]


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
def _or(given: float | None, default: float) -> float:
    """A command-line value, or the model's default when the option was not given."""
    return default if given is None else given


def cmd_train(args: argparse.Namespace) -> int:
    from darts.dataprocessing.transformers import Scaler
    from sklearn.preprocessing import StandardScaler

    from timesclip_darts.config import DEFAULT_LR, DEFAULT_WEIGHT_DECAY
    from timesclip_darts.darts_model import TimesCLIPModel
    from timesclip_darts.data import ett_splits, save_scaler_json

    out = Path(args.model_out)
    check_mlflow_arguments(args)
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
        likelihood=by_cli_name(args.likelihood),
        optimizer_kwargs={
            "lr": _or(args.lr, DEFAULT_LR),
            "weight_decay": _or(args.weight_decay, DEFAULT_WEIGHT_DECAY),
        },
        pl_trainer_kwargs=_trainer_kwargs(progress=True),
    )
    covariates = inputs.past_covariates
    with mlflow_run(args.mlflow) as run:
        with darts_autolog(run is not None):
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
        if run is not None:
            print(log_model_to_mlflow(model, out, args.mlflow_register))
    return 0


# --------------------------------------------------------------------------------- predict
@dataclass
class PointForecast:
    """Point forecasts ``[time, target]`` and quantiles ``[time, target, q]`` of one window."""

    time_index: object  # pandas index
    point: np.ndarray
    quantiles: np.ndarray


def cmd_predict(args: argparse.Namespace) -> int:
    from timesclip_darts.likelihoods import check_quantiles, likelihood_spec

    quantiles = _parse_quantiles(args)
    model = load_model(args.model)
    inputs = _load_inputs(args, columns=getattr(model, "target_components", None))
    _check_model_columns(model, inputs)
    scaled, scaler = _scale(inputs, args.model)
    spec = likelihood_spec(model.likelihood)
    targets = list(scaled.target.components)
    sampled = args.num_samples is not None or model.likelihood is None
    if model.likelihood is None:
        check_quantiles(spec, quantiles)  # refuses any: a point model has none
    elif sampled:
        if quantiles and args.num_samples < 2:
            raise _quantile_error("quantiles from samples need --num-samples of at least 2")
    else:
        check_quantiles(spec, quantiles)
        _check_parameter_horizon(model, args.n, "-n", "pass --num-samples N to sample instead")
    forecast = model.predict(
        args.n,
        series=scaled.target,
        past_covariates=scaled.past_covariates,
        num_samples=args.num_samples or 1,
        predict_likelihood_parameters=not sampled,
        verbose=False,
    )
    result = (
        _from_samples(forecast, quantiles)
        if sampled
        else _from_parameters(forecast, len(targets), spec, quantiles)
    )
    if scaler is not None:
        result.point = scaler.inverse_values(result.point, targets)
        result.quantiles = scaler.inverse_values(result.quantiles, targets)
    text = _forecast_frame(result, targets, quantiles).to_csv(index_label="time")
    if args.output:
        write_text_atomic(args.output, text)
        print(f"wrote {args.n} forecast rows to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _parse_quantiles(args: argparse.Namespace) -> list[float]:
    from timesclip_darts.likelihoods import parse_quantiles

    return parse_quantiles(args.quantiles) if args.quantiles is not None else []


def _quantile_error(message: str) -> ValueError:
    from timesclip_darts.likelihoods import QuantileError

    return QuantileError(message)


def _check_parameter_horizon(model, n: int, option: str, hint: str) -> None:
    """Darts predicts likelihood parameters only up to ``output_chunk_length`` steps."""
    if n > model.output_chunk_length:
        raise ValueError(
            f"{option} {n} is beyond the model's output_chunk_length "
            f"({model.output_chunk_length}): its point forecast and quantiles come from the "
            f"likelihood's parameters, which Darts predicts only that far; {hint}"
        )


def _from_parameters(forecast, n_targets: int, spec: dict, quantiles: list[float]) -> PointForecast:
    """A ``predict_likelihood_parameters=True`` forecast (components grouped by target) ->
    the runtime's point forecast and the requested quantiles."""
    from timesclip_darts.likelihoods import point_and_quantiles

    values = forecast.values(copy=False)
    params = values.reshape(len(values), n_targets, len(spec["parameters"]))
    point, quantile_values = point_and_quantiles(params, spec, quantiles)
    return PointForecast(forecast.time_index, point, quantile_values)


def _from_samples(forecast, quantiles: list[float]) -> PointForecast:
    """Sampled forecasts (or a point model's) -> their median and sample quantiles."""
    point = forecast.quantile(0.5) if forecast.is_stochastic else forecast
    stacked = [forecast.quantile(q).values(copy=False) for q in quantiles]
    shape = (len(forecast), forecast.n_components, 0)
    return PointForecast(
        forecast.time_index,
        point.values(copy=False),
        np.stack(stacked, axis=-1) if stacked else np.empty(shape, np.float32),
    )


def _forecast_frame(result: PointForecast, targets: list[str], quantiles: list[float]):
    """One column per target (the point forecast), each followed by ``<target>_q<q>``."""
    import pandas as pd

    from timesclip_darts.likelihoods import quantile_label

    columns: dict[str, np.ndarray] = {}
    for j, target in enumerate(targets):
        columns[target] = result.point[:, j]
        for k, q in enumerate(quantiles):
            columns[f"{target}_{quantile_label(q)}"] = result.quantiles[:, j, k]
    return pd.DataFrame(columns, index=result.time_index)


# -------------------------------------------------------------------------------- backtest
def cmd_backtest(args: argparse.Namespace) -> int:
    from darts import TimeSeries
    from darts.metrics import mae, mse

    from timesclip_darts.data import ett_splits
    from timesclip_darts.likelihoods import check_quantiles, likelihood_spec, quantile_label

    quantiles = _parse_quantiles(args)
    model = load_model(args.model)
    inputs = _load_inputs(args, columns=getattr(model, "target_components", None))
    _check_model_columns(model, inputs)
    spec = likelihood_spec(model.likelihood)
    check_quantiles(spec, quantiles)
    if args.dataset and args.split == "test":
        series = ett_splits(inputs.target, args.dataset, model.input_chunk_length).test
    else:
        series = _scale(inputs, args.model)[0].target
    horizon = args.horizon or model.output_chunk_length
    probabilistic = model.likelihood is not None
    if probabilistic:
        _check_parameter_horizon(model, horizon, "--horizon", "pick a shorter horizon")
    forecasts = model.historical_forecasts(
        series,
        past_covariates=inputs.past_covariates,
        forecast_horizon=horizon,
        stride=args.stride,
        retrain=False,
        last_points_only=False,
        predict_likelihood_parameters=probabilistic,
        verbose=False,
    )
    n_targets = series.n_components
    results = [
        _from_parameters(f, n_targets, spec, quantiles) if probabilistic else None
        for f in forecasts
    ]
    if probabilistic:  # score the runtime's point forecast (median or location), not a draw
        forecasts = [
            TimeSeries.from_times_and_values(f.time_index, r.point, columns=series.components)
            for f, r in zip(forecasts, results, strict=True)
        ]
    errors = model.backtest(series, historical_forecasts=forecasts, metric=[mse, mae])
    print(
        f"{inputs.label}: {len(forecasts)} windows, horizon {horizon}, stride {args.stride} "
        "(scaled values)"
    )
    print(f"MSE {errors[0]:.4f}  MAE {errors[1]:.4f}")
    if quantiles:
        actual = np.stack([series.slice_intersect_values(f) for f in forecasts])[..., 0]
        predicted = np.stack([r.quantiles for r in results])  # [window, time, target, q]
        for k, q in enumerate(quantiles):
            error = actual - predicted[..., k]
            pinball = np.mean(np.maximum(q * error, (q - 1) * error))
            below = np.mean(actual <= predicted[..., k])
            print(
                f"{quantile_label(q)}: pinball loss {pinball:.4f}, {below:.1%} of actual "
                f"values at or below it (ideally {q:.1%})"
            )
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
