"""Data in and out: Darts' ETT datasets (offline through a local copy), the standard ETT splits,
and CSV files, with errors that name the problem."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from darts import TimeSeries
from darts.dataprocessing.transformers import Scaler
from darts.datasets import ETTh1Dataset, ETTh2Dataset, ETTm1Dataset, ETTm2Dataset
from darts.datasets.dataset_loaders import DatasetLoader
from sklearn.preprocessing import StandardScaler

from timesclip_darts import checks
from timesclip_darts.atomic_files import write_text_atomic
from timesclip_darts.scaling import StandardScaling

ETT_DATASETS = {
    "ETTh1": ETTh1Dataset,
    "ETTh2": ETTh2Dataset,
    "ETTm1": ETTm1Dataset,
    "ETTm2": ETTm2Dataset,
}
# Rows per 30-day "month" in the long-term forecasting protocol (Informer et al.).
_ROWS_PER_MONTH = {"ETTh1": 720, "ETTh2": 720, "ETTm1": 2880, "ETTm2": 2880}


class DataError(ValueError):
    """Input data that cannot be used as given; the message says why and what to do."""


def default_data_dir() -> Path | None:
    """``../shared/data/ETT`` beside the working folder or beside this checkout, if it exists."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data" / "ETT"
        if candidate.is_dir():
            return candidate
    return None


def load_darts_dataset(name: str, data_dir: str | Path | None = None) -> TimeSeries:
    """Load a Darts dataset by name (``ETTh1``, ``ETTm1``, ...) through Darts' own loader.

    With ``data_dir`` (or the default ``../shared/data/ETT``), a missing file is first copied into
    Darts' cache, where the loader finds it and checks its MD5 instead of downloading.
    """
    if name not in ETT_DATASETS:
        raise DataError(f"unknown dataset '{name}'; available: {', '.join(ETT_DATASETS)}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    cached = Path(DatasetLoader._DEFAULT_DIRECTORY) / f"{name}.csv"
    if data_dir is not None and not cached.exists():
        source = data_dir / f"{name}.csv"
        if not source.is_file():
            raise DataError(f"{source} does not exist; pass --data-dir with the ETT CSV files")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, cached)
    try:
        return ETT_DATASETS[name]().load().astype(np.float32)
    except Exception as err:  # the loader raises its own error types for download/hash problems
        raise DataError(
            f"could not load dataset '{name}' ({err}); on a machine without internet pass "
            "--data-dir pointing at a folder with the ETT CSV files"
        ) from err


@dataclass
class Splits:
    """Train/val/test series of the standard protocol, already scaled, and the fitted scaler."""

    train: TimeSeries
    val: TimeSeries
    test: TimeSeries
    scaler: Scaler


def ett_splits(series: TimeSeries, name: str, input_chunk_length: int) -> Splits:
    """The long-term forecasting split: 12/4/4 months; val and test start ``input_chunk_length``
    rows early so their first windows end at the split boundary; a StandardScaler fitted on train.
    """
    month = _ROWS_PER_MONTH[name]
    train = series[: 12 * month]
    val = series[12 * month - input_chunk_length : 16 * month]
    test = series[16 * month - input_chunk_length : 20 * month]
    scaler = Scaler(StandardScaler())
    train = scaler.fit_transform(train)
    return Splits(train, scaler.transform(val), scaler.transform(test), scaler)


def save_scaler_json(scaler: Scaler, components: list[str], path: str | Path) -> None:
    """Write a fitted StandardScaler as JSON (``components``, ``mean``, ``scale``): readable by
    the deployment runtime without Darts, sklearn or pickle."""
    import json

    fitted = scaler._fitted_params[0]
    payload = {
        "kind": "standard",
        "components": list(components),
        "mean": [float(v) for v in fitted.mean_],
        "scale": [float(v) for v in fitted.scale_],
    }
    write_text_atomic(path, json.dumps(payload, indent=2))


def load_scaler_json(path: str | Path) -> dict:
    """Read what :func:`save_scaler_json` wrote (checked by the reader the runtime uses too)."""
    import json

    try:
        payload = json.loads(Path(path).read_text())
        StandardScaling.from_payload(payload)
    except (OSError, ValueError) as err:  # JSONDecodeError and ScalerError are ValueErrors
        raise DataError(f"{path} is not a scaler file written by timesclip-darts ({err})") from err
    return payload


def load_csv(
    path: str | Path,
    time_col: str | None = None,
    columns: list[str] | None = None,
    fill_missing: bool = False,
) -> TimeSeries:
    """A CSV file -> float32 ``TimeSeries`` (first column is time unless ``time_col`` says).

    Raises ``DataError`` for a missing file, unknown columns, non-numeric values, irregular or
    duplicate timestamps and NaN gaps (with where they are; ``fill_missing`` interpolates them).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    frame = pd.read_csv(path)
    if frame.empty:
        raise DataError(f"{path} has no data rows")
    time_col = time_col or frame.columns[0]
    missing = [c for c in [time_col, *(columns or [])] if c not in frame.columns]
    if missing:
        raise DataError(f"column(s) {missing} not in {path}; columns: {list(frame.columns)}")
    frame[time_col] = pd.to_datetime(frame[time_col], errors="raise")
    if frame[time_col].duplicated().any():
        first = frame.loc[frame[time_col].duplicated(), time_col].iloc[0]
        raise DataError(f"duplicate timestamp {first} in {path}")
    if not frame[time_col].is_monotonic_increasing:
        raise DataError(f"timestamps in {path} are not in increasing order")
    values = frame.drop(columns=[time_col]) if columns is None else frame[columns]
    non_numeric = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        raise DataError(f"column(s) {non_numeric} in {path} are not numeric")
    frame = pd.concat([frame[[time_col]], values.astype(np.float32)], axis=1)
    try:
        series = TimeSeries.from_dataframe(frame, time_col=time_col, fill_missing_dates=True)
    except ValueError as err:
        raise DataError(f"could not infer a regular frequency for {path}: {err}") from err
    return check_values(series, str(path), fill_missing)


def check_values(series: TimeSeries, label: str, fill_missing: bool = False) -> TimeSeries:
    """Raise a ``DataError`` saying where NaN gaps are (or interpolate them when asked) and
    where values are too large for the model's float32 statistics."""
    values = series.values(copy=False)
    gaps = checks.bad_rows(values)
    if len(gaps) and not fill_missing:
        index = series.time_index
        raise DataError(
            f"{label} has {len(gaps)} time step(s) with missing values, the first at "
            f"{index[gaps[0]]} and the last at {index[gaps[-1]]}; fill them "
            "(--fill-missing interpolates them) or cut the series"
        )
    if len(gaps):
        from darts.utils.missing_values import fill_missing_values

        series = fill_missing_values(series)
    bad = checks.first_bad_value(series.values(copy=False))
    if bad is not None:
        raise DataError(f"{label}: {bad.problem()} (at {series.time_index[bad.index[0]]})")
    return series
