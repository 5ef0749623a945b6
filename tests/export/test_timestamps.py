"""The runtime's one timestamp reader (timesclip_export.runtime.timestamps): what it refuses
(with the first bad row and a reason), what it accepts (every form the same int64), its exact
bounds, range-index steps, and the same rules through RollingForecaster, StreamPool and the
CSV stream: a refused row changes no state and refuses only its own stream."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from timesclip_export.errors import TimestampError
from timesclip_export.runtime.csv_stream import stream_forecasts
from timesclip_export.runtime.forecaster import RollingForecaster
from timesclip_export.runtime.timestamps import read_timestamps
from timesclip_export.service.stream_pool import StreamPool

from tests.conftest import ETTH1_COLUMNS, TINY_ICL, TINY_OCL

ICL, OCL = TINY_ICL, TINY_OCL
NS_MAX = 2**63 - 1  # 2262-04-11T23:47:16.854775807
FIRST, LAST = "1677-09-21T00:12:43.145224193", "2262-04-11T23:47:16.854775807"
OFFSET_ADVICE = "without an offset (for pandas: .tz_localize(None))"
RANGE_TIME = {"index": "range", "freq": None, "step_ns": None, "step": 1}


def _ns(*args: int) -> int:
    """ns since the epoch of ``datetime(*args)``, by integer arithmetic (not numpy's parser)."""
    return (dt.datetime(*args) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1) * 1000


def _refused(values, index: str | None = "datetime") -> TimestampError:
    with pytest.raises(TimestampError) as refused:
        read_timestamps(values, index)
    return refused.value


# ------------------------------------------------------------------------ datetime: refusals
GOOD = "2017-10-20T00:00:00"
REFUSED = [  # (timestamps, reason, row)
    (["NaT"], "timestamps", 0),
    ([GOOD, "NaT"], "timestamps", 1),
    ([""], "timestamps", 0),
    ([GOOD, GOOD, " "], "timestamps", 2),
    (["now"], "timestamps", 0),
    (["today"], "timestamps", 0),
    ("now", "timestamps", 0),
    ([GOOD, None], "timestamps", 1),
    ([float("nan")], "timestamps", 0),
    ([GOOD, pd.NaT], "timestamps", 1),
    ([np.datetime64("NaT")], "timestamps", 0),
    (np.array([GOOD, "NaT"], dtype="datetime64[s]"), "timestamps", 1),
    (pd.DatetimeIndex([GOOD, None]), "timestamps", 1),
    (pd.Series([GOOD, None]), "timestamps", 1),
    (["2017-02-30"], "timestamps", 0),
    ([GOOD, "2017-10-20T25:00"], "timestamps", 1),
    (["2016-12-31T23:59:60"], "timestamps", 0),
    (["20171020"], "timestamps", 0),
    (["2017-10-20T00"], "timestamps", 0),
    (["2017-10-20T00:00:00."], "timestamps", 0),
    (["2017-10-20T00:00:00.1234567891"], "timestamps", 0),
    (["2017-10-20t00:00:00"], "timestamps", 0),
    ([" 2017-10-20"], "timestamps", 0),
    (["10/20/2017"], "timestamps", 0),
    (["٢٠١٧-١٠-٢٠"], "timestamps", 0),  # Arabic-Indic digits
    ([GOOD, 1508457600], "timestamps", 1),
    ([1.5e18], "timestamps", 0),
    ([True], "timestamps", 0),
    (np.array([1508457600000000000]), "timestamps", 0),
    (np.array([True]), "timestamps", 0),
    ([b"2017-10-20"], "timestamps", 0),
    ([GOOD, "2300-01-01T00:00:00"], "timestamps", 1),
    (["1600-01-01"], "timestamps", 0),
    (["9999-12-31T23:59:59.999999999"], "timestamps", 0),  # numpy's own parse would wrap
    (np.array(["2300-01-01"], dtype="datetime64[D]"), "timestamps", 0),
    (np.array([10**9], dtype="datetime64[Y]"), "timestamps", 0),
    ([np.datetime64("2300-01-01T00:00:00")], "timestamps", 0),
    ([dt.datetime(2300, 1, 1)], "timestamps", 0),
    (np.array([[GOOD]]), "timestamps", None),
    (["2017-10-20T00:00:00+05:00"], "timezone", 0),
    ([GOOD, "2017-10-20T01:00:00Z"], "timezone", 1),
    (["2017-10-20T00:00:00-0300"], "timezone", 0),
    (["2017-10-20 00:00+05"], "timezone", 0),
    (pd.date_range(GOOD, periods=3, freq="h", tz="Asia/Kolkata"), "timezone", 0),
    (pd.Series(pd.date_range(GOOD, periods=3, freq="h", tz="UTC")), "timezone", 0),
    ([GOOD, pd.Timestamp(GOOD, tz="Europe/Paris")], "timezone", 1),
    (pd.Timestamp(GOOD, tz="UTC"), "timezone", 0),
    ([dt.datetime(2017, 10, 20, tzinfo=dt.timezone(dt.timedelta(hours=5)))], "timezone", 0),
]


@pytest.mark.parametrize(("values", "reason", "row"), REFUSED, ids=lambda v: repr(v)[:40])
def test_refusals_name_their_reason_and_first_bad_row(values, reason: str, row: int) -> None:
    refused = _refused(values)
    assert (refused.reason, refused.row) == (reason, row)
    if row is not None:
        assert f"at row {row} " in str(refused)
    if reason == "timezone":
        assert OFFSET_ADVICE in str(refused)


def test_a_refusal_among_many_strings_is_found_by_row() -> None:
    """The fast path (all strings well formed, parsed at once) and the slow one (a bad one)
    name the same row, also far into a long list."""
    times = np.datetime64("2017-10-20T00:00") + np.arange(1000) * np.timedelta64(1, "h")
    texts = np.datetime_as_string(times, unit="s").tolist()
    assert (read_timestamps(texts, "datetime") == times.astype("datetime64[ns]").view("i8")).all()
    for bad, reason in [("2017-02-30T00:00:00", "timestamps"), ("NaT", "timestamps")]:
        for row in (0, 517, 999):
            broken = [*texts[:row], bad, *texts[row + 1 :]]
            refused = _refused(broken)
            assert (refused.reason, refused.row) == (reason, row)
            assert refused.row == _refused(np.array(broken)).row


def test_messages_quote_the_value_short_and_say_the_range() -> None:
    long = "x" * 100
    message = str(_refused([GOOD, long]))
    assert f"timestamp '{'x' * 37}...' at row 1 is not an ISO 8601 time" in message
    assert long not in message
    message = str(_refused(["2300-01-01T00:00:00"]))
    assert "'2300-01-01T00:00:00'" in message and f"{FIRST} to {LAST}" in message
    assert "'now'" in str(_refused(["now"]))
    assert "Day out of range" in str(_refused(["2017-02-30"]))
    assert "has a time zone offset" in str(_refused(["2017-10-20T00:00:00+05:00"]))
    assert "time zone Asia/Kolkata" in str(
        _refused(pd.date_range(GOOD, periods=1, tz="Asia/Kolkata"))
    )


# ------------------------------------------------------------------------ datetime: accepted
def test_every_accepted_form_gives_the_same_nanoseconds() -> None:
    expected = _ns(2017, 10, 20, 1, 30)
    forms = [
        "2017-10-20T01:30",
        "2017-10-20 01:30",
        "2017-10-20T01:30:00",
        "2017-10-20 01:30:00",
        "2017-10-20T01:30:00.0",
        "2017-10-20T01:30:00.000000000",
        ["2017-10-20T01:30:00"],
        ("2017-10-20T01:30:00",),
        np.array(["2017-10-20T01:30:00"]),
        np.array(["2017-10-20T01:30:00"], dtype=object),
        np.datetime64("2017-10-20T01:30", "m"),
        *(np.array(["2017-10-20T01:30"], f"datetime64[{u}]") for u in ("m", "s", "ms", "us", "ns")),
        np.array(["2017-10-20T01:30"], "datetime64[30m]"),
        pd.Timestamp("2017-10-20 01:30"),
        [pd.Timestamp("2017-10-20 01:30").as_unit("s")],
        pd.DatetimeIndex(["2017-10-20 01:30"]).as_unit("s"),
        pd.Series(pd.DatetimeIndex(["2017-10-20 01:30"]), index=[7]),
        pd.Series(["2017-10-20 01:30:00"], index=[7]),
        pd.Index(["2017-10-20T01:30:00"]),
        dt.datetime(2017, 10, 20, 1, 30),
        [dt.datetime(2017, 10, 20, 1, 30)],
    ]
    for form in forms:
        times = read_timestamps(form, "datetime")
        assert times.dtype == np.int64 and times.tolist() == [expected], form
    assert read_timestamps(["2017-10-20"], None).tolist() == [_ns(2017, 10, 20)]
    assert read_timestamps([dt.date(2017, 10, 20)], None).tolist() == [_ns(2017, 10, 20)]
    assert read_timestamps(np.array(["2017"], "datetime64[Y]"), None).tolist() == [_ns(2017, 1, 1)]
    mixed = ["2017-10-20", np.datetime64("2017-10-20T01"), pd.Timestamp("2017-10-20 02:00")]
    assert read_timestamps(mixed, None).tolist() == [_ns(2017, 10, 20, h) for h in range(3)]
    assert read_timestamps([], "datetime").tolist() == []


@pytest.mark.parametrize("digits", range(1, 10))
def test_fraction_digits_are_read_exactly(digits: int) -> None:
    fraction = "123456789"[:digits]
    text = f"2017-10-20T01:30:00.{fraction}"
    expected = _ns(2017, 10, 20, 1, 30) + int(fraction.ljust(9, "0"))
    # Alone, after a coarser one (numpy then parses both in the finer unit) and through pandas.
    assert read_timestamps([text], "datetime").tolist() == [expected]
    assert read_timestamps(["2017-10-20", text], "datetime").tolist()[1] == expected
    assert read_timestamps(pd.DatetimeIndex([text]), "datetime").tolist() == [expected]


def test_the_int64_nanosecond_bounds_are_exact() -> None:
    assert read_timestamps([FIRST, LAST], "datetime").tolist() == [-NS_MAX, NS_MAX]
    assert read_timestamps(np.array([FIRST, LAST], "datetime64[ns]"), None).tolist() == [
        -NS_MAX,
        NS_MAX,
    ]
    for beyond in ("1677-09-21T00:12:43.145224192", "2262-04-11T23:47:16.854775808"):
        assert _refused([GOOD, beyond]).row == 1  # numpy's parse wraps these silently
    # Checked in the array's own unit before converting: whole seconds and microseconds.
    seconds = np.array(["1677-09-21T00:12:44", "2262-04-11T23:47:16"], "datetime64[s]")
    expected = [_ns(1677, 9, 21, 0, 12, 44), _ns(2262, 4, 11, 23, 47, 16)]
    assert read_timestamps(seconds, None).tolist() == expected
    assert _refused(np.array(["1677-09-21T00:12:43"], "datetime64[s]")).row == 0
    assert _refused(np.array(["2262-04-11T23:47:17"], "datetime64[s]")).row == 0
    micro = np.array([LAST[:-3]], "datetime64[us]")
    assert read_timestamps(micro, None).tolist() == [NS_MAX - 807]
    assert _refused(micro + np.timedelta64(1, "us")).row == 0
    assert _refused(["2262-04-12"]).reason == "timestamps"


# ------------------------------------------------------------------------ range bundles
def test_range_steps_are_integers_within_2_to_the_53() -> None:
    limit = 2**53 - 1
    for steps in (
        [0, 1, 2],
        (0, 1, 2),
        range(3),
        np.arange(3, dtype=np.int32),
        np.arange(3, dtype=np.uint64),
        pd.RangeIndex(3),
        pd.Index([0, 1, 2]),
        [np.int64(0), 1, np.uint8(2)],
        np.array([0, 1, 2], dtype=object),
    ):
        times = read_timestamps(steps, "range")
        assert times.dtype == np.int64 and times.tolist() == [0, 1, 2], steps
    assert read_timestamps(7, "range").tolist() == [7]
    assert read_timestamps([-limit, limit], "range").tolist() == [-limit, limit]
    assert read_timestamps(range(limit - 2, limit + 1), "range").tolist()[-1] == limit


BEYOND, NOT_INTEGER = "±(2**53 - 1) = ±9007199254740991", "not an integer step"
RANGE_REFUSED = [  # (steps, first bad row, what the message says)
    (2**70, 0, BEYOND),
    ([0, 2**70], 1, BEYOND),
    ([0, 2**53], 1, BEYOND),
    ([-(2**53)], 0, BEYOND),
    (np.array([0, 0, 2**60]), 2, BEYOND),
    (np.array([2**63], dtype=np.uint64), 0, BEYOND),
    (range(2**53 - 3, 2**53 + 10), 3, BEYOND),
    (range(0, -(2**60), -(2**50)), 8, BEYOND),
    (1.5, 0, NOT_INTEGER),
    ([0, 1.5], 1, NOT_INTEGER),
    ([2.0], 0, NOT_INTEGER),
    (np.array([0.0, 1.0]), 0, NOT_INTEGER),
    ([0, True], 1, NOT_INTEGER),
    (np.array([True]), 0, NOT_INTEGER),
    (["5"], 0, NOT_INTEGER),
    ([0, None], 1, NOT_INTEGER),
    ([np.datetime64("2017-10-20")], 0, NOT_INTEGER),
    (pd.Index([0.0, 1.0]), 0, NOT_INTEGER),
]


@pytest.mark.parametrize(("steps", "row", "says"), RANGE_REFUSED, ids=lambda v: repr(v)[:40])
def test_range_refusals(steps, row: int, says: str) -> None:
    refused = _refused(steps, "range")
    assert (refused.reason, refused.row) == ("timestamps", row)
    assert says in str(refused)


# ------------------------------------------------------------------------ through the runtime
@pytest.fixture(scope="module")
def forecaster(tiny_bundle: Path) -> RollingForecaster:
    return RollingForecaster(tiny_bundle, onnx_threads=1)


@pytest.fixture(scope="module")
def rows(etth1: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Raw ETTh1 values ``[rows, 7]`` (float32) and their hourly times as ISO strings."""
    times = etth1["date"].to_numpy().astype("datetime64[s]")
    return etth1[ETTH1_COLUMNS].to_numpy(np.float32), np.datetime_as_string(times).tolist()


BAD_ROWS = [  # a second new row's timestamp, and the reason it is refused for
    ("NaT", "timestamps"),
    ("", "timestamps"),
    ("now", "timestamps"),
    ("2300-01-01T00:00:00", "timestamps"),
    ("2017-02-30T00:00:00", "timestamps"),
    ("2016-07-05T01:00:00+05:00", "timezone"),
    (1467680400, "timestamps"),
]


def test_update_refusing_a_bad_timestamp_keeps_its_state(forecaster, rows) -> None:
    values, times = rows
    forecaster.reset()
    forecaster.update(values[:ICL], timestamps=times[:ICL])
    for stamp, reason in BAD_ROWS:
        with pytest.raises(TimestampError) as refused:
            forecaster.update(values[ICL : ICL + 2], timestamps=[times[ICL], stamp])
        assert (refused.value.reason, refused.value.row) == (reason, 1)
        assert forecaster.rows_seen == ICL
    # A tz-aware index (a DataFrame's, or given) is refused, not converted to UTC.
    frame = pd.DataFrame(values[ICL : ICL + 1], columns=ETTH1_COLUMNS)
    frame.index = pd.DatetimeIndex(times[ICL : ICL + 1]).tz_localize("Europe/Paris")
    with pytest.raises(TimestampError, match=r"tz_localize\(None\)") as refused:
        forecaster.update(frame)
    assert refused.value.reason == "timezone"
    # The next good row follows the last accepted one and forecasts its window.
    out = forecaster.update(values[ICL : ICL + 1], timestamps=times[ICL : ICL + 1])
    np.testing.assert_allclose(out[0], forecaster.forecast(values[1 : ICL + 1]), atol=1e-6)
    assert forecaster.rows_seen == ICL + 1
    # Its times, given as numpy datetime64 instead of strings, read the same.
    stamps = np.array(times[ICL + 1 : ICL + 3], "datetime64[us]")
    assert len(forecaster.update(values[ICL + 1 : ICL + 3], timestamps=stamps)) == 2


def test_horizon_index_reads_stored_and_given_times(forecaster) -> None:
    expected = np.datetime64("2017-10-20T01:00") + np.arange(OCL) * np.timedelta64(1, "h")
    for last in (_ns(2017, 10, 20), np.int64(_ns(2017, 10, 20)), "2017-10-20T00:00:00"):
        assert (forecaster.horizon_index(last) == expected).all()
    with pytest.raises(TimestampError):
        forecaster.horizon_index("now")


def test_a_frequency_without_a_fixed_step_cannot_overflow_pandas(tiny_bundle: Path) -> None:
    """Without a fixed step the run is checked against ``pd.date_range``: stepping past 2262
    is a TimestampError, not pandas' bare error."""
    unfixed = RollingForecaster(tiny_bundle, verify=False, onnx_threads=1)
    unfixed.time = {**unfixed.time, "step_ns": None}
    minutes = np.datetime64("2262-04-11T23:00") + np.arange(47) * np.timedelta64(1, "m")
    with pytest.raises(TimestampError, match="cannot step 47 times at frequency h"):
        unfixed.update(np.zeros((47, 7), np.float32), timestamps=minutes)
    assert unfixed.rows_seen == 0


def test_stream_pool_refuses_only_the_stream_with_a_bad_timestamp(forecaster, rows) -> None:
    values, times = rows
    pool = StreamPool(forecaster)
    first = {"values": values[: ICL - 1], "timestamps": times[: ICL - 1]}
    pool.update({"good": first, "bad": first})
    good_row = {"values": values[ICL - 1 : ICL], "timestamps": times[ICL - 1 : ICL]}
    for n, (stamp, reason) in enumerate(BAD_ROWS):
        bad = {"values": values[ICL - 1 : ICL + 1], "timestamps": [times[ICL - 1], stamp]}
        good = {"values": values[ICL - 1 + n : ICL + n], "timestamps": times[ICL - 1 + n : ICL + n]}
        update = pool.update({"bad": bad, "good": good})
        assert [(r.stream, r.reason, r.row) for r in update.rejected] == [("bad", reason, 1)]
        assert [(f.stream, f.time) for f in update.forecasts] == [("good", times[ICL - 1 + n])]
        assert pool.info("bad")["rows"] == ICL - 1
    update = pool.update({"bad": good_row})
    assert not update.rejected
    assert [(f.stream, f.time) for f in update.forecasts] == [("bad", times[ICL - 1])]
    np.testing.assert_allclose(
        update.forecasts[0].values, forecaster.forecast(values[:ICL]), atol=1e-6
    )


def test_stream_pool_with_a_range_index(tiny_bundle: Path, rows) -> None:
    """A huge, fractional or boolean step refuses its stream (no OverflowError for the whole
    call, no truncation); integer steps forecast."""
    values, _ = rows
    ranged = RollingForecaster(tiny_bundle, verify=False, onnx_threads=1)
    ranged.time = dict(RANGE_TIME)
    pool = StreamPool(ranged)
    update = pool.update(
        {
            "huge": {"values": values[:1], "timestamps": [2**70]},
            "half": {"values": values[:2], "timestamps": [0, 1.5]},
            "bool": {"values": values[:1], "timestamps": [True]},
            "ok": {"values": values[:ICL], "timestamps": list(range(ICL))},
        }
    )
    assert [(r.stream, r.reason, r.row) for r in update.rejected] == [
        ("huge", "timestamps", 0),
        ("half", "timestamps", 1),
        ("bool", "timestamps", 0),
    ]
    assert [(f.stream, f.time) for f in update.forecasts] == [("ok", ICL - 1)]


# ------------------------------------------------------------------------ the CSV stream
def _csv(rows, times: list[str]) -> io.StringIO:
    values, _ = rows
    lines = ["date," + ",".join(ETTH1_COLUMNS)]
    lines += [f"{t}," + ",".join(f"{v:.4f}" for v in values[i]) for i, t in enumerate(times)]
    return io.StringIO("\n".join(lines) + "\n")


def test_csv_stream_applies_the_same_rules(forecaster, rows) -> None:
    _, times = rows
    spaced = [t.replace("T", " ") for t in times[: ICL + 1]]
    forecaster.reset()
    assert stream_forecasts(forecaster, _csv(rows, spaced), io.StringIO()) == 2
    for stamp, reason in BAD_ROWS[:-1]:
        broken = [*spaced[:50], str(stamp), *spaced[51:]]
        forecaster.reset()
        with pytest.raises(TimestampError) as refused:
            stream_forecasts(forecaster, _csv(rows, broken), io.StringIO(), label="data.csv")
        assert (refused.value.reason, refused.value.row) == (reason, 50)
        assert str(refused.value).startswith("data.csv, line 52: ")  # the header is line 1
        assert forecaster.rows_seen == 0


def test_csv_stream_with_a_range_index(tiny_bundle: Path, rows) -> None:
    ranged = RollingForecaster(tiny_bundle, verify=False, onnx_threads=1)
    ranged.time = dict(RANGE_TIME)
    steps = [str(i) for i in range(ICL + 1)]
    assert stream_forecasts(ranged, _csv(rows, steps), io.StringIO()) == 2
    for bad in ("1.5", "1e3", "", "1_0", "2017-10-20"):
        ranged.reset()
        with pytest.raises(TimestampError) as refused:
            stream_forecasts(ranged, _csv(rows, [*steps[:3], bad, *steps[4:]]), io.StringIO())
        assert (refused.value.reason, refused.value.row) == ("timestamps", 3)
