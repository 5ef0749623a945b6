"""``timesclip-darts serve``: stream routing, the HTTP API against the runtime, bad input over HTTP,
restarts from snapshots. One real server (a subprocess on a free loopback port, two shards, a
token, a snapshot folder) is started for the module and restarted once; every client call has a
timeout, and the server's whole process group is killed at the end."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from timesclip_export.service.api import ApiError, ModelSpec, forecast_json, parse_rows, shard_for

from tests.conftest import DATA_DIR, ETTH1_COLUMNS, ROOT

TOKEN = "test-token-0123"
SHARDS = 2
MAX_BYTES = 256 * 1024
START_TIMEOUT_S = 150
HTTP_TIMEOUT_S = 60


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
        ([1, 2], "shape"),
    ],
)
def test_parse_rows_refuses_with_a_named_problem(body, code: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_rows(body, SPEC)
    assert err.value.status == 422 and err.value.code == code, err.value.message


def test_forecast_json_gives_quantiles_and_parameters_of_the_likelihood() -> None:
    params = np.array([[[10.0, 2.0]], [[11.0, 1.0]]], dtype=np.float32)  # [ocl, targets, params]
    forecast = SimpleNamespace(
        time="2020-01-01T00:00:00", horizon=["h1", "h2"], values=params[..., 0], parameters=params
    )
    out = forecast_json(forecast, SPEC, [0.1, 0.5], parameters=True)
    assert out["values"] == {"a": [10.0, 11.0]}
    z = 1.2815515655446004
    np.testing.assert_allclose(out["quantiles"]["0.1"]["a"], [10 - 2 * z, 11 - z], rtol=1e-6)
    assert out["quantiles"]["0.5"]["a"] == [10.0, 11.0]
    assert out["parameters"] == {"mu": {"a": [10.0, 11.0]}, "sigma": {"a": [2.0, 1.0]}}


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


# ------------------------------------------------------------------------------ the server
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` with its start time (from /proc; empty where there is none),
    so that only those very processes are killed later, never a reused pid."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started
                todo.append(child)
    return found


def _kill_if_same(pid: int, started: str) -> None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[19] == started:
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass


class Server:
    """``timesclip-darts serve`` in its own process group, with a client."""

    def __init__(self, bundle: Path, snapshots: Path, log: Path) -> None:
        self.bundle, self.snapshots, self.log_path = bundle, snapshots, log
        self.port = _free_port()
        self.metrics_port = _free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "timesclip_cli.main",
            "serve",
            str(self.bundle),
            "--port",
            str(self.port),
            "--shards",
            str(SHARDS),
            "--snapshot-dir",
            str(self.snapshots),
            "--snapshot-every",
            "3600",
            "--max-request-bytes",
            str(MAX_BYTES),
            "--metrics-port",
            str(self.metrics_port),
        ]
        env = {
            **os.environ,
            "TIMESCLIP_SERVE_TOKEN": TOKEN,
            "RAY_metrics_report_interval_ms": "1000",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.log = open(self.log_path, "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop(timeout=10)
            raise

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.tail()}")
            try:
                if self.request("GET", "/v1/model", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not up after {START_TIMEOUT_S} s:\n{self.tail()}")

    def stop(self, timeout: float = 90) -> int | None:
        """SIGTERM to the server (it snapshots and stops Ray), then SIGKILL to whatever of its
        process tree is left: Ray's daemons share its group, its actors have their own."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        tree = _descendants(process.pid)
        try:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            for pid, started in {**tree, **_descendants(process.pid)}.items():
                _kill_if_same(pid, started)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait(timeout=30)
            self.log.close()
        return code

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = TOKEN,
        headers: dict | None = None,
        timeout: float = HTTP_TIMEOUT_S,
    ) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = {"Content-Type": "application/json", **(headers or {})}
            if token:
                sent["Authorization"] = f"Bearer {token}"
            data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            data = response.read()
            try:
                return response.status, json.loads(data or b"null")
            except ValueError:  # not ours: Serve's proxy while the app deploys
                return response.status, {"raw": data.decode(errors="replace")}
        finally:
            connection.close()


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory) -> Iterator[Server]:
    pytest.importorskip("ray.serve")
    folder = tmp_path_factory.mktemp("serve")
    running = Server(tiny_bundle, folder / "snapshots", folder / "server.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()


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
    bad = rows_body(ett, 97, 98)
    bad["values"]["OT"] = [float("nan")]
    assert server.request("POST", "/v1/streams/metrics-0/rows", bad)[0] == 422
    assert server.request("GET", "/v1/model", token="wrong")[0] == 401
    prefix = "ray_timesclip_serve_"
    checks = {
        "forecasts": lambda t: _metric(t, prefix + "forecasts_total") >= 2,
        "rows": lambda t: _metric(t, prefix + "rows_total") >= 97,
        "rejected nan": lambda t: _metric(t, prefix + "rejected_rows_total", 'reason="nan"') >= 1,
        "refused auth": lambda t: (
            _metric(t, prefix + "refused_requests_total", 'code="unauthorized"') >= 1
        ),
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


def test_a_restart_continues_the_streams_from_the_snapshot(server: Server, ett, runtime) -> None:
    """Stop (the shards write their snapshots), start again with the same --snapshot-dir: the
    next row of a stream forecasts at once, as the runtime continuing the stream does."""
    forecaster = runtime()
    stream = "restart-me"
    status, _ = server.request("POST", f"/v1/streams/{stream}/rows", rows_body(ett, 2000, 2100))
    assert status == 200
    expected(forecaster, ett, 2000, 2100)
    assert server.stop() == 0
    assert sorted(p.name for p in server.snapshots.glob("shard-*.snapshot")) == [
        f"shard-{i}-of-{SHARDS}.snapshot" for i in range(SHARDS)
    ]
    server.start()
    status, info = server.request("GET", f"/v1/streams/{stream}")
    assert status == 200 and pd.Timestamp(info["last_time"]) == pd.Timestamp(ett["date"].iloc[2099])
    status, out = server.request("POST", f"/v1/streams/{stream}/rows", rows_body(ett, 2100, 2101))
    assert status == 200 and len(out["forecasts"]) == 1
    np.testing.assert_allclose(
        as_array(out["forecasts"]), expected(forecaster, ett, 2100, 2101), atol=1e-5, rtol=0
    )
