"""The ``timesclip-darts`` command: demo, train, predict and backtest (export and stream come from
the export package). User errors print one line and exit 1 (2 for options that can never work,
such as quantiles a model cannot give); no tracebacks."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from timesclip_darts.quiet import quiet_lightning
from timesclip_darts.scaling import ScalerError, StandardScaling

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

    from timesclip_darts.darts_model import DEFAULT_LR, DEFAULT_WEIGHT_DECAY, TimesCLIPModel
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
        likelihood=_likelihood(args.likelihood),
        optimizer_kwargs={
            "lr": _or(args.lr, DEFAULT_LR),
            "weight_decay": _or(args.weight_decay, DEFAULT_WEIGHT_DECAY),
        },
        pl_trainer_kwargs=_trainer_kwargs(progress=True),
    )
    covariates = inputs.past_covariates
    with mlflow_run(args.mlflow) as run:
        with _darts_autolog(run is not None):
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


def _likelihood(name: str):
    from darts.utils.likelihood_models import GaussianLikelihood, QuantileRegression

    return {
        "none": None,
        "gaussian": GaussianLikelihood(),
        "quantile": QuantileRegression([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]),
    }[name]


# --------------------------------------------------------------------------------- predict
@dataclass
class PointForecast:
    """Point forecasts ``[time, target]`` and quantiles ``[time, target, q]`` of one window."""

    time_index: object  # pandas index
    point: np.ndarray
    quantiles: np.ndarray


def cmd_predict(args: argparse.Namespace) -> int:
    from timesclip_export.quantiles import check_quantiles, likelihood_spec

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
        Path(args.output).write_text(text)
        print(f"wrote {args.n} forecast rows to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _parse_quantiles(args: argparse.Namespace) -> list[float]:
    from timesclip_export.quantiles import parse_quantiles

    return parse_quantiles(args.quantiles) if args.quantiles is not None else []


def _quantile_error(message: str) -> ValueError:
    from timesclip_export.quantiles import QuantileError

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
    from timesclip_export.quantiles import point_and_quantiles

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
    from timesclip_export.quantiles import quantile_label

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
    from timesclip_export.quantiles import check_quantiles, likelihood_spec, quantile_label

    from timesclip_darts.data import ett_splits

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


# ---------------------------------------------------------------------------------- mlflow
class UsageError(ValueError):
    """Options that can never work together: exit 2, as argparse's own usage errors."""


def check_mlflow_arguments(args: argparse.Namespace) -> None:
    """``--mlflow-register`` needs ``--mlflow``; ``--mlflow`` needs MLflow installed."""
    if args.mlflow_register and not args.mlflow:
        raise UsageError("--mlflow-register needs --mlflow")
    if args.mlflow:
        require_mlflow()


def require_mlflow():
    """The ``mlflow`` module, or a one-line error saying how to install it."""
    try:
        import mlflow
    except ImportError as err:
        raise ValueError(
            f"--mlflow needs MLflow ({err}); install it with: pip install 'timesclip-darts[mlflow]'"
        ) from None
    return mlflow


@contextmanager
def _mlflow_errors() -> Iterator[None]:
    """MLflow's own exceptions (server unreachable, bad experiment...) as one-line errors."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        first_line = str(err.message if hasattr(err, "message") else err).strip().splitlines()
        raise ValueError(f"MLflow: {first_line[0] if first_line else type(err).__name__}") from err


@contextmanager
def mlflow_run(enabled: bool) -> Iterator[object | None]:
    """The active MLflow run, or one started here from MLflow's environment variables
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID`` to resume a run, ``MLFLOW_EXPERIMENT_NAME`` or
    ``_ID``) and ended when the block ends (FAILED on an error); ``None`` when not enabled."""
    if not enabled:
        yield None
        return
    mlflow = require_mlflow()
    with _mlflow_errors():
        active = mlflow.active_run()
        run = active if active is not None else mlflow.start_run()
    if active is not None:  # someone else's run (a script calling main()): leave it open
        yield run
        return
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with _mlflow_errors():
            mlflow.end_run(status)


@contextmanager
def _darts_autolog(enabled: bool) -> Iterator[None]:
    """Darts' MLflow autologging (parameters, series info, per-epoch losses) for one fit."""
    if not enabled:
        yield
        return
    from darts.utils.mlflow import autolog

    autolog(log_models=False, silent=True)
    try:
        yield
    finally:
        autolog(disable=True, silent=True)


def log_model_to_mlflow(model, model_path: str | Path, register: str | None = None) -> str:
    """Log ``model`` to the active run with Darts' MLflow flavor (``darts.utils.mlflow``;
    ``load_model(uri)`` gives it back) and its scaler JSON, if any, as the run artifact
    ``scaler/``. Returns a line saying where it went."""
    import mlflow
    from darts.utils.mlflow import log_model

    with _mlflow_errors():
        info = log_model(
            model,
            name="model",
            registered_model_name=register,
            extra_pip_requirements=mlflow_pip_requirements(),
        )
        scaler = scaler_path(model_path)
        if scaler.is_file():
            mlflow.log_artifact(str(scaler), artifact_path="scaler")
    registered = f", registered as {register} v{info.registered_model_version}" if register else ""
    return f"mlflow: logged the model to run {info.run_id} as {info.model_uri}{registered}"


def mlflow_pip_requirements() -> list[str]:
    """What a logged model needs beyond Darts' own pin (the flavor's default): this package,
    whose class the flavor imports at load, pinned to the version that saved it."""
    from importlib.metadata import version

    return [f"timesclip-darts=={version('timesclip-darts')}"]


def log_bundle_to_mlflow(
    model_path: str | Path, bundle: str | Path, register: str | None = None
) -> list[str]:
    """Log an exported bundle folder to the active (or a new) run as the artifact ``bundle/``,
    and the model it came from with Darts' flavor unless the run has a model already (from
    ``train --mlflow``; then ``register`` registers that one). Returns lines to print."""
    mlflow = require_mlflow()
    lines = []
    with mlflow_run(True) as run, _mlflow_errors():
        mlflow.log_artifacts(str(bundle), artifact_path="bundle")
        lines.append(f"mlflow: logged the bundle to run {run.info.run_id} as artifact bundle/")
        outputs = mlflow.get_run(run.info.run_id).outputs
        logged = [m.model_id for m in (outputs.model_outputs if outputs else [])]
        if not logged:
            lines.append(log_model_to_mlflow(load_model(model_path), model_path, register))
        elif register:
            version = mlflow.register_model(f"models:/{logged[0]}", register)
            lines.append(
                f"mlflow: registered the run's model models:/{logged[0]} as {register} "
                f"v{version.version}"
            )
    return lines


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
    train.add_argument("--likelihood", choices=["none", "quantile", "gaussian"], default="none")
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

    _add_export_commands(commands)
    return parser


def add_mlflow_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--mlflow`` and ``--mlflow-register`` (``train`` and ``export``)."""
    parser.add_argument(
        "--mlflow",
        action="store_true",
        help=f"log {what} (Darts' MLflow flavor) to MLflow: the run in MLFLOW_RUN_ID, or a new "
        "one in MLFLOW_EXPERIMENT_NAME (or _ID) at MLFLOW_TRACKING_URI (needs the mlflow extra)",
    )
    parser.add_argument(
        "--mlflow-register",
        metavar="NAME",
        help="with --mlflow: also register the logged model as a new version of NAME",
    )


def _add_quantile_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--quantiles",
        nargs="+",
        metavar="Q",
        help=f"quantiles strictly between 0 and 1, e.g. 0.1 0.5 0.9 (models with a likelihood; "
        f"QuantileRegression: fitted ones only): {what}",
    )


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
        # The command's tables would drown in Lightning's messages (the demo's Darts baselines
        # fit outside TimesCLIPModel's own quieting).
        with quiet_lightning():
            return args.func(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if _is_usage_error(err) else 1
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return 130


def _is_usage_error(err: Exception) -> bool:
    """Options that can never work (quantiles a model cannot give) exit 2, as argparse's do."""
    from timesclip_export.quantiles import QuantileError

    return isinstance(err, (QuantileError, UsageError))


if __name__ == "__main__":
    sys.exit(main())
