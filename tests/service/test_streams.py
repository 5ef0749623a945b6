"""StreamPool: many keyed streams through one forecaster. Its forecasts equal one
RollingForecaster per stream exactly, bad rows refuse only their stream, windows of all streams
share device calls, and snapshots survive a restart (and a kill mid-write)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from timesclip_export.errors import BundleError, InputError, SnapshotError
from timesclip_export.runtime.forecaster import RollingForecaster
from timesclip_export.service.stream_pool import (
    PoolUpdate,
    StreamPool,
    manifest_digest,
    open_pool,
)

from tests.conftest import ETTH1_COLUMNS, ROOT, TINY_ICL, TINY_OCL

ICL, OCL = TINY_ICL, TINY_OCL
STEP = np.timedelta64(1, "h")


@pytest.fixture(scope="module")
def forecaster(tiny_bundle: Path) -> RollingForecaster:
    return RollingForecaster(tiny_bundle, onnx_threads=1)


@pytest.fixture(scope="module")
def references(tiny_bundle: Path) -> list[RollingForecaster]:
    """One forecaster per stream of the property test (state is per forecaster)."""
    return [RollingForecaster(tiny_bundle, verify=False, onnx_threads=1) for _ in range(3)]


@pytest.fixture(scope="module")
def rows(etth1: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Raw ETTh1 values ``[rows, 7]`` (float32) and their hourly timestamps."""
    return etth1[ETTH1_COLUMNS].to_numpy(np.float32), etth1["date"].to_numpy()


def _forecasts_of(update: PoolUpdate, stream: str) -> np.ndarray:
    values = [f.values for f in update.forecasts if f.stream == stream]
    return np.stack(values) if values else np.empty((0, OCL, 7), np.float32)


def _iso(times: np.ndarray) -> list[str]:
    return np.datetime_as_string(np.asarray(times, "datetime64[ns]"), unit="s").tolist()


# ------------------------------------------------------------------------ equal forecasts
def test_pool_forecasts_equal_one_rolling_forecaster_per_stream(
    forecaster, references, rows
) -> None:
    """Four ETTh1 streams from different offsets, fed in uneven interleaved chunks (one row at
    a time at the end, the serving case); batches of 7 mix streams. Each stream's forecasts are
    bit for bit those of its own RollingForecaster, with the right timestamps."""
    values, times = rows
    starts = {"t1": 0, "t2": 1000, "t3": 5003, "t4": 9000}
    chunks = [
        {"t1": 90, "t2": 100, "t3": 30},
        {"t1": 10, "t3": 80, "t4": 96},
        {"t2": 1, "t4": 3},
        *({stream: 1 for stream in starts} for _ in range(3)),
    ]
    pool = StreamPool(forecaster, batch_size=7)
    seen = dict.fromkeys(starts, 0)
    got: dict[str, list] = {stream: [] for stream in starts}
    for call in chunks:
        request = {}
        for stream, size in call.items():
            index = slice(starts[stream] + seen[stream], starts[stream] + seen[stream] + size)
            request[stream] = {"values": values[index], "timestamps": times[index]}
            seen[stream] += size
        update = pool.update(request, parameters=call is chunks[-1])
        assert not update.rejected
        assert [f.stream for f in update.forecasts] == sorted(
            (f.stream for f in update.forecasts), key=list(request).index
        )  # streams in input order
        for forecast in update.forecasts:
            got[forecast.stream].append(forecast)
    reference = references[0]
    for stream, start in starts.items():
        reference.reset()
        index = slice(start, start + seen[stream])
        expected = reference.update(values[index], timestamps=times[index], parameters=True)
        forecasts = got[stream]
        assert len(forecasts) == seen[stream] - ICL + 1
        assert np.array_equal(np.stack([f.values for f in forecasts]), expected[..., 0])
        ends = times[index][ICL - 1 :]
        assert [f.time for f in forecasts] == _iso(ends)
        assert forecasts[-1].horizon == _iso(reference.horizon_index(ends[-1]))
        assert forecasts[-1].parameters is not None  # the last call asked for them
        assert np.array_equal(forecasts[-1].parameters, expected[-1])
        assert forecasts[0].parameters is None
    stats = pool.stats()
    assert stats["streams"] == 4 and stats["rows"] == sum(seen.values())
    for stream, start in starts.items():  # each stream's own counters and last timestamp
        last = times[start + seen[stream] - 1]
        assert pool.info(stream) == {
            "rows": seen[stream],
            "position": seen[stream],
            "forecasts": len(got[stream]),
            "last_time": _iso(np.asarray([last]))[0],
        }
    assert pool.info("never seen") is None
    assert stats["forecasts"] == sum(len(f) for f in got.values())


def test_columnar_and_json_like_rows_equal_arrays(forecaster, rows) -> None:
    """update_columnar, lists of numbers (parsed JSON) and {column: list} give the forecasts
    of arrays; a rejection names the row of the columnar input."""
    values, times = rows
    ids = ["a", "b"] * ICL + ["a", "b", "a"]  # interleaved rows of two streams
    a_rows, b_rows = values[: ICL + 2], values[3000 : 3000 + ICL + 1]
    stacked = np.empty((len(ids), 7), np.float32)
    stacked[0::2], stacked[1::2] = a_rows, b_rows
    columnar = StreamPool(forecaster).update_columnar(ids, stacked)
    mapping = StreamPool(forecaster).update(
        {
            "a": {"values": a_rows.astype(np.float64).tolist()},
            "b": {"values": {c: b_rows[:, i].tolist() for i, c in enumerate(ETTH1_COLUMNS)}},
        }
    )
    for stream in ("a", "b"):
        assert np.array_equal(_forecasts_of(columnar, stream), _forecasts_of(mapping, stream))
    assert len(_forecasts_of(columnar, "a")) == 3 and len(_forecasts_of(columnar, "b")) == 2
    stamps = [times[0], times[0], times[1], times[1], times[2] + 5 * STEP]  # c: a gap at row 4
    update = StreamPool(forecaster).update_columnar(
        ["c", "d", "c", "d", "c"], values[:5], timestamps=stamps
    )
    assert [(r.stream, r.reason, r.row) for r in update.rejected] == [("c", "gap", 4)]


# ------------------------------------------------------------------------ bad rows
def _break(kind: str, values: np.ndarray, stamps: np.ndarray, last: np.datetime64) -> dict:
    """New rows broken one way; what RollingForecaster.update would refuse."""
    values, stamps = values.copy(), stamps.copy()
    if kind == "nan":
        values[-1, 2] = np.nan
    elif kind == "too_large":
        values[0, 1] = 1e30
    elif kind == "gap":
        stamps = stamps + STEP
    elif kind == "duplicate":
        stamps[0] = last
    elif kind == "out_of_order":
        stamps[0] = last - STEP
    elif kind == "dtype":
        return {"values": values.astype(np.int64), "timestamps": stamps}
    elif kind == "columns":
        return {"values": pd.DataFrame(values, columns=ETTH1_COLUMNS[::-1]), "timestamps": stamps}
    elif kind == "shape":
        return {"values": values[None], "timestamps": stamps}
    elif kind == "timestamps":  # a timed stream sent rows without timestamps
        return {"values": values}
    return {"values": values, "timestamps": stamps}


BAD_KINDS = [
    "nan",
    "too_large",
    "gap",
    "duplicate",
    "out_of_order",
    "dtype",
    "columns",
    "shape",
    "timestamps",
]


def test_bad_rows_refuse_only_their_stream_and_keep_its_state(forecaster, references, rows) -> None:
    """In one call per kind of bad rows: the bad stream is refused with its reason, its name and
    the problem, and keeps its state (its next good row forecasts as if nothing came); the good
    stream in the same call forecasts as usual."""
    values, times = rows
    pool = StreamPool(forecaster)
    bad_start = 2000
    pool.update(
        {
            "good": {"values": values[: ICL - 1], "timestamps": times[: ICL - 1]},
            "bad": {
                "values": values[bad_start : bad_start + ICL - 1],
                "timestamps": times[bad_start : bad_start + ICL - 1],
            },
        }
    )
    g = ICL - 1
    b = bad_start + ICL - 1
    good_forecasts = []
    alone = references[0]
    for kind in BAD_KINDS:
        bad_rows = _break(kind, values[b : b + 2], times[b : b + 2], times[b - 1])
        update = pool.update(
            {"good": {"values": values[g : g + 1], "timestamps": times[g : g + 1]}, "bad": bad_rows}
        )
        g += 1
        assert [f.stream for f in update.forecasts] == ["good"]
        good_forecasts.append(update.forecasts[0].values)
        (rejection,) = update.rejected
        assert (rejection.stream, rejection.reason) == ("bad", kind)
        assert rejection.message.startswith("stream 'bad': ")
        assert "\n" not in rejection.message
        alone.reset()
        alone.update(values[b - ICL + 1 : b], timestamps=times[b - ICL + 1 : b])
        with pytest.raises(InputError) as expected:  # the same refusal as one stream's
            alone.update(bad_rows["values"], timestamps=bad_rows.get("timestamps"))
        assert rejection.message == f"stream 'bad': {expected.value}"
        assert rejection.row == expected.value.row
    stats = pool.stats()
    assert stats["rejected"] == dict.fromkeys(BAD_KINDS, 1)
    assert stats["rows"] == 2 * (ICL - 1) + len(BAD_KINDS)  # no bad row was kept
    # The bad stream goes on from its last good row, as if the bad calls never happened.
    update = pool.update({"bad": {"values": values[b : b + 1], "timestamps": times[b : b + 1]}})
    reference = references[1]
    reference.reset()
    expected = reference.update(values[b - ICL + 1 : b + 1], timestamps=times[b - ICL + 1 : b + 1])
    assert np.array_equal(_forecasts_of(update, "bad"), expected)
    reference.reset()
    expected = reference.update(values[:g], timestamps=times[:g])
    assert np.array_equal(np.stack(good_forecasts), expected)


STREAMS = ["s0", "s1", "s2"]
CHUNK = st.tuples(st.integers(1, 4), st.sampled_from(["ok"] * 5 + BAD_KINDS))


@settings(max_examples=25, deadline=None)
@given(
    calls=st.lists(st.dictionaries(st.sampled_from(STREAMS), CHUNK, min_size=1), max_size=6),
    batch_size=st.integers(1, 9),
)
def test_any_interleaving_equals_each_stream_on_its_own(
    forecaster, references, rows, calls, batch_size
) -> None:
    """Any interleaving of good and bad chunks over three streams: each stream's forecasts and
    refusals are those of its own RollingForecaster fed the same chunks, whatever the others
    send and however the windows are batched."""
    values, times = rows
    pool = StreamPool(forecaster, batch_size=batch_size)
    starts = [0, 3001, 7002]
    for reference, start in zip(references, starts, strict=True):
        reference.reset()
        reference.update(values[start : start + ICL - 1], timestamps=times[start : start + ICL - 1])
    pool.update(
        {
            s: {"values": values[i : i + ICL - 1], "timestamps": times[i : i + ICL - 1]}
            for s, i in zip(STREAMS, starts, strict=True)
        }
    )
    cursor = [start + ICL - 1 for start in starts]
    for call in calls:
        request, expected = {}, {}
        for stream, (size, kind) in call.items():
            i = STREAMS.index(stream)
            index = slice(cursor[i], cursor[i] + size)
            entry = _break(kind, values[index], times[index], times[cursor[i] - 1])
            request[stream] = entry
            try:
                expected[stream] = references[i].update(
                    entry["values"], timestamps=entry.get("timestamps")
                )
                cursor[i] += size
            except InputError as err:
                expected[stream] = err
        update = pool.update(request)
        rejected = {r.stream: r for r in update.rejected}
        for stream, outcome in expected.items():
            if isinstance(outcome, InputError):
                assert rejected[stream].reason == outcome.reason
                assert rejected[stream].message == f"stream {stream!r}: {outcome}"
            else:
                assert stream not in rejected
                assert np.array_equal(_forecasts_of(update, stream), outcome)
    assert pool.stats()["rows"] == sum(r.rows_seen for r in references)


# ------------------------------------------------------------------------ batching, eviction
def test_windows_of_all_streams_share_device_calls(forecaster, rows, monkeypatch) -> None:
    """One _run_batch per batch_size windows across streams, none while windows fill up."""
    values, _ = rows
    pool = StreamPool(forecaster, batch_size=5)
    sizes: list[int] = []
    run_batch = forecaster._engine._run_batch

    def counting(windows, *vision_windows):
        sizes.append(windows.shape[0])
        return run_batch(windows, *vision_windows)

    monkeypatch.setattr(forecaster._engine, "_run_batch", counting)
    streams = [f"sensor-{i}" for i in range(12)]
    pool.update({s: values[i * 100 : i * 100 + ICL - 1] for i, s in enumerate(streams)})
    assert sizes == []  # no window is complete yet
    request = {s: values[i * 100 + ICL - 1 : i * 100 + ICL] for i, s in enumerate(streams)}
    request["sensor-0"] = values[ICL - 1 : ICL + 3]  # four windows from one stream
    update = pool.update(request)
    assert len(update.forecasts) == 15
    assert sizes == [5, 5, 5]
    sizes.clear()
    pool.update({s: values[i * 100 + ICL : i * 100 + ICL + 1] for i, s in enumerate(streams[:6])})
    assert sizes == [5, 1]


def test_max_streams_evicts_the_least_recently_updated(forecaster, rows) -> None:
    values, _ = rows
    pool = StreamPool(forecaster, max_streams=3)
    for stream in ("a", "b", "c"):
        pool.update({stream: values[:2]})
    pool.update({"a": values[2:3]})  # b is now the least recently updated
    update = pool.update({"d": values[:2], "c": values[2:3]})
    assert not update.rejected
    assert len(pool) == 3 and "b" not in pool and all(s in pool for s in "acd")
    assert pool.stats()["evictions"] == 1
    pool.update({"b": values[:1]})  # back as a new stream: evicts a (oldest now)
    assert "a" not in pool and pool.stats()["evictions"] == 2
    assert pool.info("a") is None and pool.info("b") == {
        "rows": 1,
        "position": 1,
        "forecasts": 0,
        "last_time": None,
    }
    assert pool.drop("b") and not pool.drop("b") and len(pool) == 2


# ------------------------------------------------------------------------ snapshots
def _mixed_pool(forecaster: RollingForecaster, values: np.ndarray, times: np.ndarray) -> StreamPool:
    """Streams in every state: timed and full, untimed and full, still filling."""
    pool = StreamPool(forecaster)
    pool.update(
        {
            "timed": {"values": values[: ICL + 3], "timestamps": times[: ICL + 3]},
            "untimed": values[500 : 500 + ICL - 1],
            "filling": {"values": values[900:910], "timestamps": times[900:910]},
            "bad": values[:2].astype(np.int64),
        }
    )
    return pool


def _next_rows(values: np.ndarray, times: np.ndarray) -> dict:
    return {
        "timed": {"values": values[ICL + 3 : ICL + 5], "timestamps": times[ICL + 3 : ICL + 5]},
        "untimed": values[500 + ICL - 1 : 500 + ICL + 1],
        "filling": {"values": values[910 : 900 + ICL], "timestamps": times[910 : 900 + ICL]},
    }


def test_restored_pool_continues_every_stream_at_once(
    forecaster, tiny_bundle: Path, rows, tmp_path: Path
) -> None:
    values, times = rows
    pool = _mixed_pool(forecaster, values, times)
    path = tmp_path / "pool.npz"
    pool.snapshot(path)
    with np.load(path, allow_pickle=False) as data:  # plain arrays only, no pickle
        header = json.loads(data["header"].tobytes())
        assert all(data[name].dtype != object for name in data.files)
    assert (header["format"], header["format_version"]) == ("timesclip-stream-pool", 2)
    assert [p.name for p in tmp_path.iterdir()] == ["pool.npz"]  # no temporary file left
    restored = StreamPool.restore(path, RollingForecaster(tiny_bundle, onnx_threads=1))
    assert restored.stats() | {"batch_size": 0} == pool.stats() | {"batch_size": 0}
    expected, got = (
        pool.update(_next_rows(values, times)),
        restored.update(_next_rows(values, times)),
    )
    assert [f.stream for f in got.forecasts] == ["timed"] * 2 + ["untimed"] * 2 + ["filling"]
    for stream in ("timed", "untimed", "filling"):
        assert np.array_equal(_forecasts_of(got, stream), _forecasts_of(expected, stream))
    assert [f.time for f in got.forecasts] == [f.time for f in expected.forecasts]
    late = {"timed": {"values": values[:1], "timestamps": times[ICL + 4 : ICL + 5]}}
    assert restored.update(late).rejected[0].reason == "duplicate"  # last timestamps came back
    small = StreamPool.restore(path, forecaster, max_streams=2)  # least recently updated go
    assert len(small) == 2 and "timed" not in small and small.stats()["evictions"] == 1


def test_restore_refuses_another_bundle_and_damaged_files(
    forecaster, tiny_bundle: Path, rows, tmp_path: Path
) -> None:
    values, times = rows
    path = tmp_path / "pool.npz"
    _mixed_pool(forecaster, values, times).snapshot(path)
    other = Path(shutil.copytree(tiny_bundle, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["time"] = {"index": "range", "freq": None, "step_ns": None, "step": 1}
    (other / "manifest.json").write_text(json.dumps(manifest))
    ranged = RollingForecaster(other, verify=False, onnx_threads=1)
    with pytest.raises(SnapshotError, match="another kind of bundle.*range time index") as refused:
        StreamPool.restore(path, ranged)
    assert isinstance(refused.value, BundleError | ValueError)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SnapshotError, match="cannot read"):
        StreamPool.restore(tmp_path / "junk.npz", forecaster)
    with pytest.raises(SnapshotError, match="cannot read"):
        StreamPool.restore(tmp_path / "missing.npz", forecaster)
    with np.load(path) as data:
        arrays = dict(data)
    header = json.loads(arrays["header"].tobytes())
    header["format_version"] = 3
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(SnapshotError, match="format version 3"):
        StreamPool.restore(tmp_path / "future.npz", forecaster)
    # Format 1 was bound to the manifest's sha256: it loads into that very bundle only.
    old = {**header, "format_version": 1}
    del old["layout"]
    for digest, loads in ((manifest_digest(forecaster.manifest), True), ("0" * 64, False)):
        old["bundle_manifest_sha256"] = digest
        arrays["header"] = np.frombuffer(json.dumps(old).encode(), np.uint8)
        np.savez(tmp_path / "v1.npz", **arrays)
        if loads:
            assert len(StreamPool.restore(tmp_path / "v1.npz", forecaster)) == 3
        else:
            with pytest.raises(SnapshotError, match="manifest sha256 000000000000"):
                StreamPool.restore(tmp_path / "v1.npz", forecaster)
    # A range-index bundle's forecasts carry integer times and horizons.
    update = StreamPool(ranged).update({"r": {"values": values[:ICL], "timestamps": range(ICL)}})
    assert update.forecasts[0].time == ICL - 1
    assert update.forecasts[0].horizon == list(range(ICL, ICL + OCL))


KILLED_SNAPSHOT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import numpy.lib.format as npy_format
    from timesclip_export.runtime.forecaster import RollingForecaster
    from timesclip_export.service.stream_pool import StreamPool

    bundle, path = sys.argv[1], sys.argv[2]
    pool = StreamPool.restore(path, RollingForecaster(bundle, verify=False, onnx_threads=1))
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(3000, 95, 7)).astype(np.float32)
    pool.update({f"more-{i}": rows[i] for i in range(len(rows))})  # ~8 MB of state
    write_array, written = npy_format.write_array, []

    def slow(*args, **kwargs):  # hang right after the big history array is half on disk
        write_array(*args, **kwargs)
        written.append(1)
        if len(written) == 2:
            args[0].flush() if hasattr(args[0], "flush") else None
            print("writing", flush=True)
            time.sleep(120)

    npy_format.write_array = slow
    pool.snapshot(path)
    """
)


@pytest.mark.integration
def test_a_kill_during_a_snapshot_leaves_the_previous_one(
    forecaster, tiny_bundle: Path, rows, tmp_path: Path
) -> None:
    """SIGKILL while a large snapshot is being written over an earlier one: the earlier file is
    untouched (only a stray temporary file is left) and restores to the same forecasts."""
    values, times = rows
    pool = _mixed_pool(forecaster, values, times)
    path = tmp_path / "pool.npz"
    pool.snapshot(path)
    before = path.read_bytes()
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_SNAPSHOT, str(tiny_bundle), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        line = process.stdout.readline()
        assert line.strip() == "writing", process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    (stray,) = [p for p in tmp_path.iterdir() if p.name != "pool.npz"]
    assert stray.name.startswith(".pool.npz.") and stray.stat().st_size > 1_000_000
    with pytest.raises(zipfile.BadZipFile):  # it was cut off mid-write
        zipfile.ZipFile(stray)
    restored = StreamPool.restore(path, forecaster)
    assert restored.stats() == pool.stats()
    expected, got = (
        pool.update(_next_rows(values, times)),
        restored.update(_next_rows(values, times)),
    )
    assert np.array_equal(
        np.stack([f.values for f in got.forecasts]),
        np.stack([f.values for f in expected.forecasts]),
    )


# ------------------------------------------------------------------------ positions
def test_from_must_be_the_streams_position_for_timed_and_untimed_streams(
    forecaster, rows, tmp_path: Path
) -> None:
    """A client that sends ``from`` (the rows it believes the pool holds) learns of rows the
    pool lost, timed or not, instead of a window with a hole or a silent fresh start."""
    values, times = rows
    pool = StreamPool(forecaster)
    first = pool.update(
        {
            "untimed": {"values": values[:ICL], "from": 0},
            "timed": {"values": values[:5], "timestamps": times[:5], "from": 0},
        }
    )
    assert first.positions == {"untimed": ICL, "timed": 5} and not first.rejected
    path = tmp_path / "pool.npz"
    pool.snapshot(path)  # the server's last snapshot, before the rows below
    more = pool.update({"untimed": {"values": values[ICL : ICL + 2], "from": ICL}})
    assert more.positions == {"untimed": ICL + 2} and len(more.forecasts) == 2
    restarted = StreamPool.restore(path, forecaster)  # those two rows are gone
    next_row = {"values": values[ICL + 2 : ICL + 3], "from": ICL + 2}
    late = restarted.update({"untimed": next_row, "new": {"values": values[:1], "from": 7}})
    assert {r.stream: (r.reason, r.position) for r in late.rejected} == {
        "untimed": ("position", ICL),  # not a forecast over a window with a hole
        "new": ("position", 0),  # not a silent fresh start
    }
    assert "send the rows from position" in late.rejected[0].message
    assert restarted.info("untimed")["rows"] == ICL and "new" not in restarted
    again = restarted.update({"untimed": {"values": values[ICL : ICL + 3], "from": ICL}})
    assert np.array_equal(
        np.stack([f.values for f in again.forecasts])[:2],
        np.stack([f.values for f in more.forecasts]),
    )
    repeat = restarted.update({"untimed": {"values": values[ICL : ICL + 1], "from": ICL}})
    assert (repeat.rejected[0].reason, repeat.rejected[0].position) == ("position", ICL + 3)
    assert "accepted already" in repeat.rejected[0].message
    for bad in (-1, 1.5, True, "3"):
        refused = pool.update({"timed": {"values": values[5:6], "from": bad}}).rejected[0]
        assert refused.reason == "format" and "'from'" in refused.message
    assert pool.position("timed") == 5 and pool.position("never") == 0


def test_a_snapshot_loads_into_a_retrained_bundle_and_keeps_the_streams_warm(
    forecaster, tiny_bundle: Path, rows, tmp_path: Path
) -> None:
    """The stored state is raw rows: a bundle with other weights but the same inputs, input
    length and time index continues every stream at once (forecasting with its own model)."""
    values, times = rows
    pool = _mixed_pool(forecaster, values, times)
    path = tmp_path / "pool.npz"
    pool.snapshot(path)
    retrained = Path(shutil.copytree(tiny_bundle, tmp_path / "retrained"))
    manifest = json.loads((retrained / "manifest.json").read_text())
    manifest["scaler"] = None  # another model's outputs, the same kind of rows
    (retrained / "manifest.json").write_text(json.dumps(manifest))
    other = RollingForecaster(retrained, verify=False, onnx_threads=1)
    assert manifest_digest(other.manifest) != manifest_digest(forecaster.manifest)
    restored = StreamPool.restore(path, other)
    assert {s: restored.info(s) for s in ("timed", "untimed", "filling")} == {
        s: pool.info(s) for s in ("timed", "untimed", "filling")
    }
    update = restored.update(_next_rows(values, times))
    assert not update.rejected and len(update.forecasts) == 5  # warm: no refill
    timed = _next_rows(values, times)["timed"]
    window = np.concatenate([values[ICL + 5 - ICL : ICL + 3], timed["values"]])[-ICL:]
    assert np.array_equal(update.forecasts[1].values, other.forecast(window))


def test_a_snapshot_that_cannot_be_restored_is_set_aside_and_the_pool_starts_empty(
    forecaster, rows, tmp_path: Path
) -> None:
    values, times = rows
    path = tmp_path / "shard-0-of-1.snapshot"
    pool, aside = open_pool(path, forecaster)  # none yet: empty, nothing set aside
    assert len(pool) == 0 and aside is None
    _mixed_pool(forecaster, values, times).snapshot(path)
    pool, aside = open_pool(path, forecaster, max_streams=10)
    assert len(pool) == 3 and aside is None and pool.max_streams == 10
    path.write_bytes(path.read_bytes()[:100])  # damaged
    pool, aside = open_pool(path, forecaster)
    assert len(pool) == 0 and not path.exists()
    assert aside is not None and aside.name.startswith(f"{path.name}.set-aside-")
    assert aside.read_bytes()[:4] == b"PK\x03\x04"  # kept for a look, never deleted
