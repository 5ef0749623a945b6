"""``timesclip-darts serve BUNDLE``: the deployment runtime behind an HTTP JSON API on Ray Serve,
for many live streams (one forecast per stream after every new row) and stateless windows.

Deployments of one Serve application (``timesclip``):

- ``Ingress`` (``--replicas``): HTTP routing, auth, size limits and request validation
  (:mod:`timesclip_export.service.api`); no model. It sends each stream's rows to the one shard
  that owns the stream (rendezvous hashing of the stream id, :func:`serve_api.shard_for`), one
  call per shard for ``POST /v1/rows``.
- ``Shard0`` ... ``Shard{N-1}`` (``--shards``, one replica each): a :class:`StreamPool` per
  shard, so a stream's state lives in exactly one process. Concurrent requests meet in
  ``@serve.batch`` and go to the model as one ``StreamPool.update`` (one batched device call
  for every completed window). With ``--snapshot-dir`` a shard writes its pool every
  ``--snapshot-every`` seconds and on shutdown, and restores it when (re)started.
  Stateless ``POST /v1/forecast`` windows are batched the same way on the shards' models
  (round-robin; a request of many windows is split over all shards).

Metrics are Ray's (``ray.util.metrics``), exported by each node's metrics agent as
``ray_timesclip_serve_*`` on the node's metrics export port. Ray is imported here only: the
runtime (``timesclip_export.runtime.forecaster``) never imports it.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.util import metrics
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from timesclip_export.service.api import (
    OUTPUT_FIELDS,
    ApiError,
    Forecast,
    ModelSpec,
    check_finite,
    check_stream_id,
    expect_object,
    forecast_json,
    parse_json,
    parse_output,
    parse_rows,
    rejection_error,
    shard_for,
)

from timesclip_darts.atomic_files import write_text_atomic

APP_NAME = "timesclip"
LAYOUT_FILE = "layout.json"
SNAPSHOT_FORMAT = "shard-{index}-of-{shards}.snapshot"
_LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
_BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
logger = logging.getLogger("timesclip_export.service.server")


@dataclass
class ServeConfig:
    """Options of ``timesclip-darts serve`` (see its ``--help``)."""

    bundle: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    shards: int = 1
    num_gpus: float = 0.0
    address: str | None = None
    token: str | None = None
    max_request_bytes: int = 8 << 20
    max_streams: int | None = None
    snapshot_dir: str | None = None
    snapshot_every: float = 60.0
    device: str = "cpu"
    vision: str = "auto"
    batch_size: int = 256
    max_batch_requests: int = 256
    batch_wait_ms: float = 1.0
    metrics_port: int | None = None
    trusted_key: str | None = None
    access_log: bool = False

    def check(self) -> None:
        for name in ("replicas", "shards", "batch_size", "max_batch_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.num_gpus < 0:
            raise ValueError("--num-gpus must be 0 or more")
        if self.max_request_bytes < 1024:
            raise ValueError("--max-request-bytes must be at least 1024")
        if self.max_streams is not None and self.max_streams < 1:
            raise ValueError("--max-streams must be at least 1")
        if self.snapshot_every <= 0:
            raise ValueError("--snapshot-every must be positive (seconds)")
        if self.batch_wait_ms < 0:
            raise ValueError("--batch-wait-ms must be 0 or more")


def snapshot_path(config: ServeConfig, index: int) -> Path | None:
    if not config.snapshot_dir:
        return None
    return Path(config.snapshot_dir) / SNAPSHOT_FORMAT.format(index=index, shards=config.shards)


def check_snapshot_dir(config: ServeConfig, manifest: dict) -> None:
    """Create ``--snapshot-dir`` or check that its snapshots were written for this bundle and
    this many shards (streams are placed by shard count: another count would misroute them)."""
    if not config.snapshot_dir:
        return
    folder = Path(config.snapshot_dir)
    folder.mkdir(parents=True, exist_ok=True)
    layout = {"shards": config.shards, "bundle_manifest_sha256": _manifest_digest(manifest)}
    path = folder / LAYOUT_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is unreadable ({err}); use another --snapshot-dir") from err
        if found.get("shards") != config.shards:
            raise ValueError(
                f"--snapshot-dir {folder} holds snapshots of {found.get('shards')} shard(s); "
                f"streams are placed by the number of shards, so start with --shards "
                f"{found.get('shards')} or use an empty folder"
            )
        if found.get("bundle_manifest_sha256") != layout["bundle_manifest_sha256"]:
            raise ValueError(
                f"--snapshot-dir {folder} holds snapshots of another bundle; use an empty folder"
            )
        return
    write_text_atomic(path, json.dumps(layout))


def _manifest_digest(manifest: dict) -> str:
    from timesclip_export.service.stream_pool import manifest_digest

    return manifest_digest(manifest)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _load_forecaster(config: ServeConfig) -> Any:
    """The runtime, warmed up (the rasteriser's JIT and ORT's first run take seconds)."""
    import numpy as np
    from timesclip_export.runtime.forecaster import RollingForecaster

    forecaster = RollingForecaster(
        config.bundle,
        vision=config.vision,
        device=config.device,
        batch_size=config.batch_size,
        trusted_key=config.trusted_key,
    )
    window = np.random.default_rng(0).normal(size=(forecaster.input_chunk_length, 1))
    forecaster.forecast(np.repeat(window, len(forecaster.inputs), axis=1))
    return forecaster


# ------------------------------------------------------------------------------ the shards
class Shard:
    """One shard: a :class:`StreamPool` and its model behind ``@serve.batch`` methods. Pool work
    runs on one worker thread, so updates, snapshots and reads never interleave."""

    def __init__(self, config: dict, index: int) -> None:
        from timesclip_export.service.stream_pool import StreamPool

        self.config = ServeConfig(**config)
        self.index = index
        self.forecaster = _load_forecaster(self.config)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"shard{index}")
        self._path = snapshot_path(self.config, index)
        kwargs = {"max_streams": self.config.max_streams, "batch_size": self.config.batch_size}
        self.restored_from: str | None = None
        if self._path is not None and self._path.exists():
            self.pool = StreamPool.restore(self._path, self.forecaster, **kwargs)
            self.restored_from = str(self._path)
        else:
            self.pool = StreamPool(self.forecaster, **kwargs)
        self._evictions = int(self.pool.stats()["evictions"])
        self._batches: Tally[int] = Tally()  # requests per @serve.batch call
        self._windows: Tally[int] = Tally()  # windows per device call
        self._m = _ShardMetrics({"shard": str(index)})
        self._m.streams.set(len(self.pool), tags=self._m.tags)
        for method in (self.rows, self.windows):
            method.set_max_batch_size(self.config.max_batch_requests)
            method.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000)
        self._stop = threading.Event()
        if self._path is not None:
            threading.Thread(target=self._snapshot_loop, daemon=True).start()
        logger.info("shard %d ready, %d stream(s) restored", index, len(self.pool))

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- batched stream rows -------------------------------------------------------------
    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005)
    async def rows(self, requests: list[dict]) -> list[dict]:
        """Each request: ``{"streams": {id: {"values", "timestamps"}}, "parameters": bool}``;
        each answer: ``{"forecasts": {id: [Forecast]}, "rejected": {id: {...}}}``."""
        return await self._run(self._rows_batch, requests)

    def _rows_batch(self, requests: list[dict]) -> list[dict]:
        start = time.perf_counter()
        answers: list[dict] = [{"forecasts": {}, "rejected": {}} for _ in requests]
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
            update = self.pool.update(
                {stream: rows for stream, (_, rows) in batch.items()}, parameters=parameters
            )
            self._windows[len(update.forecasts)] += 1
            self._m.batch_windows.observe(len(update.forecasts), tags=self._m.tags)
            for r in update.rejected:
                i, rows = batch[r.stream]
                state = self.pool.info(r.stream) or {}
                answers[i]["rejected"][r.stream] = {
                    "reason": r.reason,
                    "message": r.message,
                    "row": r.row,
                    "known": known[r.stream],
                    "last_time": state.get("last_time"),
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
            for forecast in update.forecasts:
                i = batch[forecast.stream][0]
                answers[i]["forecasts"][forecast.stream].append(Forecast.of(forecast))
            if accepted:  # Ray's counters refuse increments of 0
                self._m.rows.inc(accepted, tags=self._m.tags)
            if update.forecasts:
                self._m.forecasts.inc(len(update.forecasts), tags=self._m.tags)
        self._count_evictions()
        self._batches[len(requests)] += 1
        self._m.batch_requests.observe(len(requests), tags=self._m.tags)
        self._m.seconds.observe(time.perf_counter() - start, tags=self._m.tags)
        return answers

    def _count_evictions(self) -> None:
        evictions = int(self.pool.stats()["evictions"])
        if evictions > self._evictions:
            self._m.evictions.inc(evictions - self._evictions, tags=self._m.tags)
            self._evictions = evictions
        self._m.streams.set(len(self.pool), tags=self._m.tags)

    # -- batched stateless windows -------------------------------------------------------
    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005)
    async def windows(self, requests: list[dict]) -> list[dict]:
        """``POST /v1/forecast``: each request ``{"windows": [{"values", "timestamps"}],
        "parameters": bool}`` of ``input_chunk_length`` rows each; no stream state."""
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

    async def drop(self, stream: str) -> bool:
        dropped = await self._run(self.pool.drop, stream)
        self._m.streams.set(len(self.pool), tags=self._m.tags)
        return dropped

    async def stats(self) -> dict:
        def read() -> dict:
            return {
                **self.pool.stats(),
                "shard": self.index,
                "pid": os.getpid(),
                "rss_bytes": _rss_bytes(),
                "restored_from": self.restored_from,
                "batch_requests": _summary(self._batches),
                "batch_windows": _summary(self._windows),
                "device": self.forecaster.describe(),
            }

        return await self._run(read)

    async def snapshot(self) -> str | None:
        """Write the pool (atomically) now; the file, or ``None`` without ``--snapshot-dir``."""
        return await self._run(self._snapshot)

    def _snapshot(self) -> str | None:
        if self._path is None:
            return None
        start = time.perf_counter()
        self.pool.snapshot(self._path)
        self._m.snapshot_seconds.observe(time.perf_counter() - start, tags=self._m.tags)
        return str(self._path)

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.config.snapshot_every):
            try:
                self._executor.submit(self._snapshot).result()
            except Exception:  # keep serving; the next tick tries again
                logger.exception("shard %d: snapshot failed", self.index)

    def __del__(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()


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
            boundaries=_LATENCY_BOUNDS,
            tag_keys=keys,
        )
        self.snapshot_seconds = metrics.Histogram(
            "timesclip_serve_snapshot_seconds",
            "seconds per snapshot",
            boundaries=_LATENCY_BOUNDS,
            tag_keys=keys,
        )


# ------------------------------------------------------------------------------ HTTP
class Ingress:
    """HTTP routes, auth, limits and validation; fans rows out to the owning shards."""

    def __init__(self, config: dict, *shards: Any) -> None:
        self.config = ServeConfig(**config)
        self.spec = ModelSpec(_read_manifest(self.config))
        self.model = self.spec.describe()
        self._round_robin = itertools.count()
        self.shards = list(shards)
        self._token = self.config.token.encode() if self.config.token else None
        self._latency = metrics.Histogram(
            "timesclip_serve_request_seconds",
            "seconds per HTTP request, by route",
            boundaries=_LATENCY_BOUNDS,
            tag_keys=("route",),
        )
        self._responses = metrics.Counter(
            "timesclip_serve_responses_total",
            "HTTP responses by route and status",
            tag_keys=("route", "status"),
        )
        self._refused = metrics.Counter(
            "timesclip_serve_refused_requests_total",
            "requests refused before reaching a model, by error code",
            tag_keys=("code",),
        )

    async def __call__(self, request: Request) -> Response:
        start = time.perf_counter()
        route = "unknown"
        try:
            route, handler, args = self._route(request.method, request.scope["path"])
            if route != "healthz":
                self._authorize(request)
            body = await handler(request, *args)
            status, payload = (200, body) if not isinstance(body, tuple) else body
        except ApiError as err:
            status, payload = err.status, err.body()
            if status in (400, 401, 413) or err.code in ("unknown_field", "stream_id"):
                self._refused.inc(tags={"code": err.code})
        except ClientDisconnect:
            status, payload = 400, ApiError(400, "disconnected", "client went away").body()
        except _ShardUnavailable as err:
            status, payload = 503, {"error": {"code": "unavailable", "message": str(err)}}
        except Exception:  # a bug, not the client's input: log it, answer JSON anyway
            logger.exception("unexpected error on %s %s", request.method, request.url.path)
            status = 500
            payload = {"error": {"code": "internal", "message": "internal error (logged)"}}
        self._latency.observe(time.perf_counter() - start, tags={"route": route})
        self._responses.inc(tags={"route": route, "status": str(status)})
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 405:
            headers = {"Allow": ", ".join(payload["error"].get("allow", []))}
        elif status == 503:
            headers = {"Retry-After": "1"}
        return JSONResponse(payload, status_code=status, headers=headers)

    # -- plumbing ------------------------------------------------------------------------
    def _route(self, method: str, path: str) -> tuple[str, Any, tuple]:
        parts = [p for p in path.split("/") if p]
        table: dict[tuple[str, ...], dict[str, tuple[str, Any]]] = {
            ("healthz",): {"GET": ("healthz", self._healthz)},
            ("v1", "model"): {"GET": ("model", self._model)},
            ("v1", "stats"): {"GET": ("stats", self._stats)},
            ("v1", "forecast"): {"POST": ("forecast", self._forecast)},
            ("v1", "rows"): {"POST": ("rows", self._rows)},
        }
        args: tuple = ()
        key = tuple(parts)
        if len(parts) == 3 and parts[:2] == ["v1", "streams"]:
            key, args = ("v1", "streams", "*"), (parts[2],)
            table[key] = {"GET": ("stream", self._stream), "DELETE": ("stream", self._drop)}
        elif len(parts) == 4 and parts[:2] == ["v1", "streams"] and parts[3] == "rows":
            key, args = ("v1", "streams", "*", "rows"), (parts[2],)
            table[key] = {"POST": ("stream_rows", self._stream_rows)}
        methods = table.get(key)
        if methods is None:
            raise ApiError(
                404,
                "not_found",
                f"no route {path}; routes: GET /healthz, GET /v1/model, GET /v1/stats, POST "
                "/v1/forecast, POST /v1/rows, POST /v1/streams/{id}/rows, GET|DELETE "
                "/v1/streams/{id}",
            )
        if method not in methods:
            raise ApiError(
                405,
                "method",
                f"{method} {path} is not allowed; use {list(methods)}",
                allow=list(methods),
            )
        route, handler = methods[method]
        return route, handler, args

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._token):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token (header 'Authorization: Bearer <token>')",
            )

    async def _json(self, request: Request) -> Any:
        limit = self.config.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise ApiError(
                413, "too_large", f"the body is {length} bytes; the limit is {limit}", limit=limit
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413, "too_large", f"the body exceeds the limit of {limit} bytes", limit=limit
                )
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    async def _call_shard(self, index: int, method: str, *args: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return await getattr(self.shards[index], method).remote(*args)
        except RayTaskError:  # the shard's own code failed: a bug, answered as a 500
            raise
        except Exception as err:  # the replica died mid-call, or Serve cannot reach it
            raise _ShardUnavailable(
                f"shard {index} is unavailable ({type(err).__name__}); retry shortly: a "
                "restarted shard continues from its last snapshot"
            ) from err

    # -- routes --------------------------------------------------------------------------
    async def _healthz(self, request: Request) -> dict:
        return {"status": "ok", "shards": len(self.shards)}

    async def _model(self, request: Request) -> dict:
        return {**self.model, "shards": len(self.shards), "api": "v1"}

    async def _stats(self, request: Request) -> dict:
        shards = await asyncio.gather(
            *(self._call_shard(i, "stats") for i in range(len(self.shards)))
        )
        return {
            "shards": shards,
            "streams": sum(s.get("streams", 0) for s in shards),
            "ingress": {"pid": os.getpid(), "rss_bytes": _rss_bytes()},
        }

    async def _stream(self, request: Request, stream: str) -> dict:
        check_stream_id(stream)
        index = shard_for(stream, len(self.shards))
        info = await self._call_shard(index, "stream_info", stream)
        if info is None:
            raise ApiError(
                404,
                "unknown_stream",
                f"stream {stream!r} has no rows on shard {index} (never sent, dropped, evicted, "
                "or lost with a shard that had no snapshot)",
                shard=index,
            )
        return info

    async def _drop(self, request: Request, stream: str) -> dict:
        check_stream_id(stream)
        index = shard_for(stream, len(self.shards))
        return {"stream": stream, "dropped": await self._call_shard(index, "drop", stream)}

    async def _stream_rows(self, request: Request, stream: str) -> dict:
        check_stream_id(stream)
        body = await self._json(request)
        quantiles, parameters = parse_output(expect_object(body, "the body"), self.spec)
        rows = parse_rows(body, self.spec)
        index = shard_for(stream, len(self.shards))
        answer = await self._call_shard(
            index,
            "rows",
            {"streams": {stream: rows}, "parameters": bool(quantiles) or parameters},
        )
        if stream in answer["rejected"]:
            raise _rejection(answer["rejected"][stream])
        return {
            "stream": stream,
            "forecasts": [
                forecast_json(f, self.spec, quantiles, parameters)
                for f in answer["forecasts"][stream]
            ],
        }

    async def _rows(self, request: Request) -> dict:
        body = expect_object(await self._json(request), "the body", OUTPUT_FIELDS | {"streams"})
        quantiles, parameters = parse_output(body, self.spec)
        streams = expect_object(body.get("streams"), "'streams'")
        if not streams:
            raise ApiError(422, "shape", "'streams' is empty; send {\"streams\": {id: rows}}")
        results: dict[str, dict] = {}
        per_shard: dict[int, dict[str, dict]] = {}
        for stream, rows in streams.items():
            try:
                check_stream_id(stream)
                parsed = parse_rows(rows, self.spec, what=f"stream {stream!r}")
            except ApiError as err:
                results[stream] = {"status": err.status, **err.body()}
                continue
            per_shard.setdefault(shard_for(stream, len(self.shards)), {})[stream] = parsed
        want = bool(quantiles) or parameters
        calls = [
            self._call_shard(index, "rows", {"streams": group, "parameters": want})
            for index, group in per_shard.items()
        ]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for (_index, group), answer in zip(per_shard.items(), answers, strict=True):
            if isinstance(answer, _ShardUnavailable):
                for stream in group:
                    results[stream] = {
                        "status": 503,
                        "error": {"code": "unavailable", "message": str(answer)},
                    }
                continue
            if isinstance(answer, BaseException):
                raise answer
            for stream, rejection in answer["rejected"].items():
                err = _rejection(rejection)
                results[stream] = {"status": err.status, **err.body()}
            for stream, forecasts in answer["forecasts"].items():
                results[stream] = {
                    "status": 200,
                    "forecasts": [
                        forecast_json(f, self.spec, quantiles, parameters) for f in forecasts
                    ],
                }
        failed = sum(1 for r in results.values() if r["status"] != 200)
        return {"streams": {s: results[s] for s in streams}, "failed": failed}

    async def _forecast(self, request: Request) -> dict:
        body = expect_object(await self._json(request), "the body", OUTPUT_FIELDS | {"windows"})
        quantiles, parameters = parse_output(body, self.spec)
        windows = body.get("windows")
        if not isinstance(windows, list) or not windows:
            raise ApiError(422, "shape", "'windows' must be a non-empty list of windows")
        icl = self.spec.input_chunk_length
        parsed = []
        for w, window in enumerate(windows):
            what = f"window {w}"
            if isinstance(window, list):  # a bare [rows, n_inputs] array
                window = {"values": window}
            rows = parse_rows(window, self.spec, what=what, min_rows=icl)
            check_finite(rows["values"], self.spec, what)
            timestamps = rows["timestamps"]
            parsed.append(
                {
                    "values": rows["values"][-icl:],
                    "timestamps": None if timestamps is None else timestamps[-icl:],
                }
            )
        want = bool(quantiles) or parameters
        n = len(self.shards)
        if len(parsed) >= 2 * n:  # many windows: every shard's model takes a share
            bounds = [len(parsed) * k // n for k in range(n + 1)]
            parts = [(k, bounds[k], bounds[k + 1]) for k in range(n)]
        else:
            parts = [(next(self._round_robin) % n, 0, len(parsed))]
        answers = await asyncio.gather(
            *(
                self._call_shard(k, "windows", {"windows": parsed[a:b], "parameters": want})
                for k, a, b in parts
            )
        )
        answer: dict[str, dict] = {"forecasts": {}, "rejected": {}}
        for (_, a, _b), part in zip(parts, answers, strict=True):
            for key in answer:
                answer[key].update({a + w: value for w, value in part[key].items()})
        if answer["rejected"]:
            w = min(answer["rejected"])
            rejection = answer["rejected"][w]
            raise ApiError(
                422,
                rejection["reason"],
                f"window {w}: {rejection['message']}",
                window=w,
                row=rejection["row"],
            )
        return {
            "forecasts": [
                forecast_json(answer["forecasts"][w], self.spec, quantiles, parameters)
                for w in range(len(parsed))
            ]
        }


class _ShardUnavailable(Exception):
    """A shard call failed for reasons other than the request (503)."""


def _rejection(rejection: dict) -> ApiError:
    if rejection.get("known") and rejection.get("row") == 0:
        return rejection_error(
            rejection["reason"],
            rejection["message"],
            rejection["row"],
            rejection.get("last_time") or "unknown",
        )
    return rejection_error(rejection["reason"], rejection["message"], rejection["row"], None)


def _read_manifest(config: ServeConfig) -> dict:
    from timesclip_export.bundle.format import read_manifest

    return read_manifest(config.bundle, trusted_key=config.trusted_key)


# ------------------------------------------------------------------------------ the app
def build_app(config: ServeConfig) -> Any:
    """The Serve application: the HTTP ingress and one single-replica deployment per shard."""
    values = asdict(config)
    gpus = {"num_gpus": config.num_gpus} if config.num_gpus else {}
    # Enough concurrency per replica for @serve.batch to fill its batches.
    ongoing = max(2 * config.max_batch_requests, 64)
    shards = [
        serve.deployment(
            Shard,
            name=f"Shard{i}",
            num_replicas=1,
            max_ongoing_requests=ongoing,
            ray_actor_options={"num_cpus": 0, **gpus},
            health_check_period_s=5,
        ).bind(values, i)
        for i in range(config.shards)
    ]
    ingress = serve.deployment(
        Ingress,
        name="Ingress",
        num_replicas=config.replicas,
        max_ongoing_requests=max(4 * ongoing, 1024),
        ray_actor_options={"num_cpus": 0},
    )
    return ingress.bind(values, *shards)


def shard_handles(config: ServeConfig) -> list[Any]:
    return [
        serve.get_deployment_handle(f"Shard{i}", app_name=APP_NAME) for i in range(config.shards)
    ]


def start(config: ServeConfig, quiet: bool = False) -> None:
    """Connect to (or start) Ray, start Serve's HTTP proxy on ``host:port`` and deploy. Paths
    are made absolute first: replicas may run in another folder (or on another node)."""
    import ray

    config.check()
    for name in ("bundle", "snapshot_dir", "trusted_key"):
        if getattr(config, name):
            setattr(config, name, str(Path(getattr(config, name)).expanduser().resolve()))
    manifest = _read_manifest(config)
    from timesclip_export.bundle.format import verify_files

    verify_files(config.bundle, manifest)  # here, not in a crash-looping replica
    check_snapshot_dir(config, manifest)
    if not config.address:
        _check_port_free(config.host, config.port)
    init: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    if config.address:
        ray.init(address=config.address, **init)
    else:
        ray.init(
            address="local",
            include_dashboard=False,
            _metrics_export_port=config.metrics_port,
            **init,
        )
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(
            build_app(config),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
            logging_config={"enable_access_log": config.access_log},
        )
    except BaseException:
        _teardown(config)
        raise


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ValueError(
                f"cannot listen on {host}:{port} ({err.strerror}); use --port"
            ) from err


def snapshot_all(config: ServeConfig, timeout_s: float = 120) -> list[str | None]:
    """Ask every shard to write its snapshot now (a no-op without ``--snapshot-dir``)."""
    responses = [handle.snapshot.remote() for handle in shard_handles(config)]
    return [r.result(timeout_s=timeout_s) for r in responses]


def stop(config: ServeConfig) -> None:
    """Snapshot the shards, remove the application, and stop a Ray this process started."""
    try:
        if config.snapshot_dir:
            snapshot_all(config)
    finally:
        _teardown(config)


def _teardown(config: ServeConfig) -> None:
    """Remove the application: on a cluster only ours (other Serve apps stay), on the local Ray
    this process started, Serve and Ray themselves."""
    import ray

    if config.address:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()


def run_server(config: ServeConfig) -> int:
    """``timesclip-darts serve``: serve until SIGINT or SIGTERM, then snapshot and stop."""
    stopping = threading.Event()
    start(config)
    # After ray.init, which installs its own handlers: stop cleanly (snapshots) on either.
    previous = {
        sig: signal.signal(sig, lambda *_: stopping.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        where = f"http://{config.host}:{config.port}"
        print(
            f"serving {config.bundle} at {where} (shards: {config.shards}, replicas: "
            f"{config.replicas}, device: {config.device}, auth: "
            f"{'bearer token' if config.token else 'none'}, snapshots: "
            f"{config.snapshot_dir or 'none'}); Ctrl-C stops",
            flush=True,
        )
        if config.metrics_port and not config.address:
            print(
                f"metrics: http://127.0.0.1:{config.metrics_port}/metrics (ray_timesclip_serve_*)",
                flush=True,
            )
        while not stopping.wait(0.5):
            pass
        print("stopping: writing snapshots" if config.snapshot_dir else "stopping", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop(config)
    print("stopped", file=sys.stderr, flush=True)
    return 0
