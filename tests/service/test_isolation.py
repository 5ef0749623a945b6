"""Failures stay with their stream, and large updates run in steps: the runtime failing on one
stream's windows refuses that stream alone (its state unchanged) while every other stream of the
same call, or of the same ``@serve.batch``, gets exactly its forecasts; a pending update
reserves its streams and changes nothing until it finishes. In process, without a Ray cluster:
the shard's batched methods run on a plain event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from timesclip_export.runtime.forecaster import RollingForecaster
from timesclip_export.service.stream_pool import StreamPool

from tests.conftest import ETTH1_COLUMNS, TINY_ICL

POISON = 12345.0  # a value the failing runtime below refuses to forecast


@pytest.fixture(scope="module")
def rows(etth1: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    values = etth1[ETTH1_COLUMNS].to_numpy(np.float32)
    stamps = np.datetime_as_string(etth1["date"].to_numpy().astype("datetime64[s]")).tolist()
    return values, stamps


def _failing(forecaster: RollingForecaster) -> RollingForecaster:
    """The forecaster, raising (not an input error: a runtime bug) on any window that holds
    POISON, wherever it is in the batch."""
    real = forecaster._forecast_windows

    def forecast_windows(windows: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        if (windows == POISON).any():
            raise RuntimeError("injected failure")
        return real(windows, batch_size)

    forecaster._forecast_windows = forecast_windows  # type: ignore[method-assign]
    return forecaster


def _entry(rows, start: int, stop: int, poison: bool = False) -> dict:
    values, stamps = rows
    chunk = values[start:stop].copy()
    if poison:
        chunk[-1, 0] = POISON
    return {"values": chunk, "timestamps": stamps[start:stop]}


def _reference(tiny_bundle: Path, rows, start: int, stop: int) -> np.ndarray:
    values, stamps = rows
    reference = RollingForecaster(tiny_bundle, verify=False, onnx_threads=1)
    return reference.update(values[start:stop], timestamps=stamps[start:stop])


def test_a_runtime_failure_refuses_its_stream_alone(tiny_bundle: Path, rows) -> None:
    pool = StreamPool(_failing(RollingForecaster(tiny_bundle, onnx_threads=1)), batch_size=8)
    offsets = {"a": 0, "b": 500, "bad": 1000, "c": 1500}
    first = {s: _entry(rows, o, o + TINY_ICL) for s, o in offsets.items()}
    pool.update(first)
    before = pool.info("bad")
    update = pool.update(
        {s: _entry(rows, o + TINY_ICL, o + TINY_ICL + 20, s == "bad") for s, o in offsets.items()}
    )
    assert [(r.stream, r.reason) for r in update.rejected] == [("bad", "internal")]
    assert "injected failure" in update.rejected[0].message
    assert pool.info("bad") == before  # nothing of it stored
    for stream, offset in offsets.items():
        if stream == "bad":
            continue
        got = np.stack([f.values for f in update.forecasts if f.stream == stream])
        want = _reference(tiny_bundle, rows, offset, offset + TINY_ICL + 20)[1:]
        np.testing.assert_array_equal(got, want)
    assert pool.stats()["rejected"] == {"internal": 1}


def test_an_update_in_steps_equals_one_update_and_reserves_its_streams(
    tiny_bundle: Path, rows
) -> None:
    pool = StreamPool(RollingForecaster(tiny_bundle, onnx_threads=1), batch_size=8)
    pending = pool.begin({"big": _entry(rows, 0, TINY_ICL + 30)})
    assert pending.windows == 31 and pool.info("big") is None
    busy = pool.update({"big": _entry(rows, 0, 5), "other": _entry(rows, 0, TINY_ICL)})
    assert [(r.stream, r.reason) for r in busy.rejected] == [("big", "busy")]
    steps = 0
    while not pool.advance(pending, 8):
        steps += 1
        assert pool.info("big") is None  # nothing changes before finish
    update = pool.finish(pending)
    assert steps == 3 and pool.info("big")["rows"] == TINY_ICL + 30
    got = np.stack([f.values for f in update.forecasts])
    np.testing.assert_array_equal(got, _reference(tiny_bundle, rows, 0, TINY_ICL + 30))
    # abandoned: no state change, and the stream is free again
    pending = pool.begin({"big": _entry(rows, TINY_ICL + 30, TINY_ICL + 40)})
    pool.advance(pending, 4)
    pool.abandon(pending)
    assert pool.info("big")["rows"] == TINY_ICL + 30
    assert not pool.update({"big": _entry(rows, TINY_ICL + 30, TINY_ICL + 31)}).rejected


class _Metric:
    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def test_one_failing_request_of_a_serve_batch_leaves_the_others_exact(
    tiny_bundle: Path, rows, monkeypatch
) -> None:
    """N concurrent requests meet in one ``@serve.batch`` (and one large request runs in
    steps beside them); the runtime fails on one stream: that request alone is refused."""
    pytest.importorskip("ray.serve")
    from ray.serve import batching
    from timesclip_export.service import config
    from timesclip_export.service import shard as shards

    # Outside a replica there is no replica context for this warning to read.
    monkeypatch.setattr(
        batching._BatchQueue,
        "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
        lambda self: None,
    )

    monkeypatch.setattr(
        shards,
        "_ShardMetrics",
        lambda tags: SimpleNamespace(
            tags=tags,
            **{
                k: _Metric()
                for k in (
                    "rows",
                    "forecasts",
                    "rejected",
                    "evictions",
                    "streams",
                    "batch_requests",
                    "batch_windows",
                    "seconds",
                    "snapshot_seconds",
                )
            },
        ),
    )
    monkeypatch.setattr(
        shards,
        "_load_forecaster",
        lambda config: _failing(RollingForecaster(tiny_bundle, onnx_threads=1)),
    )
    options = config.ServeConfig(bundle=str(tiny_bundle), batch_size=64, batch_wait_ms=50)
    options.check()
    shard = shards.Shard(vars(options), 0)
    n = 6
    values = rows

    def request(i: int, start: int, stop: int, poison: bool = False) -> dict:
        entry = _entry(values, 600 * i + start, 600 * i + stop, poison)
        return {"streams": {f"s{i}": entry}, "parameters": False}

    async def run() -> tuple[list[dict], dict]:
        await asyncio.gather(*(shard.rows_large(request(i, 0, TINY_ICL - 1)) for i in range(n)))
        large = shard.rows_large(request(n, 0, TINY_ICL + 150))
        answers = await asyncio.gather(
            large,
            *(shard.rows(request(i, TINY_ICL - 1, TINY_ICL + 2, i == 3)) for i in range(n)),
        )
        return answers[1:], answers[0]

    answers, large = asyncio.run(run())
    assert shard._batches[n] >= 1  # the n requests met in one batch
    assert max(shard._windows) <= 64  # and the large one ran in steps of --batch-size
    for i, answer in enumerate(answers):
        if i == 3:
            assert answer["forecasts"] == {} and answer["rejected"]["s3"]["reason"] == "internal"
            assert shard.pool.info("s3")["rows"] == TINY_ICL - 1
            continue
        got = np.stack([f.values for f in answer["forecasts"][f"s{i}"]])
        want = _reference(tiny_bundle, rows, 600 * i, 600 * i + TINY_ICL + 2)
        np.testing.assert_array_equal(got, want)
    got = np.stack([f.values for f in large["forecasts"][f"s{n}"]])
    np.testing.assert_array_equal(
        got, _reference(tiny_bundle, rows, 600 * n, 600 * n + TINY_ICL + 150)
    )
