"""The shards of ``timesclip-darts serve``: one :class:`StreamPool` each, so a stream's state
lives in exactly one process. Concurrent requests meet in ``@serve.batch`` (sized in rows, so a
batch is at most one device call of ``--batch-size`` windows); a request too large for one batch
runs in steps of ``--batch-size`` windows between the batches of others; failures stay with the
stream they happened on (:mod:`timesclip_export.service.stream_pool`).

Durability: with ``--snapshot-dir`` a shard restores its pool when it starts (a file it cannot
restore is set aside and the shard starts empty), writes it every ``--snapshot-every`` seconds on
a thread of its own (the state is copied under the pool's lock, the file written after), and on
the way down: :meth:`Shard.drain` refuses new changes (503 ``draining``), waits for the changes
in flight and writes the snapshot; ``__del__``, Serve's shutdown hook, does the same for a
shutdown that did not drain first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from ray.util import metrics
from timesclip_export.service.api import Forecast
from timesclip_export.service.config import (
    LATENCY_BOUNDS,
    ServeConfig,
    shard_threads,
    snapshot_path,
)

# A large request's steps wait for the batched requests queued then, for at most this many times
# its last step's duration: under load it gets 1 / (1 + this) of the shard's time, at least.
_BATCHES_PER_STEP = 2
_BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
# Seconds Serve gives a stopping shard to finish its requests and write its snapshot.
SHUTDOWN_TIMEOUT_S = 300
logger = logging.getLogger("timesclip_export.service.shard")


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def set_threads(threads: int) -> None:
    """Run torch's (where the runtime loaded it: the torch vision path) and numba's intra-op
    pools on ``threads`` threads; numba's count is per thread, so each thread that forecasts
    calls this. Ray sets only ``OMP_NUM_THREADS`` (from the actor's ``num_cpus``); ONNX Runtime
    gets its count from the forecaster's ``onnx_threads``."""
    import sys

    import numba

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def thread_settings(forecaster: Any) -> dict[str, int | None]:
    """The intra-op threads in effect in this thread: torch's (None where torch is not loaded),
    numba's, and the forecaster's ONNX Runtime sessions' (also its rasteriser's on the ONNX
    path)."""
    import sys

    import numba

    torch = sys.modules.get("torch")
    return {
        "torch": torch.get_num_threads() if torch is not None else None,
        "numba": numba.get_num_threads(),
        "onnxruntime": forecaster.onnx_threads,
    }


def _load_forecaster(config: ServeConfig) -> Any:
    """The runtime on :func:`shard_threads` threads, warmed up (the rasteriser's JIT and ORT's
    first run take seconds)."""
    import numpy as np
    from timesclip_export.runtime.forecaster import RollingForecaster

    threads = shard_threads(config)
    forecaster = RollingForecaster(
        config.bundle,
        vision=config.vision,
        device=config.device,
        batch_size=config.batch_size,
        trusted_key=config.trusted_key,
        onnx_threads=threads,
    )
    set_threads(threads)  # after the runtime's imports: torch only where it loaded torch
    window = np.random.default_rng(0).normal(size=(forecaster.input_chunk_length, 1))
    forecaster.forecast(np.repeat(window, len(forecaster.inputs), axis=1))
    return forecaster


def _rows_in(requests: list[dict]) -> int:
    """Size of a batch of ``Shard.rows`` requests: their rows, a bound on the windows they
    complete, so one batch is at most one device call of ``--batch-size`` windows."""
    return sum(len(rows["values"]) for r in requests for rows in r["streams"].values())


def _windows_in(requests: list[dict]) -> int:
    """Size of a batch of ``Shard.windows`` requests: their windows."""
    return sum(len(r["windows"]) for r in requests)


class Shard:
    """One shard: a :class:`StreamPool` and its model behind ``@serve.batch`` methods. Pool work
    runs on one worker thread, so updates, snapshots and reads never interleave; a request too
    large for one batch runs there in steps of ``--batch-size`` windows, between the batches of
    other requests."""

    def __init__(self, config: dict, index: int) -> None:
        from timesclip_export.service.stream_pool import open_pool

        self.config = ServeConfig(**config)
        self.index = index
        self.forecaster = _load_forecaster(self.config)
        self._executor = ThreadPoolExecutor(
            1,
            thread_name_prefix=f"shard{index}",
            initializer=set_threads,
            initargs=(shard_threads(self.config),),
        )
        self._path = snapshot_path(self.config, index)
        kwargs = {"max_streams": self.config.max_streams, "batch_size": self.config.batch_size}
        self.pool, aside = open_pool(self._path, self.forecaster, **kwargs)
        restored = aside is None and self._path is not None and self._path.exists()
        self.restored_from: str | None = str(self._path) if restored else None
        self.set_aside: str | None = None if aside is None else str(aside)
        self._evictions = int(self.pool.stats()["evictions"])
        self._batches: Tally[int] = Tally()  # requests per @serve.batch call
        self._windows: Tally[int] = Tally()  # windows per device call
        self._m = _ShardMetrics({"shard": str(index)})
        self._m.streams.set(len(self.pool), tags=self._m.tags)
        if aside is not None:
            self._m.set_aside.inc(tags=self._m.tags)
        self._snapshot_lock = threading.Lock()  # one snapshot at a time
        self._draining = False  # set by drain() and __del__: no more changes
        self._drained = False  # drain() wrote its snapshot
        self._changing = 0  # requests that may change the pool, in flight
        self._settled = asyncio.Event()  # set while none is
        self._settled.set()
        self._batched = 0  # rows requests waiting in or running their @serve.batch
        self._no_batches = asyncio.Event()
        self._no_batches.set()
        for method in (self._rows_batched, self.windows):
            method.set_max_batch_size(self.config.batch_size)
            method.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000)
        self._stop = threading.Event()
        threading.Thread(target=self._gauge_loop, daemon=True).start()
        if self._path is not None:
            threading.Thread(target=self._snapshot_loop, daemon=True).start()
        logger.info("shard %d ready, %d stream(s) restored", index, len(self.pool))

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- batched stream rows -------------------------------------------------------------
    async def rows(self, request: dict) -> dict:
        """``{"streams": {id: {"values", "timestamps", "from"}}, "parameters": bool}`` of at
        most ``--batch-size`` rows -> ``{"forecasts": {id: [Forecast]}, "positions": {id: int},
        "rejected": {id: {...}}}``, batched with the other requests; counted while it waits, so
        that a large request's steps let it go first."""
        if self._draining:
            return _draining_answer(request["streams"])
        self._batched += 1
        self._no_batches.clear()
        try:
            with self._change():
                return await self._rows_batched(request)
        finally:
            self._batched -= 1
            if not self._batched:
                self._no_batches.set()

    @contextlib.contextmanager
    def _change(self) -> Any:
        """Count a request that may change the pool, so that :meth:`drain` can wait for it
        (entered on the event loop with no ``await`` after the draining check: atomic)."""
        self._changing += 1
        self._settled.clear()
        try:
            yield
        finally:
            self._changing -= 1
            if not self._changing:
                self._settled.set()

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005, batch_size_fn=_rows_in)
    async def _rows_batched(self, requests: list[dict]) -> list[dict]:
        return await self._run(self._rows_batch, requests)

    def _rows_batch(self, requests: list[dict]) -> list[dict]:
        start = time.perf_counter()
        answers: list[dict] = [_answer() for _ in requests]
        parameters = any(r.get("parameters") for r in requests)
        # Rounds: a stream sent by two requests of this batch goes in two updates, in order.
        rounds: list[dict[str, tuple[int, dict]]] = []
        for i, request in enumerate(requests):
            for stream, rows in request["streams"].items():
                for batch in rounds:
                    if stream not in batch:
                        batch[stream] = (i, rows)
                        break
                else:
                    rounds.append({stream: (i, rows)})
        for batch in rounds:
            known = {stream: stream in self.pool for stream in batch}
            streams = {stream: rows for stream, (_, rows) in batch.items()}
            try:
                update = self.pool.update(streams, parameters=parameters)
            except Exception as err:  # the pool isolates streams; this is a bug of its own
                logger.exception(
                    "shard %d: an update of %d stream(s) failed", self.index, len(batch)
                )
                update = _failed_update(streams, err)
            self._windows[len(update.forecasts)] += 1
            self._m.batch_windows.observe(len(update.forecasts), tags=self._m.tags)
            self._record(update, batch, known, answers)
        self._count_evictions()
        self._batches[len(requests)] += 1
        self._m.batch_requests.observe(len(requests), tags=self._m.tags)
        self._m.seconds.observe(time.perf_counter() - start, tags=self._m.tags)
        return answers

    # -- one large request, in steps ------------------------------------------------------
    async def rows_large(self, request: dict) -> dict:
        """A ``rows`` request of more than ``--batch-size`` rows: its rows checked and its
        streams reserved at once, its windows forecast ``--batch-size`` at a time, its streams
        changed only at the end, all or none. Before each step it lets the batched requests
        waiting then go first, for at most ``_BATCHES_PER_STEP`` times as long as its last
        step took: other streams keep their latency and the large request still gets a third
        of the shard's time. A cancelled request (client gone, timeout) changes nothing."""
        streams, parameters = request["streams"], bool(request.get("parameters"))
        if self._draining:
            return _draining_answer(streams)
        with self._change():
            return await self._rows_large(streams, parameters)

    async def _rows_large(self, streams: dict, parameters: bool) -> dict:
        known, pending = await self._run(self._begin, streams, parameters)
        step_seconds = 0.0
        try:
            while not pending.forecast_done:
                if step_seconds:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._no_batches.wait(), step_seconds * _BATCHES_PER_STEP
                        )
                before, started = pending.done, time.perf_counter()
                await self._run(self.pool.advance, pending, self.config.batch_size)
                step_seconds = time.perf_counter() - started
                self._windows[pending.done - before] += 1
                self._m.batch_windows.observe(pending.done - before, tags=self._m.tags)
            update = await self._run(self.pool.finish, pending)
        except BaseException:
            await asyncio.shield(self._run(self.pool.abandon, pending))
            raise
        answers: list[dict] = [_answer()]
        batch = {stream: (0, rows) for stream, rows in streams.items()}
        await self._run(self._record, update, batch, known, answers)  # reads the pool: its thread
        await self._run(self._count_evictions)
        return answers[0]

    def _begin(self, streams: dict, parameters: bool) -> tuple[dict, Any]:
        known = {stream: stream in self.pool for stream in streams}
        return known, self.pool.begin(streams, parameters=parameters)

    def _record(
        self,
        update: Any,
        batch: dict[str, tuple[int, dict]],
        known: dict[str, bool],
        answers: list[dict],
    ) -> None:
        """An update's forecasts and refusals into the answers of the requests that sent them
        (``batch``: stream -> (request, rows)), and into the metrics."""
        for r in update.rejected:
            i, rows = batch[r.stream]
            state = self.pool.info(r.stream) or {}
            answers[i]["rejected"][r.stream] = {
                "reason": r.reason,
                "message": r.message,
                "row": r.row,
                "known": known[r.stream],
                "last_time": state.get("last_time"),
                "position": state.get("position", 0),
                "from": rows.get("from"),
            }
            rejected_rows = max(1, len(rows["values"]))
            self._m.rejected.inc(rejected_rows, tags={**self._m.tags, "reason": r.reason})
        accepted = sum(
            len(rows["values"])
            for stream, (i, rows) in batch.items()
            if stream not in answers[i]["rejected"]
        )
        for stream, (i, _) in batch.items():
            if stream not in answers[i]["rejected"]:
                answers[i]["forecasts"].setdefault(stream, [])
                position = update.positions.get(stream)
                if position is None:  # no new rows: the stream is as it was
                    position = (self.pool.info(stream) or {}).get("position", 0)
                answers[i]["positions"][stream] = position
        for forecast in update.forecasts:
            i = batch[forecast.stream][0]
            answers[i]["forecasts"][forecast.stream].append(Forecast.of(forecast))
        if accepted:  # Ray's counters refuse increments of 0
            self._m.rows.inc(accepted, tags=self._m.tags)
        if update.forecasts:
            self._m.forecasts.inc(len(update.forecasts), tags=self._m.tags)

    def _count_evictions(self) -> None:
        evictions = int(self.pool.stats()["evictions"])
        if evictions > self._evictions:
            self._m.evictions.inc(evictions - self._evictions, tags=self._m.tags)
            self._evictions = evictions
        self._m.streams.set(len(self.pool), tags=self._m.tags)

    # -- batched stateless windows -------------------------------------------------------
    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005, batch_size_fn=_windows_in)
    async def windows(self, requests: list[dict]) -> list[dict]:
        """``POST /v1/forecast``: each request ``{"windows": [{"values", "timestamps"}],
        "parameters": bool}`` of ``input_chunk_length`` rows each, at most ``--batch-size``
        windows; no stream state."""
        return await self._run(self._windows_batch, requests)

    def _windows_batch(self, requests: list[dict]) -> list[dict]:
        from timesclip_export.service.stream_pool import StreamPool

        pool = StreamPool(self.forecaster, batch_size=self.config.batch_size)  # throwaway
        rows = {
            f"{i}/{w}": window
            for i, request in enumerate(requests)
            for w, window in enumerate(request["windows"])
        }
        update = pool.update(rows, parameters=any(r.get("parameters") for r in requests))
        self._windows[len(update.forecasts)] += 1
        self._batches[len(requests)] += 1
        self._m.batch_windows.observe(len(update.forecasts), tags=self._m.tags)
        self._m.batch_requests.observe(len(requests), tags=self._m.tags)
        answers: list[dict] = [{"forecasts": {}, "rejected": {}} for _ in requests]
        for forecast in update.forecasts:  # one per window: its last row completes it
            i, w = (int(k) for k in forecast.stream.split("/"))
            answers[i]["forecasts"][w] = Forecast.of(forecast)
        for rejection in update.rejected:
            i, w = (int(k) for k in rejection.stream.split("/"))
            message = rejection.message.split(": ", 1)[-1]  # without the throwaway stream id
            answers[i]["rejected"][w] = {
                "reason": rejection.reason,
                "message": message,
                "row": rejection.row,
            }
        return answers

    # -- reads and admin -----------------------------------------------------------------
    async def stream_info(self, stream: str) -> dict | None:
        """``GET /v1/streams/{id}``: the shard, rows and last acknowledged timestamp."""
        state = await self._run(self.pool.info, stream)
        return None if state is None else {"stream": stream, "shard": self.index, **state}

    async def drop(self, stream: str) -> bool | None:
        """Forget a stream: whether there was one; ``None`` while draining (nothing changed)."""
        if self._draining:
            return None
        with self._change():
            dropped = await self._run(self.pool.drop, stream)
        self._m.streams.set(len(self.pool), tags=self._m.tags)
        return dropped

    async def stats(self) -> dict:
        def read() -> dict:
            return {
                **self.pool.stats(),
                "shard": self.index,
                "pid": os.getpid(),
                "rss_bytes": rss_bytes(),
                "restored_from": self.restored_from,
                "snapshot_set_aside": self.set_aside,
                "draining": self._draining,
                "batch_requests": _summary(self._batches),
                "batch_windows": _summary(self._windows),
                "device": self.forecaster.describe(),
                "threads": thread_settings(self.forecaster),
            }

        return await self._run(read)

    async def snapshot(self) -> str | None:
        """Write the pool (atomically) now, beside the requests (it copies the state under the
        pool's lock and writes it on a thread of its own); the file, or ``None`` without
        ``--snapshot-dir``."""
        return await asyncio.to_thread(self._snapshot)

    async def drain(self) -> str | None:
        """Stop changing: from now on rows and drops get 503 ``draining`` (nothing of them
        stored), the changes in flight finish, then the snapshot is written. Reads and stateless
        windows go on. The file, or ``None`` without ``--snapshot-dir``."""
        self._draining = True
        while self._changing:
            await self._settled.wait()
        path = await asyncio.to_thread(self._snapshot)
        self._drained = True
        return path

    def _snapshot(self) -> str | None:
        if self._path is None:
            return None
        with self._snapshot_lock:
            start = time.perf_counter()
            self.pool.snapshot(self._path)
            self._m.snapshot_seconds.observe(time.perf_counter() - start, tags=self._m.tags)
        return str(self._path)

    def _gauge_loop(self) -> None:
        """Ray drops a gauge not set for two report intervals: set it every second."""
        while not self._stop.wait(1.0):
            self._m.streams.set(len(self.pool), tags=self._m.tags)

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.config.snapshot_every):
            try:
                self._snapshot()
            except Exception:  # keep serving; the next tick tries again
                logger.exception("shard %d: snapshot failed", self.index)

    def __del__(self) -> None:
        """Serve's shutdown hook (after the replica's requests drained, or its time ran out):
        no more changes, then the snapshot, unless :meth:`drain` wrote it already."""
        if not hasattr(self, "_stop"):  # __init__ failed: nothing to keep
            return
        self._stop.set()
        self._draining = True
        if self._drained:  # drain() wrote the last state
            return
        try:
            self._snapshot()
        except Exception:
            logger.exception("shard %d: the snapshot on shutdown failed", self.index)


def _answer() -> dict:
    return {"forecasts": {}, "positions": {}, "rejected": {}}


def _draining_answer(streams: dict) -> dict:
    """Every stream refused while the shard drains: nothing of them was stored."""
    message = "the server is stopping (its streams are being saved); retry after a restart"
    rejected = {
        stream: {"reason": "draining", "message": f"stream {stream!r}: {message}", "row": None}
        for stream in streams
    }
    return {**_answer(), "rejected": rejected}


def _failed_update(streams: dict, err: Exception) -> Any:
    """Every stream of a failed update refused as the server's fault (their state unchanged:
    the pool changes nothing before all its forecasts are made)."""
    from timesclip_export.service.stream_pool import PoolUpdate, internal_rejection

    return PoolUpdate(rejected=[internal_rejection(stream, err) for stream in streams])


def _summary(tally: Tally) -> dict:
    calls = sum(tally.values())
    total = sum(size * n for size, n in tally.items())
    return {
        "calls": calls,
        "mean": total / calls if calls else None,
        "max": max(tally) if tally else None,
    }


class _ShardMetrics:
    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags
        keys = ("shard",)
        self.rows = metrics.Counter(
            "timesclip_serve_rows_total", "rows accepted into streams", tag_keys=keys
        )
        self.forecasts = metrics.Counter(
            "timesclip_serve_forecasts_total", "forecasts made for streams", tag_keys=keys
        )
        self.rejected = metrics.Counter(
            "timesclip_serve_rejected_rows_total",
            "rows refused (whole stream updates), by reason",
            tag_keys=("shard", "reason"),
        )
        self.evictions = metrics.Counter(
            "timesclip_serve_evictions_total", "streams evicted (--max-streams)", tag_keys=keys
        )
        self.streams = metrics.Gauge("timesclip_serve_streams", "live streams", tag_keys=keys)
        self.batch_requests = metrics.Histogram(
            "timesclip_serve_batch_requests",
            "requests per @serve.batch call",
            boundaries=_BATCH_BOUNDS,
            tag_keys=keys,
        )
        self.batch_windows = metrics.Histogram(
            "timesclip_serve_batch_windows",
            "windows forecast per device call",
            boundaries=_BATCH_BOUNDS,
            tag_keys=keys,
        )
        self.seconds = metrics.Histogram(
            "timesclip_serve_shard_batch_seconds",
            "seconds per batch in a shard",
            boundaries=LATENCY_BOUNDS,
            tag_keys=keys,
        )
        self.set_aside = metrics.Counter(
            "timesclip_serve_snapshots_set_aside_total",
            "snapshots that could not be restored, renamed aside (the shard started empty)",
            tag_keys=keys,
        )
        self.snapshot_seconds = metrics.Histogram(
            "timesclip_serve_snapshot_seconds",
            "seconds per snapshot",
            boundaries=LATENCY_BOUNDS,
            tag_keys=keys,
        )
