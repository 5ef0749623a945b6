"""The HTTP side of ``timesclip-darts serve``: a FastAPI app behind Ray Serve's ingress
(``@serve.ingress``), with auth, request limits, validation (:mod:`timesclip_export.service.api`)
and the fan-out of rows to the shards that own their streams. No model here.

Every route is declared on its handler; ``GET /openapi.json`` (and ``/docs``) describes them.
Errors keep the API's format ``{"error": {"code", "message", ...}}`` through exception handlers,
Starlette's own 404 and 405 included. Large bodies are parsed, and large answers encoded, on a
worker thread (orjson), so one large request never holds the event loop."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import inspect
import itertools
import logging
import os
import time
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.util import metrics
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from timesclip_export.service.api import (
    API_VERSION,
    HORIZON_FORMATS,
    OUTPUT_FIELDS,
    ApiError,
    ModelSpec,
    Output,
    check_stream_id,
    encode_json,
    expect_object,
    forecast_json,
    parse_json,
    parse_output,
    parse_rows,
    rejection_error,
    shard_for,
)
from timesclip_export.service.config import LATENCY_BOUNDS, ServeConfig, read_manifest
from timesclip_export.service.shard import rss_bytes

logger = logging.getLogger("timesclip_export.service.ingress")


# Bodies above this many bytes are parsed, and answers of this many forecasts encoded, on a
# worker thread, so that one large request never holds the replica's event loop.
_OFF_LOOP_BYTES = 64 * 1024
_OFF_LOOP_FORECASTS = 16
# Bodies being read or parsed at once, per ingress replica, in multiples of --max-request-bytes:
# beyond it a request is answered 503 (retry) instead of growing the replica's memory.
_INFLIGHT_BODIES = 16
ROUTES = (
    "GET /healthz, GET /v1/model, GET /v1/stats, POST /v1/forecast, POST /v1/rows, "
    "POST /v1/streams/{id}/rows, GET|DELETE /v1/streams/{id}; OpenAPI: GET /openapi.json"
)

# Request bodies for the OpenAPI description (the handlers read raw bytes: parse and validate
# in api.py, so that every refusal keeps the API's error format).
_OUTPUT = {
    "quantiles": {"type": "array", "items": {"type": "number"}, "example": [0.1, 0.9]},
    "parameters": {"type": "boolean", "description": "the likelihood's parameters per target"},
    "horizon": {"enum": list(HORIZON_FORMATS), "description": "compact: start, freq, periods"},
}
_ROWS = {
    "type": "object",
    "required": ["values"],
    "properties": {
        "timestamps": {
            "type": "array",
            "items": {"type": ["string", "integer"]},
            "description": "ISO 8601 without an offset, or integers for a range index",
        },
        "values": {
            "description": "{variate: [numbers]} or rows of numbers in the model's input order",
            "oneOf": [
                {"type": "object", "additionalProperties": {"type": "array"}},
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            ],
        },
    },
}


def _body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_STREAM_BODY = _body({**_ROWS, "properties": {**_ROWS["properties"], **_OUTPUT}})
_ROWS_BODY = _body(
    {
        "type": "object",
        "required": ["streams"],
        "properties": {
            "streams": {"type": "object", "additionalProperties": _ROWS},
            **_OUTPUT,
        },
    }
)
_WINDOWS_BODY = _body(
    {
        "type": "object",
        "required": ["windows"],
        "properties": {"windows": {"type": "array", "items": _ROWS}, **_OUTPUT},
    }
)

app = FastAPI(
    title="timesclip-darts serve",
    version=API_VERSION,
    description=(
        "Forecasts of a TimesCLIP bundle for many live streams (one forecast per stream after "
        'every new row) and for stateless windows. Every error is `{"error": {"code", '
        '"message", ...}}`. Requests need `Authorization: Bearer <token>` when the server '
        "has a token (all but /healthz); the bounds of one request are in GET /v1/model's "
        "`limits`."
    ),
    redirect_slashes=False,
    redoc_url=None,
)


class _ShardUnavailable(Exception):
    """A shard call failed for reasons other than the request (503)."""


def _json_response(payload: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(encode_json(payload), status, headers, media_type="application/json")


def _error_headers(status: int, body: dict) -> dict | None:
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    if status == 405:
        return {"Allow": ", ".join(body["error"].get("allow", []))}
    if status == 503:
        return {"Retry-After": "1"}
    return None


@app.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> Response:
    body = err.body()
    return _json_response(body, err.status, _error_headers(err.status, body))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method), in the API's error format."""
    path = request.url.path
    if err.status_code == 405:
        allow = [m.strip() for m in (err.headers or {}).get("Allow", "").split(",") if m.strip()]
        api = ApiError(
            405, "method", f"{request.method} {path} is not allowed; use {allow}", allow=allow
        )
    elif err.status_code == 404:
        api = ApiError(404, "not_found", f"no route {path}; routes: {ROUTES}")
    else:
        api = ApiError(err.status_code, "http", str(err.detail))
    return await _api_error(request, api)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> Response:
    return await _api_error(request, ApiError(422, "shape", f"invalid request: {err.errors()}"))


@app.exception_handler(_ShardUnavailable)
async def _unavailable(request: Request, err: _ShardUnavailable) -> Response:
    return await _api_error(request, ApiError(503, "unavailable", str(err)))


@app.exception_handler(ClientDisconnect)
async def _disconnected(request: Request, err: ClientDisconnect) -> Response:
    return await _api_error(request, ApiError(400, "disconnected", "client went away"))


@app.exception_handler(Exception)
async def _internal(request: Request, err: Exception) -> Response:
    """A bug, not the client's input: logged, answered in the API's format."""
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=err)
    return _json_response(
        {"error": {"code": "internal", "message": "internal error (logged)"}}, 500
    )


def _route(name: str, public: bool = False) -> Any:
    """A route handler's common part: the bearer token (unless ``public``), the request time
    limit (``--request-timeout``, a 504), and Ray metrics of its latency and status."""

    def wrap(handler: Any) -> Any:
        @functools.wraps(handler)
        async def route(self: Ingress, request: Request, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            status = 500
            try:
                if not public:
                    self._authorize(request)
                if b"%2f" in request.scope.get("raw_path", b"").lower():  # routed as a '/'
                    raise ApiError(422, "stream_id", "stream ids cannot hold '/' (%2F in the path)")
                try:
                    async with asyncio.timeout(self.config.request_timeout_s):
                        response = await handler(self, request, *args, **kwargs)
                except TimeoutError:
                    raise ApiError(
                        504,
                        "timeout",
                        f"the request took longer than {self.config.request_timeout_s} s "
                        "(--request-timeout) and was cancelled; a stream's rows are stored "
                        "whole or not at all: GET /v1/streams/{id} gives its last row; send "
                        "smaller requests",
                        limit=self.config.request_timeout_s,
                    ) from None
                status = response.status_code
                return response
            except ApiError as err:
                status = err.status
                if 400 <= status < 500:
                    self._refused.inc(tags={"code": err.code})
                raise
            except _ShardUnavailable:
                status = 503
                raise
            except ClientDisconnect:
                status = 400
                raise
            finally:
                self._latency.observe(time.perf_counter() - start, tags={"route": name})
                self._responses.inc(tags={"route": name, "status": str(status)})

        # FastAPI reads the parameters from this signature; evaluated here, because the class
        # travels to the replicas pickled with only the globals its code uses.
        route.__signature__ = inspect.signature(handler, eval_str=True)
        return route

    return wrap


def _rejection(rejection: dict) -> ApiError:
    last_time = None
    if rejection.get("known") and rejection.get("row") == 0:
        last_time = rejection.get("last_time") or "unknown"
    return rejection_error(
        rejection["reason"],
        rejection["message"],
        rejection["row"],
        last_time,
        rejection.get("position"),
        rejection.get("from"),
    )


# serve.ingress pickles the class now: everything it uses must be defined above it.
@serve.ingress(app)
class Ingress:
    """HTTP routes (FastAPI), auth, limits and validation; fans rows out to the owning shards.
    The route table and request bodies are described by ``GET /openapi.json``."""

    def __init__(self, config: dict, *shards: Any) -> None:
        self.config = ServeConfig(**config)
        self.spec = ModelSpec(read_manifest(self.config))
        self.model = self.spec.describe()
        self._round_robin = itertools.count()
        self.shards = list(shards)
        digest = self.config.token_sha256
        self._token_sha256 = bytes.fromhex(digest) if digest else None
        self._inflight = 0  # body bytes being read or parsed
        self._inflight_limit = _INFLIGHT_BODIES * self.config.max_request_bytes
        self._latency = metrics.Histogram(
            "timesclip_serve_request_seconds",
            "seconds per HTTP request, by route",
            boundaries=LATENCY_BOUNDS,
            tag_keys=("route",),
        )
        self._responses = metrics.Counter(
            "timesclip_serve_responses_total",
            "HTTP responses by route and status",
            tag_keys=("route", "status"),
        )
        self._refused = metrics.Counter(
            "timesclip_serve_refused_requests_total",
            "requests answered with a 4xx, by error code",
            tag_keys=("code",),
        )

    # -- routes --------------------------------------------------------------------------
    @app.get("/healthz", summary="Liveness (no token needed)")
    @_route("healthz", public=True)
    async def healthz(self, request: Request) -> Response:
        return _json_response({"status": "ok", "shards": len(self.shards)})

    @app.get("/v1/model", summary="The bundle: inputs, targets, horizon, frequency, limits")
    @_route("model")
    async def describe_model(self, request: Request) -> Response:
        return _json_response(
            {**self.model, "shards": len(self.shards), "api": "v1", "limits": self.config.limits()}
        )

    @app.get("/v1/stats", summary="Counters of every shard and the ingress")
    @_route("stats")
    async def stats(self, request: Request) -> Response:
        shards = await asyncio.gather(
            *(self._call_shard(i, "stats") for i in range(len(self.shards)))
        )
        return _json_response(
            {
                "shards": shards,
                "streams": sum(s.get("streams", 0) for s in shards),
                "ingress": {"pid": os.getpid(), "rss_bytes": rss_bytes()},
            }
        )

    @app.get("/v1/streams/{stream}", summary="A stream's shard, rows and last timestamp")
    @_route("stream")
    async def stream_info(self, request: Request, stream: str) -> Response:
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
        return _json_response(info)

    @app.delete("/v1/streams/{stream}", summary="Forget a stream")
    @_route("stream")
    async def drop_stream(self, request: Request, stream: str) -> Response:
        check_stream_id(stream)
        index = shard_for(stream, len(self.shards))
        dropped = await self._call_shard(index, "drop", stream)
        if dropped is None:
            raise ApiError(503, "draining", "the server is stopping; retry after a restart")
        return _json_response({"stream": stream, "dropped": dropped})

    @app.post(
        "/v1/streams/{stream}/rows",
        summary="New rows of one stream; a forecast after every row that completes a window",
        openapi_extra=_STREAM_BODY,
    )
    @_route("stream_rows")
    async def stream_rows(self, request: Request, stream: str) -> Response:
        check_stream_id(stream)
        output, rows = await self._read(request, self._parse_stream_rows)
        index = shard_for(stream, len(self.shards))
        answer = await self._send_rows(index, {stream: rows}, output.needs_parameters)
        if stream in answer["unavailable"]:
            raise _ShardUnavailable(answer["unavailable"][stream])
        if stream in answer["rejected"]:
            raise _rejection(answer["rejected"][stream])
        forecasts = answer["forecasts"][stream]
        return await self._answer(
            lambda: {
                "stream": stream,
                "position": answer["positions"][stream],
                "forecasts": [forecast_json(f, self.spec, output) for f in forecasts],
            },
            len(forecasts),
        )

    @app.post(
        "/v1/rows",
        summary="New rows of many streams; an answer per stream",
        openapi_extra=_ROWS_BODY,
    )
    @_route("rows")
    async def rows(self, request: Request) -> Response:
        output, parsed, results, order = await self._read(request, self._parse_many_rows)
        per_shard: dict[int, dict[str, dict]] = {}
        for stream, rows in parsed.items():
            per_shard.setdefault(shard_for(stream, len(self.shards)), {})[stream] = rows
        answers = await asyncio.gather(
            *(
                self._send_rows(index, group, output.needs_parameters)
                for index, group in per_shard.items()
            )
        )
        n = 0
        for answer in answers:
            for stream, message in answer["unavailable"].items():
                results[stream] = {
                    "status": 503,
                    "error": {"code": "unavailable", "message": message},
                }
            for stream, rejection in answer["rejected"].items():
                err = _rejection(rejection)
                results[stream] = {"status": err.status, **err.body()}
            for stream, forecasts in answer["forecasts"].items():
                position = answer["positions"][stream]
                results[stream] = {"status": 200, "position": position, "forecasts": forecasts}
                n += len(forecasts)

        def payload() -> dict:
            for result in results.values():
                if result["status"] == 200:
                    result["forecasts"] = [
                        forecast_json(f, self.spec, output) for f in result["forecasts"]
                    ]
            failed = sum(1 for r in results.values() if r["status"] != 200)
            return {"streams": {s: results[s] for s in order}, "failed": failed}

        return await self._answer(payload, n)

    @app.post(
        "/v1/forecast", summary="Stateless forecasts of whole windows", openapi_extra=_WINDOWS_BODY
    )
    @_route("forecast")
    async def forecast(self, request: Request) -> Response:
        output, windows = await self._read(request, self._parse_windows)
        size = self.config.batch_size
        parts = [windows[a : a + size] for a in range(0, len(windows), size)]
        first = next(self._round_robin)
        answers = await asyncio.gather(
            *(
                self._call_shard(
                    (first + k) % len(self.shards),
                    "windows",
                    {"windows": part, "parameters": output.needs_parameters},
                )
                for k, part in enumerate(parts)
            )
        )
        forecasts, rejected = {}, {}
        for k, part in enumerate(answers):
            forecasts.update({k * size + w: f for w, f in part["forecasts"].items()})
            rejected.update({k * size + w: r for w, r in part["rejected"].items()})
        if rejected:
            w = min(rejected)
            rejection = rejected[w]
            if rejection["reason"] == "internal":
                raise RuntimeError(f"window {w}: {rejection['message']}")
            raise ApiError(
                422,
                rejection["reason"],
                f"window {w}: {rejection['message']}",
                window=w,
                row=rejection["row"],
            )
        return await self._answer(
            lambda: {
                "forecasts": [
                    forecast_json(forecasts[w], self.spec, output) for w in range(len(windows))
                ]
            },
            len(windows),
        )

    # -- parsing (on a worker thread for large bodies) -------------------------------------
    def _parse_stream_rows(self, body: bytes) -> tuple[Output, dict]:
        parsed = expect_object(parse_json(body), "the body")
        output = parse_output(parsed, self.spec)
        return output, parse_rows(parsed, self.spec, max_rows=self.config.max_rows_per_stream)

    def _parse_many_rows(self, body: bytes) -> tuple[Output, dict, dict, list]:
        """``{"streams": {id: rows}}``: the streams' parsed rows, the per-stream refusals and
        the streams in the request's order."""
        parsed = expect_object(parse_json(body), "the body", OUTPUT_FIELDS | {"streams"})
        output = parse_output(parsed, self.spec)
        streams = expect_object(parsed.get("streams"), "'streams'")
        if not streams:
            raise ApiError(422, "shape", "'streams' is empty; send {\"streams\": {id: rows}}")
        self._check_count(len(streams), "streams")
        rows, results = {}, {}
        for stream, body_rows in streams.items():
            try:
                check_stream_id(stream)
                rows[stream] = parse_rows(
                    body_rows,
                    self.spec,
                    what=f"stream {stream!r}",
                    max_rows=self.config.max_rows_per_stream,
                )
            except ApiError as err:
                results[stream] = {"status": err.status, **err.body()}
        return output, rows, results, list(streams)

    def _parse_windows(self, body: bytes) -> tuple[Output, list[dict]]:
        parsed = expect_object(parse_json(body), "the body", OUTPUT_FIELDS | {"windows"})
        output = parse_output(parsed, self.spec)
        windows = parsed.get("windows")
        if not isinstance(windows, list) or not windows:
            raise ApiError(422, "shape", "'windows' must be a non-empty list of windows")
        self._check_count(len(windows), "windows")
        icl = self.spec.input_chunk_length
        out = []
        for w, window in enumerate(windows):
            if isinstance(window, list):  # a bare [rows, n_inputs] array
                window = {"values": window}
            rows = parse_rows(
                window,
                self.spec,
                what=f"window {w}",
                min_rows=icl,
                max_rows=max(icl, self.config.max_rows_per_stream),
            )
            if rows["from"] is not None:
                raise ApiError(
                    422, "unknown_field", f"window {w}: a stateless window has no 'from'"
                )
            timestamps = rows["timestamps"]
            out.append(
                {
                    "values": rows["values"][-icl:],
                    "timestamps": None if timestamps is None else timestamps[-icl:],
                }
            )
        return output, out

    # -- plumbing ------------------------------------------------------------------------
    def _check_count(self, count: int, what: str) -> None:
        """413 ``too_many_<what>`` for more streams or windows than one request may hold."""
        limit = self.config.max_streams_per_request
        if count > limit:
            raise ApiError(
                413,
                f"too_many_{what}",
                f"{count} {what} in one request; the limit is {limit} "
                "(--max-streams-per-request): send them in several requests",
                limit=limit,
            )

    def _authorize(self, request: Request) -> None:
        """The request's bearer token, by its SHA-256 (the replica holds only the digest),
        compared in constant time."""
        if self._token_sha256 is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        presented = hashlib.sha256(token.encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented, self._token_sha256):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token (header 'Authorization: Bearer <token>')",
            )

    async def _read(self, request: Request, parse: Any) -> Any:
        """The body, at most ``--max-request-bytes``, given to ``parse`` (on a worker thread
        when large); 503 while too many bodies are being read at once."""
        limit = self.config.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise ApiError(
                413, "too_large", f"the body is {length} bytes; the limit is {limit}", limit=limit
            )
        reserved = int(length) if length is not None else limit
        if self._inflight + reserved > self._inflight_limit:
            raise ApiError(
                503, "busy", "too many large requests at once on this replica; retry shortly"
            )
        self._inflight += reserved
        try:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        "too_large",
                        f"the body exceeds the limit of {limit} bytes",
                        limit=limit,
                    )
                chunks.append(chunk)
            body = b"".join(chunks)
            if size > _OFF_LOOP_BYTES:
                return await asyncio.to_thread(parse, body)
            return parse(body)
        finally:
            self._inflight -= reserved

    async def _answer(self, payload: Any, forecasts: int) -> Response:
        """``payload()`` as JSON, built and encoded on a worker thread for many forecasts."""
        if forecasts >= _OFF_LOOP_FORECASTS:
            body = await asyncio.to_thread(lambda: encode_json(payload()))
        else:
            body = encode_json(payload())
        return Response(body, media_type="application/json")

    async def _send_rows(self, index: int, streams: dict[str, dict], parameters: bool) -> dict:
        """Streams' rows to their shard: streams of more than ``--batch-size`` rows one by
        one to ``rows_large``, the others in parts of at most ``--batch-size`` rows to the
        batched ``rows``. The answers merged, with ``unavailable``: streams whose part did not
        reach the shard (503) and ``rejected`` ones whose shard failed (500, alone)."""
        size = self.config.batch_size
        calls: list[tuple[str, dict]] = []
        part: dict[str, dict] = {}
        rows_in_part = 0
        for stream, rows in streams.items():
            n = len(rows["values"])
            if n > size:
                calls.append(("rows_large", {stream: rows}))
                continue
            if rows_in_part + n > size:
                calls.append(("rows", part))
                part, rows_in_part = {}, 0
            part[stream] = rows
            rows_in_part += n
        if part:
            calls.append(("rows", part))
        answers = await asyncio.gather(
            *(
                self._call_shard(index, method, {"streams": group, "parameters": parameters})
                for method, group in calls
            ),
            return_exceptions=True,
        )
        merged: dict[str, dict] = {
            "forecasts": {},
            "positions": {},
            "rejected": {},
            "unavailable": {},
        }
        for (_, group), answer in zip(calls, answers, strict=True):
            if isinstance(answer, _ShardUnavailable):
                merged["unavailable"].update({stream: str(answer) for stream in group})
            elif isinstance(answer, BaseException):
                if not isinstance(answer, Exception):  # cancelled: the request is going away
                    raise answer
                logger.error("shard %d failed on %d stream(s)", index, len(group), exc_info=answer)
                merged["rejected"].update(
                    {
                        stream: {
                            "reason": "internal",
                            "message": f"stream {stream!r}: the "
                            "server failed on this stream's rows (logged)",
                            "row": None,
                        }
                        for stream in group
                    }
                )
            else:
                merged["forecasts"].update(answer["forecasts"])
                merged["positions"].update(answer["positions"])
                merged["rejected"].update(answer["rejected"])
        return merged

    async def _call_shard(self, index: int, method: str, *args: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return await getattr(self.shards[index], method).remote(*args)
        except RayTaskError:  # the shard's own code failed: a bug, answered as a 500
            raise
        except (
            Exception
        ) as err:  # the replica died mid-call, Serve cannot reach it, or its queue is full
            raise _ShardUnavailable(
                f"shard {index} is unavailable ({type(err).__name__}); retry shortly: a "
                "restarted shard continues from its last snapshot"
            ) from err
