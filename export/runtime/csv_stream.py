"""Streaming forecasts: CSV rows (a time column, then the variates) in, one forecast per new row
out, as CSV or JSON lines, for piping from a live source.

A pipe or a terminal is read line by line, so each row is forecast as soon as it arrives; a
regular file (``--input FILE`` or ``< FILE``) is read with pandas in chunks, so its rows are
forecast in large batches. Either way the forecasts are those of
:meth:`RollingForecaster.update`, and output is flushed after every batch.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

import numpy as np
from timesclip_export.errors import InputError, TimestampError
from timesclip_export.runtime.forecaster import RollingForecaster
from timesclip_export.runtime.timestamps import read_timestamps

from timesclip_darts.likelihoods import check_quantiles, point_and_quantiles, quantile_label

FORMATS = ("csv", "jsonl")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class Rows:
    """Consecutive input rows: their first line number, raw timestamps and values."""

    first_line: int
    times: list[str]
    values: np.ndarray


def stream_forecasts(
    forecaster: RollingForecaster,
    source: TextIO,
    sink: TextIO,
    fmt: str = "csv",
    time_col: str | None = None,
    chunk_rows: int = 1024,
    label: str = "input",
    quantiles: Sequence[float] = (),
) -> int:
    """Forecast after every row of ``source`` that ends a full window; returns how many
    forecasts were written. Errors name the line of ``label`` where the problem is. With
    ``quantiles`` (of a model with a likelihood), each target's forecast is followed by them."""
    if fmt not in FORMATS:
        raise InputError(f"unknown output format '{fmt}'; use one of {FORMATS}")
    likelihood = forecaster.manifest["model"]["likelihood"]
    check_quantiles(likelihood, quantiles)
    live = not _is_regular_file(source)
    header = _read_header(source, label)
    time_col = header[0] if time_col is None else time_col
    if time_col not in header:
        raise InputError(f"{label} has no time column '{time_col}'; its columns: {header}")
    variates = [c for c in header if c != time_col]
    if variates != forecaster.inputs:
        raise InputError(
            f"{label} has the variate columns {variates}; the model needs {forecaster.inputs} "
            f"in this order (header: {','.join([time_col, *forecaster.inputs])})"
        )
    column = header.index(time_col)
    batches = (
        _read_lines(source, column, len(header), label)
        if live
        else _read_chunks(source, header, time_col, chunk_rows, label)
    )
    writer = _Writer(forecaster, sink, fmt, quantiles)
    written = 0
    for rows in batches:
        timestamps = _parse_times(forecaster, rows, label)
        try:
            forecasts = forecaster.update(
                rows.values, timestamps=timestamps, parameters=bool(quantiles)
            )
        except InputError as err:
            last = rows.first_line + len(rows.times) - 1
            if err.row is not None or last == rows.first_line:
                where = f"line {rows.first_line + (err.row or 0)}"
            else:
                where = f"lines {rows.first_line}-{last}"
            raise type(err)(f"{label}, {where}: {err}", row=err.row, reason=err.reason) from err
        if len(forecasts):
            ends = rows.times[len(rows.times) - len(forecasts) :]
            end_stamps = None if timestamps is None else timestamps[-len(forecasts) :]
            if quantiles:
                point, quantile_values = point_and_quantiles(forecasts, likelihood, quantiles)
            else:
                point, quantile_values = forecasts, np.empty((*forecasts.shape, 0), np.float32)
            writer.write(ends, end_stamps, point, quantile_values)
            written += len(forecasts)
    return written


def _is_regular_file(source: TextIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(source.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):  # StringIO and friends: read as a file
        return True


def _read_header(source: TextIO, label: str) -> list[str]:
    line = source.readline()
    if not line.strip():
        raise InputError(f"{label} is empty; expected a CSV header (time column, then variates)")
    return [name.strip() for name in next(csv.reader([line]))]


def _read_lines(source: TextIO, time_index: int, n_fields: int, label: str) -> Iterator[Rows]:
    """One row at a time, as soon as its line arrives."""
    line_number = 1
    while True:
        line = source.readline()
        if not line:
            return
        line_number += 1
        if not line.strip():
            continue
        fields = next(csv.reader([line]))
        if len(fields) != n_fields:
            raise InputError(
                f"{label}, line {line_number}: {len(fields)} fields, the header has {n_fields}"
            )
        stamp = fields.pop(time_index).strip()
        try:
            values = np.array([float(v) if v.strip() else np.nan for v in fields], np.float64)
        except ValueError as err:
            raise InputError(
                f"{label}, line {line_number}: a value is not a number ({err})"
            ) from err
        yield Rows(line_number, [stamp], values[None, :])


def _read_chunks(
    source: TextIO, header: list[str], time_col: str, chunk_rows: int, label: str
) -> Iterator[Rows]:
    """Large chunks of a regular file, parsed by pandas."""
    import pandas as pd

    line_number = 2
    reader = pd.read_csv(
        source, header=None, names=header, chunksize=chunk_rows, dtype={time_col: str}
    )
    for chunk in reader:
        values = chunk.drop(columns=[time_col])
        bad = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
        if bad:
            first = pd.to_numeric(values[bad[0]], errors="coerce").isna() & values[bad[0]].notna()
            line = line_number + int(np.argmax(first.to_numpy()))
            raise InputError(f"{label}, line {line}: column '{bad[0]}' holds a non-number")
        yield Rows(
            line_number,
            chunk[time_col].fillna("").astype(str).tolist(),
            values.to_numpy(dtype=np.float64),
        )
        line_number += len(chunk)


def _parse_times(forecaster: RollingForecaster, rows: Rows, label: str) -> np.ndarray:
    """The time column's cells (surrounding spaces dropped) as the runtime takes them:
    ``datetime64[ns]`` or integer steps, read by :func:`read_timestamps` with its rules (ISO 8601
    only, no time zone offsets, nothing missing, within int64 ns), or an error with the line."""
    kind = forecaster.time.get("index")
    cells = [t.strip() for t in rows.times]
    try:
        if kind == "range":  # integer text as ints; anything else goes on as text, refused there
            return read_timestamps([int(t) if _INTEGER.fullmatch(t) else t for t in cells], kind)
        return read_timestamps(cells, kind).view("datetime64[ns]")
    except TimestampError as err:
        line = rows.first_line + (err.row or 0)
        raise TimestampError(
            f"{label}, line {line}: {err}", row=err.row, reason=err.reason
        ) from err


class _Writer:
    """CSV (one row per forecast: the last observed time, then ``<target>+<k>`` columns, k steps
    after it) or JSON lines (the time, the forecast's timestamps and a list per target). With
    quantiles, each target is followed by ``<target>_q<q>`` (``+<k>`` in CSV)."""

    def __init__(
        self, forecaster: RollingForecaster, sink: TextIO, fmt: str, quantiles: Sequence[float]
    ) -> None:
        self.forecaster = forecaster
        self.sink = sink
        self.fmt = fmt
        self.header_written = False
        # Per target: the point forecast, then its quantiles.
        self.columns = [
            [t] + [f"{t}_{quantile_label(q)}" for q in quantiles] for t in forecaster.targets
        ]
        shift = forecaster.output_chunk_shift
        self.steps = [shift + k for k in range(1, forecaster.output_chunk_length + 1)]

    def write(
        self, ends: list[str], stamps: np.ndarray | None, point: np.ndarray, quantiles: np.ndarray
    ) -> None:
        """Forecasts ``[k, H, N_t]`` and their quantiles ``[k, H, N_t, Q]`` after rows ``ends``."""
        values = np.concatenate([point[..., None], quantiles], axis=-1)  # [k, H, N_t, 1 + Q]
        lines = []
        if self.fmt == "csv":
            if not self.header_written:
                names = [f"{c}+{k}" for k in self.steps for cols in self.columns for c in cols]
                lines.append(",".join(["time", *names]))
                self.header_written = True
            for end, forecast in zip(ends, values, strict=True):
                cells = ",".join(f"{v:.9g}" for v in forecast.reshape(-1).tolist())
                lines.append(f"{_csv_cell(end)},{cells}")
        else:
            for i, (end, forecast) in enumerate(zip(ends, values, strict=True)):
                record: dict = {"time": end}
                if stamps is not None:
                    index = self.forecaster.horizon_index(stamps[i])
                    if index is not None:
                        record["forecast_times"] = [_iso(t) for t in index]
                record["forecast"] = {
                    c: forecast[:, j, m].tolist()
                    for j, cols in enumerate(self.columns)
                    for m, c in enumerate(cols)
                }
                lines.append(json.dumps(record))
        self.sink.write("\n".join(lines) + "\n")
        self.sink.flush()


def _csv_cell(text: str) -> str:
    return f'"{text}"' if any(ch in text for ch in ',"\n') else text


def _iso(value: np.generic) -> str | int:
    if isinstance(value, np.datetime64):
        import pandas as pd

        return str(pd.Timestamp(value))
    return int(value)
