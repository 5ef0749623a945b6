"""Bad input at every public entry point gets a clear ``ValueError`` (one line and exit 1 from
the command line), never a crash deep inside torch or a silent wrong forecast; the streaming
path survives any sequence of rows."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from darts import TimeSeries
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timesclip_export.errors import InputError
from timesclip_export.exporter.writer import export_bundle
from timesclip_export.runtime.csv_stream import stream_forecasts
from timesclip_export.runtime.forecaster import RollingForecaster

from tests.conftest import etth1_series, tiny_timesclip
from timesclip_cli.main import main
from timesclip_darts import TimesCLIPModel

ICL, OCL = 48, 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TimesCLIPModel, Path, Path]:
    folder = tmp_path_factory.mktemp("reliability")
    model = tiny_timesclip(ICL, OCL)
    model.fit(etth1_series(0, 400), max_samples_per_ts=64)
    model.save(str(folder / "model.pt"))
    export_bundle(folder / "model.pt", folder / "bundle")
    return model, folder / "model.pt", folder / "bundle"


@pytest.fixture(scope="module")
def forecaster(trained) -> RollingForecaster:
    return RollingForecaster(trained[2])


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    """Rows 400-499 of ETTh1: a time column, then the 7 variates in training order."""
    return etth1_series(400, 500).to_dataframe().reset_index()


# ---------------------------------------------------------------- the inputs, broken one way each
def _values(frame: pd.DataFrame) -> np.ndarray:
    return frame.iloc[:, 1:].to_numpy()


def _set(frame: pd.DataFrame, row: int, value: float) -> pd.DataFrame:
    broken = frame.copy()
    broken.iloc[row, 3] = value
    return broken


def _retime(frame: pd.DataFrame, times) -> pd.DataFrame:
    broken = frame.copy()
    broken["date"] = times
    return broken


BROKEN: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = {
    # problem: (how to break good rows, what any clear message about it must say)
    "wrong-variate-count": (lambda f: f.drop(columns=["OT"]), r"7|OT|components|column"),
    "nan": (lambda f: _set(f, 60, np.nan), r"(?i)nan|missing"),
    "inf": (lambda f: _set(f, 60, np.inf), r"(?i)inf|missing|finite"),
    "huge": (lambda f: _set(f, 60, 1e30), r"beyond|overflow|finite|large"),
    "too-short": (lambda f: f.iloc[:10], r"48|short|at least|needs"),
    "empty": (lambda f: f.iloc[:0], r"0 rows|48|short|empty|at least|needs|no "),
    "gap": (lambda f: f.drop(index=70), r"(?i)gap|missing"),
    "duplicate-time": (
        lambda f: _retime(f, f["date"].where(f.index != 71, f["date"][70])),
        r"(?i)duplicate",
    ),
    "out-of-order": (
        lambda f: _retime(f, f["date"].where(f.index != 71, f["date"][69])),
        r"(?i)order|increasing|duplicate",
    ),
    "wrong-frequency": (
        lambda f: _retime(f, pd.date_range("2020-01-01", periods=len(f), freq="D")),
        r"(?i)frequency|gap|step",
    ),
    "object-values": (
        lambda f: f.astype({"HUFL": object}).assign(HUFL="x"),
        r"(?i)float|numeric|number|dtype",
    ),
}


# --------------------------------------------------------------------------------- entry points
def _core(model, frame: pd.DataFrame, _: Path) -> None:
    window = _values(frame)[None, -ICL:]
    numeric = window.dtype != object
    model.model.core(torch.as_tensor(window, dtype=torch.float32) if numeric else window)


def _darts_predict(model, frame: pd.DataFrame, _: Path) -> None:
    series = TimeSeries.from_dataframe(frame, time_col="date")
    model.predict(OCL, series=series)


def _cli_predict(model_path: Path, frame: pd.DataFrame, tmp: Path) -> None:
    csv = tmp / "input.csv"
    frame.to_csv(csv, index=False)
    err = io.StringIO()
    from contextlib import redirect_stderr

    with redirect_stderr(err):
        code = main(
            [
                "predict",
                str(model_path),
                "--csv",
                str(csv),
                "-n",
                "3",
                "--output",
                str(tmp / "out.csv"),
            ]
        )
    if code != 0:
        assert "Traceback" not in err.getvalue() and err.getvalue().count("\n") == 1
        raise ValueError(err.getvalue())


def _runtime_forecast(f: RollingForecaster, frame: pd.DataFrame, _: Path) -> None:
    f.forecast(_values(frame), timestamps=frame["date"].to_numpy())


def _runtime_rolling(f: RollingForecaster, frame: pd.DataFrame, _: Path) -> None:
    f.rolling(_values(frame), stride=5, timestamps=frame["date"].to_numpy())


def _runtime_update(f: RollingForecaster, frame: pd.DataFrame, _: Path) -> None:
    f.reset()
    try:
        out = f.update(_values(frame), timestamps=frame["date"].to_numpy())
    finally:
        f.reset()
    if len(out) == 0:  # too few rows yet is not an error for a stream: it waits for more
        raise ValueError("no full window yet: the stream needs at least 48 rows")


def _stream(f: RollingForecaster, frame: pd.DataFrame, _: Path) -> None:
    f.reset()
    sink = io.StringIO()
    try:
        written = stream_forecasts(f, io.StringIO(frame.to_csv(index=False)), sink)
    finally:
        f.reset()
    if written == 0:
        raise ValueError("no full window yet: the stream needs at least 48 rows")


ENTRY_POINTS = {
    "core": _core,
    "darts-predict": _darts_predict,
    "cli-predict": _cli_predict,
    "runtime-forecast": _runtime_forecast,
    "runtime-rolling": _runtime_rolling,
    "runtime-update": _runtime_update,
    "stream": _stream,
}
# Problems an entry point never sees: the core takes bare windows (no timestamps), and Darts'
# own TimeSeries refuses an empty, duplicated or unordered index before predict is called.
NOT_APPLICABLE = {
    ("core", p) for p in ("gap", "duplicate-time", "out-of-order", "wrong-frequency")
} | {("darts-predict", p) for p in ("empty", "duplicate-time", "out-of-order")}


@pytest.mark.parametrize("problem", list(BROKEN))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_input_is_named_at_every_entry_point(
    entry: str, problem: str, trained, forecaster, good: pd.DataFrame, tmp_path: Path
) -> None:
    if (entry, problem) in NOT_APPLICABLE:
        pytest.skip("this entry point never receives such input")
    model, model_path, _ = trained
    target = {"core": model, "darts-predict": model, "cli-predict": model_path}.get(
        entry, forecaster
    )
    break_rows, message = BROKEN[problem]
    ENTRY_POINTS[entry](target, good, tmp_path)  # the good rows pass
    with pytest.raises(ValueError, match=message):
        ENTRY_POINTS[entry](target, break_rows(good), tmp_path)


# ------------------------------------------------------------------------ streaming properties
CHUNK = st.tuples(
    st.integers(1, 40), st.sampled_from(["ok", "ok", "ok", "nan", "gap", "dup", "int"])
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(CHUNK, min_size=1, max_size=8))
def test_any_row_sequence_yields_forecasts_or_a_clear_error(forecaster, good, chunks) -> None:
    """Each chunk of rows either passes (its forecasts equal the batch path's) or is refused
    with an InputError that leaves the stream as it was, so the next good chunk goes on."""
    values = _values(good).astype(np.float32)
    times = good["date"].to_numpy()
    forecaster.reset()
    cursor, accepted, outputs = 0, [], []
    for size, kind in chunks:
        rows, stamps = values[cursor : cursor + size].copy(), times[cursor : cursor + size].copy()
        if len(rows) == 0:
            break
        if kind == "nan":
            rows[-1, 0] = np.nan
        elif kind == "gap" and cursor > 0:  # before the first row nothing can be skipped
            stamps = stamps + np.timedelta64(1, "h")
        elif kind == "dup" and cursor > 0:
            stamps[0] = times[cursor - 1]
        elif kind == "int":
            rows = rows.astype(np.int64)
        try:
            out = forecaster.update(rows, timestamps=stamps)
        except InputError as err:
            assert kind != "ok", err
            assert str(err)
            continue
        assert kind == "ok" or (kind in ("gap", "dup") and cursor == 0)
        accepted.append(rows)
        outputs.append(out)
        cursor += len(rows)
    seen = np.concatenate(accepted) if accepted else values[:0]
    assert forecaster.rows_seen == len(seen)
    streamed = np.concatenate(outputs) if outputs else np.empty((0, OCL, 7))
    if len(seen) < ICL:
        assert len(streamed) == 0
        return
    batch = forecaster.rolling(seen)
    assert streamed.shape == batch.shape == (len(seen) - ICL + 1, OCL, 7)
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=1e-4)


@pytest.mark.integration
def test_soak_smoke_keeps_memory_flat_and_matches_the_batch_path(trained) -> None:
    """The soak benchmark cut down for CI: a few hundred single-row updates."""
    from benchmarks import bench_soak

    result = bench_soak.main(
        ["--bundle", str(trained[2]), "--rows", "600", "--checks", "20", "--smoke"]
    )
    assert result["forecasts"] == 600 - ICL + 1
    assert result["max_abs_diff_vs_batch"] < 1e-5
    assert result["rss_growth_mib"] < 64
