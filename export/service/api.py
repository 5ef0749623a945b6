"""The HTTP API of ``timesclip-darts serve`` without Ray: stream routing (rendezvous hashing),
request parsing and validation, and the JSON shape of forecasts. Standard library and numpy
only, so it is unit-tested (and usable by clients) without Ray installed.

Every problem with a request is an :class:`ApiError`: an HTTP status (400 unreadable, 401 no or
wrong token, 404 unknown route or stream, 409 a row that does not follow the stream's last one,
413 too large, 422 readable but wrong) and a JSON body ``{"error": {"code", "message", ...}}``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

API_VERSION = "v1"
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@~-]{0,199}$")
ROW_FIELDS = frozenset({"timestamps", "values", "quantiles", "parameters"})
OUTPUT_FIELDS = frozenset({"quantiles", "parameters"})
# A rejected row of a stream that already has rows, at the first new row, is about the stream's
# state, not the request: the client is behind (gap) or re-sends acknowledged rows.
_STATE_REASONS = {
    "gap": "stream_behind",
    "duplicate": "already_seen",
    "out_of_order": "already_seen",
}


class ApiError(Exception):
    """A request the server refuses: ``status`` (4xx), a short ``code`` and a message."""

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
    if not isinstance(stream, str) or not STREAM_ID.match(stream):
        raise ApiError(
            422 if isinstance(stream, str) else 400,
            "stream_id",
            f"stream id {str(stream)[:64]!r} must be 1-200 characters of letters, digits and "
            "._:@~- starting with a letter or digit",
        )
    return stream


# ------------------------------------------------------------------------------ parsing
def parse_json(body: bytes) -> Any:
    """The request body as JSON (``NaN``/``Infinity`` literals read as floats so the value
    checks can name their row)."""
    if not body:
        raise ApiError(400, "empty_body", "the request has no body; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, "malformed_json", f"the body is not UTF-8 ({err})") from None
    try:
        return json.loads(text, parse_constant=float)
    except json.JSONDecodeError as err:
        raise ApiError(
            400,
            "malformed_json",
            f"the body is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}",
        ) from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the body's JSON is nested too deeply") from None


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
            "backbone": backbone,
            "pretrained": pretrained,
            "likelihood": likelihood,
        }


def parse_output(body: Mapping[str, Any], spec: ModelSpec) -> tuple[list[float], bool]:
    """``"quantiles": [0.1, 0.9]`` and ``"parameters": true`` of a request."""
    from timesclip_darts.likelihoods import QuantileError, check_quantiles, parse_quantiles

    parameters = body.get("parameters", False)
    if not isinstance(parameters, bool):
        raise ApiError(422, "parameters", f"'parameters' must be true or false, got {parameters!r}")
    raw = body.get("quantiles")
    if raw is None:
        return [], parameters
    if not isinstance(raw, list) or not all(_is_number(q) for q in raw):
        raise ApiError(422, "quantiles", "'quantiles' must be a list of numbers, e.g. [0.1, 0.9]")
    try:
        quantiles = parse_quantiles(raw)
        check_quantiles(spec.likelihood, quantiles)
    except QuantileError as err:
        raise ApiError(422, "quantiles", str(err)) from None
    if spec.likelihood.get("name") is None and parameters:
        raise ApiError(422, "parameters", "the model has no likelihood, so no parameters")
    return quantiles, parameters


def parse_rows(body: Any, spec: ModelSpec, what: str = "the body", min_rows: int = 1) -> dict:
    """A stream's rows, ``{"timestamps": [...], "values": {column: [...]}}`` (or ``values`` as
    ``[rows, n_inputs]`` lists in the model's input order) -> ``{"values": float64 [rows, N],
    "timestamps": list | None}`` for :class:`StreamPool`; raises :class:`ApiError`."""
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
        lengths = {len(c) for c in columns}
        if len(lengths) != 1:
            sizes = {name: len(c) for name, c in zip(spec.inputs, columns, strict=True)}
            raise ApiError(422, "shape", f"{what}: the variates have different lengths {sizes}")
        rows = [list(row) for row in zip(*columns, strict=True)]
    elif isinstance(values, list):
        rows = values
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
    array = np.array(rows, dtype=np.float64).reshape(len(rows), n)
    timestamps = body.get("timestamps")
    if timestamps is not None:
        timestamps = _parse_timestamps(timestamps, len(rows), spec, what)
    return {"values": array, "timestamps": timestamps}


def check_finite(array: np.ndarray, spec: ModelSpec, what: str) -> None:
    """NaN, inf and values beyond the model's bound, named by row and variate."""
    bad = ~np.isfinite(array) | (np.abs(np.nan_to_num(array, nan=0.0)) > spec.max_abs_value)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = float(array[row, col])
        code = "too_large" if math.isfinite(value) else "nan"
        raise ApiError(
            422,
            code,
            f"{what}: row {row}, variate '{spec.inputs[col]}' is {value!r}; values must be "
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


def rejection_error(reason: str, message: str, row: int | None, last_time: Any) -> ApiError:
    """A :class:`StreamRejection` as an HTTP error: 409 when the first new row does not follow
    the stream's last acknowledged one (re-send from ``last_time``), 422 otherwise."""
    if row == 0 and reason in _STATE_REASONS and last_time is not None:
        return ApiError(
            409,
            _STATE_REASONS[reason],
            f"{message}; the stream's last acknowledged row is at {last_time}: send the rows "
            "that follow it",
            reason=reason,
            last_time=last_time,
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


def forecast_json(
    forecast: Any, spec: ModelSpec, quantiles: Sequence[float], parameters: bool
) -> dict:
    """One forecast (:class:`Forecast` or :class:`StreamForecast`) as JSON: time, horizon and
    a list per target; with quantiles ``{"quantiles": {"0.1": {target: [...]}}}``, with
    parameters ``{"parameters": {name: {target: [...]}}}``."""
    from timesclip_darts.likelihoods import point_and_quantiles

    values = np.asarray(forecast.values)
    out: dict[str, Any] = {
        "time": _plain(forecast.time),
        "horizon": None if forecast.horizon is None else [_plain(t) for t in forecast.horizon],
        "values": {t: values[:, j].tolist() for j, t in enumerate(spec.targets)},
    }
    if quantiles:
        _, qs = point_and_quantiles(np.asarray(forecast.parameters), spec.likelihood, quantiles)
        out["quantiles"] = {
            repr(float(q)): {t: qs[:, j, k].tolist() for j, t in enumerate(spec.targets)}
            for k, q in enumerate(quantiles)
        }
    if parameters:
        params = np.asarray(forecast.parameters)
        out["parameters"] = {
            name: {t: params[:, j, k].tolist() for j, t in enumerate(spec.targets)}
            for k, name in enumerate(spec.likelihood["parameters"])
        }
    return out


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
