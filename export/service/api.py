"""The HTTP API of ``timesclip-darts serve`` without Ray: stream routing (rendezvous hashing),
request parsing and validation, and the JSON of forecasts. numpy and orjson only, so it is
unit-tested (and usable by clients) without Ray installed.

Every problem with a request is an :class:`ApiError`: an HTTP status (400 unreadable, 401 no or
wrong token, 404 unknown route or stream, 409 rows that do not follow what the server holds of
the stream (with its ``position``) or a stream busy with another request, 413 too large, 422
readable but wrong, 503 draining or unavailable) and a JSON body ``{"error": {"code", "message",
...}}``.

Numbers: every value must be a finite number within the model's bound after parsing (a
400-digit integer is a 422, not an overflow). Forecast values are float32 and written at float32
precision (``0.33333334``, not ``0.3333333432674408``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import orjson

API_VERSION = "v1"
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,199}")  # whole string: fullmatch
ROW_FIELDS = frozenset({"timestamps", "values", "from", "quantiles", "parameters", "horizon"})
MAX_POSITION = 2**53 - 1  # positions are JSON integers every client reads exactly
OUTPUT_FIELDS = frozenset({"quantiles", "parameters", "horizon"})
HORIZON_FORMATS = ("full", "compact")
# Integers longer than this are read as floats (then refused if not finite), never as Python
# ints of unbounded size: numpy cannot hold them and int() of 5,000 digits raises.
_MAX_INT_DIGITS = 20
_TIMESTAMP_RULE = {
    None: "ISO 8601 wall-clock times without a UTC offset, e.g. '2017-10-20T00:00:00' (the "
    "series has no time zone: 'Z' and offsets are refused, as are NaT, words such as 'now' "
    "and dates outside 1677-09-21..2262-04-11)",
    "range": "integers within ±(2**53 - 1) (the series has a range index)",
}
# A rejected row of a stream that already has rows, at the first new row, is about the stream's
# state, not the request: the client is behind (gap) or re-sends acknowledged rows.
_STATE_REASONS = {
    "gap": "stream_behind",
    "duplicate": "already_seen",
    "out_of_order": "already_seen",
}


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx; 500 for one stream the server failed
    on, 503 when busy, 504 past the time limit), a short ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


# ------------------------------------------------------------------------------ routing
def shard_weight(stream: str, shard: int) -> bytes:
    """Rendezvous weight of ``shard`` for ``stream``: blake2b, the same on every machine and
    Python process (``hash()`` is salted per process)."""
    key = f"{stream}\x00shard-{shard}".encode()
    return hashlib.blake2b(key, digest_size=8).digest()


def shard_for(stream: str, n_shards: int) -> int:
    """The shard that holds ``stream``: rendezvous (highest random weight) hashing, so going
    from ``n`` to ``n + 1`` shards moves only the ~1/(n+1) streams the new shard wins."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be positive, got {n_shards}")
    return max(range(n_shards), key=lambda shard: shard_weight(stream, shard))


def check_stream_id(stream: Any) -> str:
    if not isinstance(stream, str) or not STREAM_ID.fullmatch(stream):
        raise ApiError(
            422 if isinstance(stream, str) else 400,
            "stream_id",
            f"stream id {str(stream)[:64]!r} must be 1-200 characters of letters, digits and "
            "._:@~- starting with a letter or digit",
        )
    return stream


# ------------------------------------------------------------------------------ parsing
def parse_json(body: bytes) -> Any:
    """The request body as JSON: orjson, and for what it refuses the standard library, which
    names the line and column of a syntax error and reads ``NaN``/``Infinity`` literals and
    huge integers as floats so that the value checks can name their row."""
    if not body:
        raise ApiError(400, "empty_body", "the request has no body; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, "malformed_json", f"the body is not UTF-8 ({err})") from None
    try:
        return json.loads(text, parse_constant=float, parse_int=_parse_int)
    except json.JSONDecodeError as err:
        raise ApiError(
            400,
            "malformed_json",
            f"the body is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}",
        ) from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the body's JSON is nested too deeply") from None


def encode_json(payload: Any) -> bytes:
    """An answer as JSON bytes (orjson; numpy arrays as lists, float32 at float32 precision)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _parse_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= _MAX_INT_DIGITS else float(text)


def expect_object(value: Any, what: str, allowed: frozenset[str] | None = None) -> dict:
    if not isinstance(value, dict):
        raise ApiError(422, "shape", f"{what} must be a JSON object, got {_kind(value)}")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ApiError(
                422,
                "unknown_field",
                f"unknown field(s) {unknown} in {what}; allowed: {sorted(allowed)}",
                fields=unknown,
            )
    return value


class ModelSpec:
    """What the API needs to know of a bundle's manifest (no runtime, no torch)."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        model = manifest["model"]
        self.inputs: list[str] = list(model["inputs"])
        self.targets: list[str] = list(model["targets"])
        self.input_chunk_length: int = int(model["input_chunk_length"])
        self.output_chunk_length: int = int(model["output_chunk_length"])
        self.likelihood: dict = dict(model["likelihood"])
        self.time: dict = dict(manifest.get("time") or {})
        self.max_abs_value = float(model.get("max_abs_value", 1e18))
        self.manifest = manifest

    def describe(self) -> dict:
        """``GET /v1/model``: inputs, targets, horizon, frequency, backbone, likelihood."""
        model = self.manifest["model"]
        backbone = str(model.get("backbone", ""))
        pretrained = model.get("backbone_pretrained")
        if pretrained is None:  # older bundles: the backbone string says it
            pretrained = None if not backbone else "not pretrained" not in backbone.lower()
        likelihood = {
            "name": self.likelihood.get("name"),
            "parameters": self.likelihood.get("parameters"),
        }
        if "quantiles" in self.likelihood:
            likelihood["quantiles"] = self.likelihood["quantiles"]
        return {
            "inputs": self.inputs,
            "targets": self.targets,
            "past_covariates": list(model.get("past_covariates", [])),
            "input_chunk_length": self.input_chunk_length,
            "horizon": self.output_chunk_length,
            "output_chunk_shift": int(model.get("output_chunk_shift", 0)),
            "frequency": self.time.get("freq"),
            "time_index": self.time.get("index"),
            # Darts keeps wall-clock times without a zone: so do the timestamps sent here.
            "time_zone": None,
            "timestamps": _TIMESTAMP_RULE.get(self.time.get("index"), _TIMESTAMP_RULE[None]),
            "backbone": backbone,
            "pretrained": pretrained,
            "likelihood": likelihood,
        }


class Output(NamedTuple):
    """What a request asks for besides point forecasts: ``"quantiles": [0.1, 0.9]``,
    ``"parameters": true`` and ``"horizon": "compact"`` (start, frequency and periods instead
    of one timestamp per step)."""

    quantiles: list[float]
    parameters: bool
    compact: bool

    @property
    def needs_parameters(self) -> bool:
        return bool(self.quantiles) or self.parameters


def parse_output(body: Mapping[str, Any], spec: ModelSpec) -> Output:
    """The :class:`Output` options of a request body."""
    from timesclip_darts.likelihoods import QuantileError, check_quantiles, parse_quantiles

    parameters = body.get("parameters", False)
    if not isinstance(parameters, bool):
        raise ApiError(422, "parameters", f"'parameters' must be true or false, got {parameters!r}")
    horizon = body.get("horizon", "full")
    if horizon not in HORIZON_FORMATS:
        raise ApiError(
            422, "horizon", f"'horizon' must be one of {list(HORIZON_FORMATS)}, got {horizon!r}"
        )
    compact = horizon == "compact"
    if spec.likelihood.get("name") is None and parameters:
        raise ApiError(422, "parameters", "the model has no likelihood, so no parameters")
    raw = body.get("quantiles")
    if raw is None:
        return Output([], parameters, compact)
    if not isinstance(raw, list) or not all(_is_number(q) for q in raw):
        raise ApiError(422, "quantiles", "'quantiles' must be a list of numbers, e.g. [0.1, 0.9]")
    try:
        quantiles = parse_quantiles(raw)
        check_quantiles(spec.likelihood, quantiles)
    except QuantileError as err:
        raise ApiError(422, "quantiles", str(err)) from None
    return Output(quantiles, parameters, compact)


def parse_rows(
    body: Any,
    spec: ModelSpec,
    what: str = "the body",
    min_rows: int = 1,
    max_rows: int | None = None,
) -> dict:
    """A stream's rows, ``{"timestamps": [...], "values": {column: [...]}, "from": position}``
    (``values`` also as ``[rows, n_inputs]`` lists in the model's input order; ``from``
    optional) -> ``{"values": float64 [rows, N], "timestamps": list | None, "from": int |
    None}`` for :class:`StreamPool`; raises :class:`ApiError` (413 ``too_many_rows`` beyond
    ``max_rows``, before any value is read)."""
    body = expect_object(body, what, ROW_FIELDS)
    if "values" not in body:
        raise ApiError(422, "shape", f"{what} has no 'values'")
    values = body["values"]
    n = len(spec.inputs)
    if isinstance(values, dict):
        missing = [c for c in spec.inputs if c not in values]
        extra = sorted(set(values) - set(spec.inputs))
        if missing or extra:
            raise ApiError(
                422,
                "columns",
                f"{what}: the values' variates do not match the model's: missing {missing}, "
                f"unexpected {extra}; expected {spec.inputs}",
                missing=missing,
                unexpected=extra,
            )
        columns = [values[c] for c in spec.inputs]
        for name, column in zip(spec.inputs, columns, strict=True):
            if not isinstance(column, list):
                raise ApiError(
                    422, "shape", f"{what}: values['{name}'] must be a list, got {_kind(column)}"
                )
        _check_row_count(max(len(c) for c in columns), max_rows, what)
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            sizes = {name: len(c) for name, c in zip(spec.inputs, columns, strict=True)}
            raise ApiError(422, "shape", f"{what}: the variates have different lengths {sizes}")
        rows = [list(row) for row in zip(*columns, strict=True)]
    elif isinstance(values, list):
        rows = values
        _check_row_count(len(rows), max_rows, what)
        for r, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != n:
                raise ApiError(
                    422,
                    "shape",
                    f"{what}: row {r} must be a list of {n} numbers (variates {spec.inputs}), "
                    f"got {_kind(row) if not isinstance(row, list) else f'{len(row)} items'}",
                    row=r,
                )
    else:
        raise ApiError(
            422, "shape", f"{what}: 'values' must be an object of columns or a list of rows"
        )
    if len(rows) < max(1, min_rows):
        raise ApiError(
            422, "shape", f"{what}: got {len(rows)} row(s), need at least {max(1, min_rows)}"
        )
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if not _is_number(value):
                code = "nan" if value is None else "dtype"
                detail = "a missing value (null)" if value is None else f"{_kind(value)}"
                raise ApiError(
                    422,
                    code,
                    f"{what}: row {r}, variate '{spec.inputs[c]}' is {detail}; values must be "
                    "finite numbers (fill gaps before sending)",
                    row=r,
                    variate=spec.inputs[c],
                )
    try:
        array = np.array(rows, dtype=np.float64).reshape(len(rows), n)
    except OverflowError:  # a Python int beyond float64 (parse_json never makes one)
        array = np.array(
            [[v if abs(v) < 1e300 else math.inf for v in row] for row in rows], np.float64
        ).reshape(len(rows), n)
    check_finite(array, spec, what)
    timestamps = body.get("timestamps")
    if timestamps is not None:
        timestamps = _parse_timestamps(timestamps, len(rows), spec, what)
    start = body.get("from")
    if start is not None and (
        not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= MAX_POSITION
    ):
        raise ApiError(
            422,
            "from",
            f"{what}: 'from' must be an integer from 0 to 2**53 - 1 (the stream's position: "
            f"the rows the server holds of it), got {start!r}",
        )
    return {"values": array, "timestamps": timestamps, "from": start}


def _check_row_count(rows: int, limit: int | None, what: str) -> None:
    if limit is not None and rows > limit:
        raise ApiError(
            413,
            "too_many_rows",
            f"{what}: {rows} rows; the limit is {limit} rows per stream per request "
            "(--max-rows-per-stream): send them in several requests",
            limit=limit,
        )


def check_finite(array: np.ndarray, spec: ModelSpec, what: str) -> None:
    """NaN, inf and values beyond the model's bound, named by row and variate (the runtime's
    own check, :func:`timesclip_darts.checks.first_bad_value`, so both name the same value)."""
    from timesclip_darts.checks import first_bad_value

    bad = first_bad_value(array, spec.max_abs_value)
    if bad is not None:
        row, col = bad.index
        raise ApiError(
            422,
            "too_large" if bad.finite else "nan",
            f"{what}: row {row}, variate '{spec.inputs[col]}' is {bad.value!r}; values must be "
            f"finite and within ±{spec.max_abs_value:.0e}",
            row=row,
            variate=spec.inputs[col],
        )


def _parse_timestamps(raw: Any, rows: int, spec: ModelSpec, what: str) -> list:
    if not isinstance(raw, list):
        raise ApiError(422, "timestamps", f"{what}: 'timestamps' must be a list")
    if len(raw) != rows:
        raise ApiError(422, "timestamps", f"{what}: got {len(raw)} timestamps for {rows} rows")
    if spec.time.get("index") == "range":
        ok = all(isinstance(t, int) and not isinstance(t, bool) for t in raw)
        kind = "integers (the series has a range index)"
    else:
        ok = all(isinstance(t, str) and 0 < len(t) <= 64 for t in raw)
        kind = "ISO 8601 strings, e.g. '2017-10-20T00:00:00'"
    if not ok:
        raise ApiError(422, "timestamps", f"{what}: timestamps must be {kind}")
    return raw


def rejection_error(
    reason: str,
    message: str,
    row: int | None,
    last_time: Any,
    position: int | None = None,
    sent_from: int | None = None,
) -> ApiError:
    """A :class:`StreamRejection` as an HTTP error: 409 when the rows do not follow what the
    server holds of the stream (``"from"`` is not its ``position``, or the first new row does
    not follow its last timestamp: re-send from ``position`` / after ``last_time``) or another
    request of the stream is in progress, 500 when the server failed on the stream, 503 while
    the server drains before stopping, 422 otherwise."""
    if reason == "busy":
        return ApiError(409, "stream_busy", message, reason=reason)
    if reason == "internal":
        return ApiError(500, "internal", message, reason=reason)
    if reason == "draining":
        return ApiError(503, "draining", message, reason=reason)
    if reason == "position" and position is not None:
        code = "stream_behind" if sent_from is None or sent_from > position else "already_seen"
        return ApiError(409, code, message, reason=reason, position=position, last_time=last_time)
    if row == 0 and reason in _STATE_REASONS and last_time is not None:
        return ApiError(
            409,
            _STATE_REASONS[reason],
            f"{message}; the stream's last acknowledged row is at {last_time}: send the rows "
            "that follow it",
            reason=reason,
            last_time=last_time,
            position=position,
        )
    return ApiError(422, reason, message, reason=reason, row=row)


# ------------------------------------------------------------------------------ answers
class Forecast(NamedTuple):
    """A :class:`StreamForecast` without the stream, as shards send it to the ingress (a plain
    tuple, so unpickling it imports nothing of the runtime)."""

    time: str | int | None
    horizon: list | None
    values: np.ndarray
    parameters: np.ndarray | None

    @classmethod
    def of(cls, forecast: Any) -> Forecast:
        return cls(forecast.time, forecast.horizon, forecast.values, forecast.parameters)


def forecast_json(forecast: Any, spec: ModelSpec, output: Output) -> dict:
    """One forecast (:class:`Forecast` or :class:`StreamForecast`) for :func:`encode_json`:
    time, horizon and a float32 array per target; with quantiles ``{"quantiles": {"0.1":
    {target: [...]}}}``, with parameters ``{"parameters": {name: {target: [...]}}}``. A compact
    horizon is ``{"start", "freq", "periods"}`` (``freq``: the pandas frequency, or the step of
    a range index)."""
    from timesclip_darts.likelihoods import point_and_quantiles

    values = np.asarray(forecast.values)
    horizon = forecast.horizon
    if horizon is not None:
        horizon = [_plain(t) for t in horizon]
        if output.compact:
            freq = spec.time.get("freq") or spec.time.get("step")
            horizon = {"start": horizon[0], "freq": freq, "periods": len(horizon)}
    out: dict[str, Any] = {
        "time": _plain(forecast.time),
        "horizon": horizon,
        "values": {t: _column(values[:, j]) for j, t in enumerate(spec.targets)},
    }
    if output.quantiles:
        _, qs = point_and_quantiles(
            np.asarray(forecast.parameters), spec.likelihood, output.quantiles
        )
        out["quantiles"] = {
            repr(float(q)): {t: _column(qs[:, j, k]) for j, t in enumerate(spec.targets)}
            for k, q in enumerate(output.quantiles)
        }
    if output.parameters:
        params = np.asarray(forecast.parameters)
        out["parameters"] = {
            name: {t: _column(params[:, j, k]) for j, t in enumerate(spec.targets)}
            for k, name in enumerate(spec.likelihood["parameters"])
        }
    return out


def _column(values: np.ndarray) -> np.ndarray:
    """A forecast column as orjson writes it: contiguous float32."""
    return np.ascontiguousarray(values, dtype=np.float32)


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.datetime64):
        return str(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)
