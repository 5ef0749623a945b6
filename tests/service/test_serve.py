"""``timesclip-darts serve``: stream routing, the HTTP API against the runtime, bad input over HTTP,
restarts from snapshots, against the session's real server (``tests/service/serving.py``), which the
last test restarts once."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from timesclip_export.service.api import (
    ApiError,
    ModelSpec,
    Output,
    encode_json,
    forecast_json,
    parse_json,
    parse_rows,
    rejection_error,
    shard_for,
)
from timesclip_export.service.config import local_cpus

from tests.conftest import DATA_DIR, ETTH1_COLUMNS, ROOT, TINY_OCL
from tests.service.serving import MAX_BYTES, SHARDS, Server

pytestmark = pytest.mark.integration  # a real Ray Serve server


# ------------------------------------------------------------------------------ routing (no Ray)
def test_shard_for_is_pinned_spread_and_moves_little_when_a_shard_is_added() -> None:
    # Pinned: a change of hash would re-home every stream of a running deployment's snapshots.
    assert [shard_for(f"sensor-{i}", 4) for i in range(8)] == PINNED_4
    assert all(shard_for(s, 1) == 0 for s in ("a", "b", "sensor-1"))
    ids = [f"sensor-{i}" for i in range(4000)]
    counts = np.bincount([shard_for(s, 4) for s in ids], minlength=4)
    assert counts.min() > 0.85 * 1000 and counts.max() < 1.15 * 1000, counts
    before = {s: shard_for(s, 4) for s in ids}
    after = {s: shard_for(s, 5) for s in ids}
    moved = [s for s in ids if before[s] != after[s]]
    assert all(after[s] == 4 for s in moved)  # only to the new shard (rendezvous hashing)
    assert 0.15 * len(ids) < len(moved) < 0.25 * len(ids)


PINNED_4 = [1, 2, 3, 3, 1, 2, 1, 0]


def test_shard_for_does_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "from timesclip_export.service.api import shard_for;"
        "print([shard_for(f'sensor-{i}', 4) for i in range(8)])"
    )
    outputs = set()
    for seed in ("1", "2", "random"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout.strip())
    assert outputs == {str(PINNED_4)}


# ------------------------------------------------------------------------------ parsing (no Ray)
SPEC = ModelSpec(
    {
        "model": {
            "inputs": ["a", "b"],
            "targets": ["a"],
            "input_chunk_length": 4,
            "output_chunk_length": 2,
            "likelihood": {
                "name": "GaussianLikelihood",
                "parameters": ["mu", "sigma"],
                "kinds": ["location", "scale"],
                "point_index": 0,
            },
        },
        "time": {"index": "datetime", "freq": "h"},
    }
)


def test_parse_rows_takes_columns_in_any_order_or_rows_in_input_order() -> None:
    by_column = parse_rows(
        {"values": {"b": [3.0, 4], "a": [1, 2.5]}, "timestamps": ["x", "y"]}, SPEC
    )
    by_row = parse_rows({"values": [[1, 3.0], [2.5, 4]]}, SPEC)
    expected = np.array([[1.0, 3.0], [2.5, 4.0]])
    np.testing.assert_array_equal(by_column["values"], expected)
    np.testing.assert_array_equal(by_row["values"], expected)
    assert by_column["timestamps"] == ["x", "y"] and by_row["timestamps"] is None
    assert by_row["from"] is None and parse_rows({"values": [[1, 3]], "from": 7}, SPEC)["from"] == 7


@pytest.mark.parametrize(
    "body, code",
    [
        ({"values": {"a": [1.0]}}, "columns"),
        ({"values": {"a": [1.0], "b": [1.0], "c": [1.0]}}, "columns"),
        ({"values": {"a": [1.0, 2.0], "b": [1.0]}}, "shape"),
        ({"values": [[1.0, 2.0, 3.0]]}, "shape"),
        ({"values": [[1.0, None]]}, "nan"),
        ({"values": [[1.0, "2"]]}, "dtype"),
        ({"values": [[1.0, True]]}, "dtype"),
        ({"values": []}, "shape"),
        ({"values": [[1.0, 2.0]], "extra": 1}, "unknown_field"),
        ({"values": [[1.0, 2.0]], "timestamps": ["x", "y"]}, "timestamps"),
        ({"values": [[1.0, 2.0]], "timestamps": [5]}, "timestamps"),
        ({"values": [[1.0, 2.0]], "from": -1}, "from"),
        ({"values": [[1.0, 2.0]], "from": 2.0}, "from"),
        ({"values": [[1.0, 2.0]], "from": True}, "from"),
        ({"values": [[1.0, 2.0]], "from": 2**53}, "from"),
        ([1, 2], "shape"),
    ],
)
def test_parse_rows_refuses_with_a_named_problem(body, code: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_rows(body, SPEC)
    assert err.value.status == 422 and err.value.code == code, err.value.message


def test_rejections_map_to_statuses_a_client_can_act_on() -> None:
    """409 with the server's position (re-send from it), 503 while draining (retry), 422 for
    the input itself."""
    behind = rejection_error("position", "m", None, None, position=3, sent_from=5)
    seen = rejection_error("position", "m", None, "2017-01-01T00:00:00", position=3, sent_from=1)
    assert (behind.status, behind.code, behind.extra["position"]) == (409, "stream_behind", 3)
    assert (seen.status, seen.code) == (409, "already_seen")
    draining = rejection_error("draining", "m", None, None)
    assert (draining.status, draining.code) == (503, "draining")
    gap = rejection_error("gap", "m", 0, "2017-01-01T00:00:00", position=9)
    assert (gap.status, gap.code, gap.extra["position"]) == (409, "stream_behind", 9)
    assert rejection_error("gap", "m", 2, None).status == 422


def test_forecast_json_gives_quantiles_and_parameters_of_the_likelihood() -> None:
    params = np.array([[[10.0, 2.0]], [[11.0, 1.0]]], dtype=np.float32)  # [ocl, targets, params]
    forecast = SimpleNamespace(
        time="2020-01-01T00:00:00", horizon=["h1", "h2"], values=params[..., 0], parameters=params
    )
    out = json.loads(encode_json(forecast_json(forecast, SPEC, Output([0.1, 0.5], True, False))))
    assert out["values"] == {"a": [10.0, 11.0]} and out["horizon"] == ["h1", "h2"]
    z = 1.2815515655446004
    np.testing.assert_allclose(out["quantiles"]["0.1"]["a"], [10 - 2 * z, 11 - z], rtol=1e-6)
    assert out["quantiles"]["0.5"]["a"] == [10.0, 11.0]
    assert out["parameters"] == {"mu": {"a": [10.0, 11.0]}, "sigma": {"a": [2.0, 1.0]}}


def test_forecast_json_writes_float32_at_float32_precision_and_a_compact_horizon() -> None:
    values = np.array([[1 / 3], [2 / 3]], dtype=np.float32)
    forecast = SimpleNamespace(time="t", horizon=["2020-01-01T01:00:00", "x"], values=values)
    text = encode_json(forecast_json(forecast, SPEC, Output([], False, True)))
    assert b"0.33333334" in text and b"0.3333333432" not in text
    out = json.loads(text)
    assert out["horizon"] == {"start": "2020-01-01T01:00:00", "freq": "h", "periods": 2}
    assert np.float32(out["values"]["a"][0]) == values[0, 0]  # the shortest text round-trips


def test_parse_json_reads_what_orjson_refuses_so_that_values_are_named() -> None:
    """NaN literals and huge integers become floats, refused by the value check with their row;
    broken JSON is a 400 naming line and column."""
    for literal, code in (
        ("NaN", "nan"),
        ("9" * 400, "nan"),
        ("9" * 5000, "nan"),
        ("1e39", "too_large"),
    ):
        body = parse_json(f'{{"values": [[1.0, {literal}]]}}'.encode())
        with pytest.raises(ApiError) as err:
            parse_rows(body, SPEC)
        assert (err.value.status, err.value.code, err.value.extra["row"]) == (422, code, 0)
    with pytest.raises(ApiError) as err:
        parse_json(b'{"values": [1,]}')
    assert err.value.status == 400 and "line 1, column" in err.value.message


def test_parse_rows_refuses_too_many_rows_before_reading_them() -> None:
    with pytest.raises(ApiError) as err:
        parse_rows({"values": [[1.0, "not read"]] * 5}, SPEC, max_rows=4)
    assert (err.value.status, err.value.code, err.value.extra["limit"]) == (413, "too_many_rows", 4)
    assert len(parse_rows({"values": [[1.0, 2.0]] * 4}, SPEC, max_rows=4)["values"]) == 4


def test_the_runtime_and_the_api_module_do_not_import_ray() -> None:
    code = (
        "import sys, timesclip_export.runtime.forecaster, timesclip_export.service.api, "
        "timesclip_export.service.stream_pool, timesclip_cli.bundle_commands;"
        "print('ray' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_serve_without_ray_says_how_to_install_it_and_exits_2(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None; sys.modules['ray.serve'] = None\n"
        "from timesclip_cli.main import main\n"
        f"sys.exit(main(['serve', {str(tmp_path)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "pip install timesclip-darts[serve]" in lines[0]


@pytest.fixture(scope="module")
def ett() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv")


@pytest.fixture(scope="module")
def runtime(tiny_bundle: Path):
    """A fresh stream of the in-process runtime (one forecaster, reset per call)."""
    from timesclip_export.runtime.forecaster import RollingForecaster

    forecaster = RollingForecaster(tiny_bundle, device="cpu")

    def fresh() -> RollingForecaster:
        forecaster.reset()
        return forecaster

    return fresh


def rows_body(ett: pd.DataFrame, start: int, stop: int, **extra) -> dict:
    frame = ett.iloc[start:stop]
    values = {c: frame[c].astype(float).tolist() for c in ETTH1_COLUMNS}
    return {"timestamps": frame["date"].tolist(), "values": values, **extra}


def as_array(forecasts: list[dict]) -> np.ndarray:
    """JSON forecasts -> ``[k, ocl, n_targets]``."""
    return np.array([[f["values"][t] for t in ETTH1_COLUMNS] for f in forecasts]).transpose(0, 2, 1)


def expected(forecaster, ett: pd.DataFrame, start: int, stop: int) -> np.ndarray:
    frame = ett.iloc[start:stop]
    times = pd.to_datetime(frame["date"]).to_numpy()
    return forecaster.update(frame[ETTH1_COLUMNS].to_numpy(np.float64), timestamps=times)


def test_health_and_model_describe_the_bundle(server: Server, tiny_bundle: Path) -> None:
    assert server.request("GET", "/healthz", token=None) == (200, {"status": "ok", "shards": 2})
    status, model = server.request("GET", "/v1/model")
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert status == 200
    assert model["inputs"] == model["targets"] == ETTH1_COLUMNS
    assert model["horizon"] == manifest["model"]["output_chunk_length"]
    assert model["input_chunk_length"] == manifest["model"]["input_chunk_length"]
    assert model["frequency"] == "h" and model["shards"] == SHARDS
    assert model["backbone"] == manifest["model"]["backbone"]
    assert model["pretrained"] in (False, {"vision": False, "text": False})


def test_streamed_rows_get_exactly_the_runtimes_forecasts(server: Server, ett, runtime) -> None:
    """Three streams at different offsets, rows in uneven chunks, concurrently: the forecasts
    (values, time, horizon) are RollingForecaster.update's, stream by stream."""
    streams = {"feeder-0": 0, "feeder-1": 500, "feeder-2": 1200}  # shards 1, 0, 1
    chunks = [(0, 90), (90, 96), (96, 97), (97, 100), (100, 101), (101, 104)]
    got: dict[str, list[dict]] = {s: [] for s in streams}
    errors: list = []

    def send(stream: str, offset: int, use_batch_route: bool) -> None:
        for a, b in chunks:
            body = rows_body(ett, offset + a, offset + b)
            if use_batch_route:
                status, out = server.request("POST", "/v1/rows", {"streams": {stream: body}})
                out = out["streams"][stream] if status == 200 else out
            else:
                status, out = server.request("POST", f"/v1/streams/{stream}/rows", body)
            if status != 200 or out.get("status", 200) != 200:
                errors.append((stream, a, status, out))
                return
            got[stream].extend(out["forecasts"])

    threads = [
        threading.Thread(target=send, args=(s, o, i == 1))
        for i, (s, o) in enumerate(streams.items())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    for stream, offset in streams.items():
        forecaster = runtime()
        want = np.concatenate(
            [expected(forecaster, ett, offset + a, offset + b) for a, b in chunks]
        )
        assert len(got[stream]) == len(want) == 104 - 96 + 1
        np.testing.assert_allclose(as_array(got[stream]), want, atol=1e-5, rtol=0)
        last = pd.Timestamp(ett["date"].iloc[offset + 103])
        assert pd.Timestamp(got[stream][-1]["time"]) == last
        horizon = forecaster.horizon_index(last.to_datetime64())
        assert list(pd.to_datetime(got[stream][-1]["horizon"])) == list(pd.to_datetime(horizon))
        status, info = server.request("GET", f"/v1/streams/{stream}")
        assert status == 200 and info["shard"] == shard_for(stream, SHARDS)
        assert pd.Timestamp(info["last_time"]) == last


def test_rows_for_many_streams_in_one_request_answer_per_stream(
    server: Server, ett, runtime
) -> None:
    bodies = {f"multi-{i}": rows_body(ett, 100 * i, 100 * i + 97) for i in range(6)}
    bodies["multi-bad"] = rows_body(ett, 0, 97)
    bodies["multi-bad"]["values"]["OT"][50] = float("nan")
    data = json.dumps({"streams": bodies}).encode()  # a NaN literal
    status, out = server.request("POST", "/v1/rows", data)
    assert status == 200 and out["failed"] == 1
    bad = out["streams"]["multi-bad"]
    assert (
        bad["status"] == 422 and bad["error"]["code"] == "nan" and "OT" in bad["error"]["message"]
    )
    for i in range(6):
        answer = out["streams"][f"multi-{i}"]
        assert answer["status"] == 200
        want = expected(runtime(), ett, 100 * i, 100 * i + 97)
        np.testing.assert_allclose(as_array(answer["forecasts"]), want, atol=1e-5, rtol=0)
    assert server.request("GET", "/v1/streams/multi-bad")[0] == 404  # no state was created
    _, stats = server.request("GET", "/v1/stats")
    by_shard = {s["shard"]: s for s in stats["shards"]}
    assert {i: by_shard[i]["batch_requests"]["calls"] > 0 for i in range(SHARDS)} == {
        0: True,
        1: True,
    }
    each = max(1, local_cpus() // SHARDS)  # the default: the cores split between shards
    for shard in stats["shards"]:
        threads = shard["threads"]
        assert (threads["numba"], threads["onnxruntime"]) == (each, each)
        assert threads["torch"] in (each, None)  # None: torch not loaded (ONNX vision)


def test_stateless_windows_get_the_runtimes_forecast(server: Server, ett, runtime) -> None:
    forecaster = runtime()
    body = {"windows": [rows_body(ett, 0, 96), rows_body(ett, 300, 420)]}
    body["windows"].append(ett[ETTH1_COLUMNS].iloc[700:796].to_numpy().tolist())  # bare rows
    status, out = server.request("POST", "/v1/forecast", body)
    assert status == 200, out
    want = np.stack(
        [
            forecaster.forecast(ett[ETTH1_COLUMNS].iloc[a:b].to_numpy(np.float64))
            for a, b in ((0, 96), (324, 420), (700, 796))
        ]
    )
    np.testing.assert_allclose(as_array(out["forecasts"]), want, atol=1e-5, rtol=0)
    assert pd.Timestamp(out["forecasts"][1]["time"]) == pd.Timestamp(ett["date"].iloc[419])
    assert out["forecasts"][2]["time"] is None
    status, out = server.request("POST", "/v1/forecast", {"windows": [rows_body(ett, 0, 50)]})
    assert (
        status == 422 and out["error"]["code"] == "shape" and "window 0" in out["error"]["message"]
    )


BAD_STREAM = "bad-input"


def _bad_cases(ett: pd.DataFrame) -> list[tuple[str, object, dict, int, str]]:
    """(name, body, request options, status, error code): all sent as the stream's next row."""

    def row(i: int, **change) -> dict:
        body = rows_body(ett, i, i + 1)
        for key, value in change.items():
            body["values"][key] = [value]
        return body

    nxt = 96  # the stream holds rows 0..95
    gap = rows_body(ett, nxt, nxt + 3)
    gap["timestamps"][2] = ett["date"].iloc[nxt + 5]
    swapped = rows_body(ett, nxt, nxt + 3)
    swapped["timestamps"][1], swapped["timestamps"][2] = (
        swapped["timestamps"][2],
        swapped["timestamps"][1],
    )
    repeated = rows_body(ett, nxt, nxt + 2)
    repeated["timestamps"][1] = repeated["timestamps"][0]
    wrong_names = row(nxt)
    wrong_names["values"]["oil_temp"] = wrong_names["values"].pop("OT")
    fewer = row(nxt)
    del fewer["values"]["LULL"]
    huge = b'{"values": {"x": [' + b"1," * (MAX_BYTES // 2) + b"1]}}"

    def stamped(stamp: str) -> dict:
        return {**row(nxt), "timestamps": [stamp]}

    def digits(n: int) -> bytes:  # OT written as an n-digit integer
        return (
            json.dumps(row(nxt, OT=0)).encode().replace(b'"OT": [0]', b'"OT": [' + b"9" * n + b"]")
        )

    many = rows_body(ett, nxt, nxt + 1025)  # one more than --max-rows-per-stream
    return [
        ("malformed JSON", b'{"timestamps": [', {}, 400, "malformed_json"),
        ("empty body", b"", {}, 400, "empty_body"),
        ("not an object", [1, 2, 3], {}, 422, "shape"),
        ("unknown field", {**row(nxt), "colour": "red"}, {}, 422, "unknown_field"),
        ("wrong variate names", wrong_names, {}, 422, "columns"),
        ("too few variates", fewer, {}, 422, "columns"),
        ("wrong variate count (rows)", {"values": [[1.0] * 6]}, {}, 422, "shape"),
        ("NaN literal", json.dumps(row(nxt, OT=float("nan"))).encode(), {}, 422, "nan"),
        ("Infinity literal", json.dumps(row(nxt, HUFL=float("inf"))).encode(), {}, 422, "nan"),
        ("null value", row(nxt, OT=None), {}, 422, "nan"),
        ("huge value", row(nxt, OT=1e30), {}, 422, "too_large"),
        ("string value", row(nxt, OT="12.5"), {}, 422, "dtype"),
        ("gap inside the rows", gap, {}, 422, "gap"),
        ("out-of-order rows", swapped, {}, 422, "out_of_order"),
        ("duplicate rows", repeated, {}, 422, "duplicate"),
        ("a row after a gap", row(nxt + 2), {}, 409, "stream_behind"),
        ("an acknowledged row again", row(nxt - 1), {}, 409, "already_seen"),
        ("timestamps count", {**row(nxt), "timestamps": []}, {}, 422, "timestamps"),
        ("unreadable timestamp", {**row(nxt), "timestamps": ["yesterday"]}, {}, 422, "timestamps"),
        ("quantiles without a likelihood", {**row(nxt), "quantiles": [0.1]}, {}, 422, "quantiles"),
        ("oversized body", huge, {}, 413, "too_large"),
        ("too many rows", many, {}, 413, "too_many_rows"),
        ("NaT timestamp", stamped("NaT"), {}, 422, "timestamps"),
        ("relative timestamp", stamped("now"), {}, 422, "timestamps"),
        ("beyond int64 ns", stamped("2300-01-01T00:00:00"), {}, 422, "timestamps"),
        ("UTC offset", stamped("2016-07-05T00:00:00+05:00"), {}, 422, "timezone"),
        ("400-digit integer", digits(400), {}, 422, "nan"),
        ("5000-digit integer", digits(5000), {}, 422, "nan"),
        ("unknown horizon format", {**row(nxt), "horizon": "short"}, {}, 422, "horizon"),
        ("no token", row(nxt), {"token": None}, 401, "unauthorized"),
        ("wrong token", row(nxt), {"token": "nope"}, 401, "unauthorized"),
    ]


def test_bad_input_is_a_4xx_naming_the_problem_and_changes_nothing(
    server: Server, ett, runtime
) -> None:
    forecaster = runtime()
    status, out = server.request("POST", f"/v1/streams/{BAD_STREAM}/rows", rows_body(ett, 0, 96))
    assert status == 200 and len(out["forecasts"]) == 1
    expected(forecaster, ett, 0, 96)
    before = server.request("GET", f"/v1/streams/{BAD_STREAM}")
    failures = []
    for name, body, options, status, code in _bad_cases(ett):
        got, out = server.request("POST", f"/v1/streams/{BAD_STREAM}/rows", body, **options)
        error = (out or {}).get("error", {})
        if got != status or error.get("code") != code or not error.get("message"):
            failures.append((name, got, out))
        if code in ("stream_behind", "already_seen"):
            assert pd.Timestamp(error["last_time"]) == pd.Timestamp(ett["date"].iloc[95]), name
    assert not failures, failures
    assert server.request("GET", f"/v1/streams/{BAD_STREAM}") == before
    # The state is untouched: the next good row forecasts as the runtime does.
    status, out = server.request("POST", f"/v1/streams/{BAD_STREAM}/rows", rows_body(ett, 96, 97))
    assert status == 200
    np.testing.assert_allclose(
        as_array(out["forecasts"]), expected(forecaster, ett, 96, 97), atol=1e-5, rtol=0
    )


def test_limits_openapi_and_the_compact_horizon(server: Server, ett) -> None:
    status, model = server.request("GET", "/v1/model")
    assert status == 200 and model["limits"]["max_rows_per_stream"] == 1024
    assert model["time_zone"] is None and "offset" in model["timestamps"]
    status, spec = server.request("GET", "/openapi.json")
    assert status == 200 and {"/v1/rows", "/v1/streams/{stream}/rows"} <= set(spec["paths"])
    body = spec["paths"]["/v1/rows"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["streams"]
    status, out = server.request(
        "POST", "/v1/streams/compact-0/rows", rows_body(ett, 0, 97, horizon="compact")
    )
    assert status == 200 and len(out["forecasts"]) == 2
    horizon = out["forecasts"][0]["horizon"]
    assert (horizon["freq"], horizon["periods"]) == ("h", TINY_OCL)
    assert pd.Timestamp(horizon["start"]) == pd.Timestamp(ett["date"].iloc[96])


def test_a_request_of_many_windows_refuses_beyond_the_limit(server: Server, ett) -> None:
    status, out = server.request("POST", "/v1/forecast", {"windows": [[[1.0] * 7]] * 1025})
    assert (status, out["error"]["code"], out["error"]["limit"]) == (413, "too_many_windows", 1024)


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("GET", "/v2/model", 404, "not_found"),
        ("PUT", "/v1/model", 405, "method"),
        ("GET", "/v1/streams/never-seen", 404, "unknown_stream"),
        ("POST", "/v1/streams/bad%20id!/rows", 422, "stream_id"),
    ],
)
def test_unknown_routes_streams_and_ids_are_json_4xx(server: Server, method, path, status, code):
    got, out = server.request(method, path, {} if method != "GET" else None)
    assert (got, out["error"]["code"]) == (status, code)


def test_same_stream_same_shard(server: Server, ett) -> None:
    names = [f"route-{i}" for i in range(8)]
    assert {shard_for(n, SHARDS) for n in names} == {0, 1}
    for name in names:
        for start in (0, 96):  # twice: a stream keeps its shard
            body = rows_body(ett, start, start + 96)
            status, _ = server.request("POST", f"/v1/streams/{name}/rows", body)
            assert status == 200
        status, info = server.request("GET", f"/v1/streams/{name}")
        assert status == 200 and info["shard"] == shard_for(name, SHARDS) and info["rows"] == 192


def _metric(text: str, name: str, label: str = "") -> float:
    """Sum of a Prometheus metric's samples (every worker reports its own), those whose labels
    contain ``label`` only."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            labels, _, value = line.rpartition(" ")
            if label in labels:
                total += float(value)
    return total


def test_metrics_count_forecasts_refusals_and_batches(server: Server, ett) -> None:
    """Ray's metrics agent exports the server's ray.util.metrics on --metrics-port."""
    assert server.request("POST", "/v1/streams/metrics-0/rows", rows_body(ett, 0, 97))[0] == 200
    gap = rows_body(ett, 98, 99)  # refused by the shard: it skips row 97
    assert server.request("POST", "/v1/streams/metrics-0/rows", gap)[0] == 409
    bad = rows_body(ett, 97, 98)
    bad["values"]["OT"] = [float("nan")]  # refused by the ingress
    assert server.request("POST", "/v1/streams/metrics-0/rows", bad)[0] == 422
    assert server.request("GET", "/v1/model", token="wrong")[0] == 401
    prefix = "ray_timesclip_serve_"
    checks = {
        "forecasts": lambda t: _metric(t, prefix + "forecasts_total") >= 2,
        "rows": lambda t: _metric(t, prefix + "rows_total") >= 97,
        "rejected gap": lambda t: _metric(t, prefix + "rejected_rows_total", 'reason="gap"') >= 1,
        "refused auth": lambda t: (
            _metric(t, prefix + "refused_requests_total", 'code="unauthorized"') >= 1
        ),
        "refused nan": lambda t: _metric(t, prefix + "refused_requests_total", 'code="nan"') >= 1,
        "batch sizes": lambda t: (
            _metric(t, prefix + "batch_windows_count") >= 1
            and _metric(t, prefix + "batch_requests_count") >= 1
        ),
        "latency": lambda t: (
            _metric(t, prefix + "request_seconds_count", 'route="stream_rows"') >= 2
        ),
        "live streams": lambda t: _metric(t, prefix + "streams") >= 1,
    }
    deadline, failing = time.monotonic() + 60, list(checks)
    while failing and time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        except OSError:
            text = ""
        finally:
            connection.close()
        failing = [name for name, check in checks.items() if not check(text)]
        if failing:
            time.sleep(2)
    assert failing == []


STREAMS = 20


def _position_body(ett: pd.DataFrame, start: int, rows: int, timed: bool, position: int) -> dict:
    """Rows ``start..start + rows`` of ETTh1 sent from ``position`` (untimed: no timestamps)."""
    part = ett.iloc[start : start + rows]
    body: dict = {"values": {c: part[c].tolist() for c in ETTH1_COLUMNS}, "from": position}
    if timed:
        body["timestamps"] = part["date"].tolist()
    return body


def test_sigterm_under_load_keeps_every_acknowledged_row_and_no_refused_one(
    server: Server, ett: pd.DataFrame, runtime
) -> None:
    """Rows go to 20 streams (timed and untimed) without pause; SIGTERM mid-load. The shards
    answer 503 while they drain and snapshot; after a restart with the same --snapshot-dir each
    stream holds exactly the rows the client saw acknowledged (a request cut off without an
    answer may or may not have landed), the client's loop continues every stream from the
    position it is told, and a full stream's next row forecasts at once, as the runtime
    continuing the stream does."""
    forecaster = runtime()
    full = "restart-me"  # a whole window before the stop
    status, _ = server.request("POST", f"/v1/streams/{full}/rows", rows_body(ett, 2000, 2100))
    assert status == 200
    expected(forecaster, ett, 2000, 2100)
    names = [f"drain-{'t' if i % 2 else 'u'}{i}" for i in range(STREAMS)]
    acked = dict.fromkeys(names, 0)  # the position of the last 200
    unsure: dict[str, int] = {}  # rows of a request that got no answer at all
    statuses: list[int] = []
    problems: list[str] = []  # a thread's failed assertion would not reach pytest
    stop = threading.Event()

    def client(mine: list[str]) -> None:
        while not stop.is_set():
            for name in mine:
                if name in unsure:
                    continue
                rows = 1 + acked[name] % 3
                body = _position_body(ett, acked[name], rows, "-t" in name, acked[name])
                try:
                    status, out = server.request(
                        "POST", f"/v1/streams/{name}/rows", body, timeout=30
                    )
                except OSError:
                    unsure[name] = rows
                    continue
                statuses.append(status)
                if status == 200:
                    if out["position"] != acked[name] + rows:
                        problems.append(f"{name}: {acked[name]} + {rows} rows -> {out}")
                    acked[name] = out["position"]
                else:
                    if status != 503 or out["error"]["code"] not in ("draining", "unavailable"):
                        problems.append(f"{name}: {status} {out}")
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(names[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while sum(acked.values()) < 3 * STREAMS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(acked.values()) >= 3 * STREAMS, f"too slow: {acked}"
        assert server.stop() == 0  # SIGTERM while the clients keep sending
        assert "stopping: draining" in server.log_path.read_text()
        assert sorted(p.name for p in server.snapshots.glob("shard-*.snapshot")) == [
            f"shard-{i}-of-{SHARDS}.snapshot" for i in range(SHARDS)
        ]
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert problems == [] and statuses.count(200) >= STREAMS
    server.start()
    status, info = server.request("GET", f"/v1/streams/{full}")
    assert status == 200 and pd.Timestamp(info["last_time"]) == pd.Timestamp(ett["date"].iloc[2099])
    body = rows_body(ett, 2100, 2101, **{"from": 100})
    status, out = server.request("POST", f"/v1/streams/{full}/rows", body)
    assert status == 200 and out["position"] == 101 and len(out["forecasts"]) == 1
    np.testing.assert_allclose(
        as_array(out["forecasts"]), expected(forecaster, ett, 2100, 2101), atol=1e-5, rtol=0
    )
    for name in names:
        status, info = server.request("GET", f"/v1/streams/{name}")
        assert status == 200, (name, info)
        landed = {acked[name], acked[name] + unsure.get(name, 0)}
        assert info["position"] in landed, (name, info, acked[name], unsure.get(name))
        # The client's loop: it sends from where it believes the stream is; a 409 names the
        # server's position, from which it re-sends.
        believed = acked[name] + unsure.get(name, 0)
        body = _position_body(ett, believed, 1, "-t" in name, believed)
        status, out = server.request("POST", f"/v1/streams/{name}/rows", body)
        if info["position"] != believed:
            assert status == 409 and out["error"]["position"] == info["position"], out
            body = _position_body(ett, info["position"], 1, "-t" in name, info["position"])
            status, out = server.request("POST", f"/v1/streams/{name}/rows", body)
        assert status == 200 and out["position"] == info["position"] + 1, out
