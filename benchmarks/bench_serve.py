"""``timesclip-darts serve`` under load: forecasts/s, latency, achieved batch sizes and memory for
1, 100 and 1,000 live streams of real ETTm1 rows (15-minute rows, as the sensors send them),
against the one-stream-at-a-time path, small clients' latency beside a big client (stress), and
a fault run that kills a shard mid-load.

    python -m benchmarks.bench_serve                     # tiny and small presets (~12 min, CPU)
    python -m benchmarks.bench_serve --preset tiny --bundle bundle/   # an ETTm1 bundle of yours
    python -m benchmarks.bench_serve --smoke       # tiny, 1 and 20 streams, stress, fault: ~2 min
    python -m benchmarks.bench_serve --overhead    # ingress modes and shard threads only
    python -m benchmarks.bench_serve --fault-only  # SIGKILL of a shard, SIGTERM of the service

For each preset it trains a model on ETTm1 (``bench_runtime.train_model``) and exports it with
its scaler, so the streams send raw rows in the original units; then starts the server in this
process (``timesclip_export.service.server.start``: a local Ray, Serve's HTTP proxy on
127.0.0.1) and:

- primes every stream with its first ``input_chunk_length - 1`` rows (not timed), then sends
  ``--ticks`` new rows per stream and times them, two ways: ``per_stream`` (one
  ``POST /v1/streams/{id}/rows`` per row, ``--clients`` concurrent keep-alive connections) and
  ``bulk`` (``POST /v1/rows`` with ``--bulk`` streams per request, as an ingestion gateway
  would); reports forecasts/s, p50/p99 request latency, the achieved batch sizes (requests per
  ``@serve.batch`` call and windows per device call, from ``GET /v1/stats``), the shard's RSS
  before and after, errors (must be 0), and checks a sample of streams' forecasts against
  ``RollingForecaster.rolling`` over the same rows (the batch path);
- first preset: the shard's RSS after each of ``--steady-ticks`` bulk rows of the largest level
  (flat or not);
- first preset, stress (``--no-stress`` skips it): ``--stress-clients`` (16) small clients, each
  owning a stream primed with ``input_chunk_length`` rows and sending one row a request in a
  closed loop, for ``--stress-seconds`` (20; smoke 5) alone ("unloaded"), then as long beside one
  big client sending its own stream the most rows a request may hold (``GET /v1/model``'s
  ``limits.max_rows_per_stream``, else 1024; ``--stress-rows N`` also starts the server with
  ``--max-rows-per-stream N``), ETTm1 rows cycling under generated 15-minute timestamps
  ("loaded"); reports the small clients' p50/p99, requests/s and errors per phase, the big
  client's requests, seconds a request, rows/s and error codes, and whether the small clients'
  p99 loaded stays within 2x of unloaded (the goal; reported, not asserted);
- with the server stopped, in this process: the one-stream-at-a-time path
  (``RollingForecaster.update`` with one row per call, each stream's state swapped in: one
  forecaster per stream would hold the same model many times; the call is the same) and the
  ceiling, ``StreamPool.update`` with a row of every stream per call (no HTTP, no Ray);
- fault run (tiny preset): ``timesclip-darts serve`` in a process of its own, two shards with
  snapshots every ``--snapshot-every`` seconds, a paced load of timed and untimed streams;
  shard 0's process killed with SIGKILL a third of the way in, the whole service stopped with
  SIGTERM and started again two thirds in. Clients run the documented loop (``"from"`` on
  every request; on a 409, re-send from the ``position`` the server names; retry 503s and
  refused connections); the run counts forecasts lost (rows that never got one) and
  duplicated (rows re-sent after a restore: identical values), per kind of stream.

Only loopback addresses are used. Writes ``benchmarks/results/serve.json`` (``--out``) and
prints a table.

``--overhead`` runs only the per-request overhead, for each preset: one server (one shard) per
ingress mode (``--modes``: Serve's HTTP proxy, ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``,
``RAY_SERVE_ENABLE_HA_PROXY=1``; HAProxy only where its binary is installed) on one thread, and
per shard thread count (``--threads``, Serve's proxy; 1 is ``--cpus-per-shard 0``, N > 1 is
``--cpus-per-shard N``), each in a process of its own (Ray Serve reads the switches once): one
client sending one row a request (latency), ``--stress-clients`` doing so (forecasts/s), and
``POST /v1/rows`` of ``--bulk`` streams a request over ``--overhead-streams`` streams, each for
``--overhead-seconds``; then, in this process on as many threads, one row per
``StreamPool.update`` and the ceiling. Reports the HTTP p50 over the in-process one (goal: 3 ms
or less), bulk forecasts/s over the ceiling (goal: 80 % or more), the sockets each server
listened on and the load averages. ``--bundle 'dir/bundle_{preset}'`` names a bundle per
preset. Writes ``benchmarks/results/serve_overhead.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.bench_gpu import percentiles

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
RESULTS = Path(__file__).resolve().parent / "results"
# How HTTP reaches the ingress (Ray Serve 2.60's switches, read when Ray starts).
INGRESS_MODES = {
    "proxy": {},  # Serve's HTTP proxy actor, then a handle call to the ingress replica
    "direct": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"},  # the ingress replica serves HTTP itself
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},  # HAProxy in front of direct ingress
}
INPUT = 96
HOST = "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "small", "both"], default="both")
    parser.add_argument("--bundle", help="serve this bundle (ETTm1 columns) instead of training")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument(
        "--ticks", type=int, nargs="+", default=[60, 8, 4], help="rows per stream, per level"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--bulk", type=int, default=100, help="streams per /v1/rows request")
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--train-windows", type=int, default=512)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="windows per device call (default: the server's, 32 on the CPU)",
    )
    parser.add_argument("--serial-calls", type=int, default=200, help="one-at-a-time calls")
    parser.add_argument(
        "--steady-ticks", type=int, default=30, help="bulk rows per stream for the RSS trace"
    )
    parser.add_argument("--check-streams", type=int, default=3, help="streams checked vs rolling")
    parser.add_argument("--fault-streams", type=int, default=200)
    parser.add_argument("--fault-ticks", type=int, default=12)
    parser.add_argument("--fault-tick-s", type=float, default=1.0, help="seconds per row")
    parser.add_argument("--snapshot-every", type=float, default=2.0)
    parser.add_argument("--no-fault", action="store_true", help="skip the fault run")
    parser.add_argument(
        "--fault-only", action="store_true", help="only the fault run (serve_fault.json)"
    )
    parser.add_argument("--stress-seconds", type=float, default=20.0, help="per stress phase")
    parser.add_argument(
        "--stress-clients", type=int, default=16, help="small stress clients, a stream each"
    )
    parser.add_argument(
        "--stress-rows",
        type=int,
        help="rows a request of the big stress client; also the server's --max-rows-per-stream "
        "(default: GET /v1/model's limits.max_rows_per_stream, else 1024; not passed)",
    )
    parser.add_argument("--no-stress", action="store_true", help="skip the stress case")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    parser.add_argument("--data-dir", help="ETT CSV folder (default ../shared/data/ETT)")
    parser.add_argument("--out", help="JSON file (default benchmarks/results/serve.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny, 1 and 20 streams, ~2 min")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="only the per-request overhead of each --modes and --threads (serve_overhead.json)",
    )
    parser.add_argument(
        "--modes", nargs="+", choices=list(INGRESS_MODES), default=["proxy", "direct", "haproxy"]
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="shard threads compared (proxy)"
    )
    parser.add_argument("--overhead-seconds", type=float, default=5.0, help="per overhead load")
    parser.add_argument("--overhead-streams", type=int, default=200, help="bulk overhead streams")
    parser.add_argument("--overhead-child", help=argparse.SUPPRESS)  # one server, in a process
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.streams, args.ticks = "tiny", [1, 20], [4, 2]
        args.horizon, args.train_windows, args.serial_calls, args.steady_ticks = 24, 64, 10, 3
        args.fault_streams, args.fault_ticks, args.clients, args.bulk = 10, 9, 8, 10
        args.snapshot_every, args.fault_tick_s, args.stress_seconds = 1.0, 0.5, 5.0
    if len(args.ticks) != len(args.streams):
        parser.error("--ticks needs one value per --streams level")
    return args


# ------------------------------------------------------------------------------ data and model
def load_rows(data_dir: str | None):
    """ETTm1 as (timestamps as ISO strings, float64 values [rows, 7], column names)."""
    import pandas as pd

    from timesclip_darts.data import default_data_dir

    folder = Path(data_dir) if data_dir else default_data_dir()
    frame = pd.read_csv(Path(folder) / "ETTm1.csv")
    stamps = pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%dT%H:%M:%S").tolist()
    return stamps, frame.iloc[:, 1:].to_numpy(np.float64), list(frame.columns[1:])


def make_bundle(args: argparse.Namespace, preset: str, folder: Path) -> Path:
    """Train a model of ``preset`` on ETTm1 (bench_runtime's recipe) and export it with its
    scaler, so the server takes raw rows."""
    from timesclip_export.exporter.writer import export_bundle

    from benchmarks.bench_runtime import train_model
    from timesclip_darts.data import ett_splits, load_darts_dataset, save_scaler_json

    series = load_darts_dataset("ETTm1", args.data_dir)
    splits = ett_splits(series, "ETTm1", INPUT)
    recipe = argparse.Namespace(
        preset=preset, horizon=args.horizon, train_windows=args.train_windows
    )
    model_path = train_model(recipe, splits, folder)
    save_scaler_json(splits.scaler, list(series.components), f"{model_path}.scaler.json")
    bundle = folder / f"bundle_{preset}"
    export_bundle(model_path, bundle)
    return bundle


# ------------------------------------------------------------------------------ HTTP client
class Client:
    """One keep-alive connection to the server (http.client, loopback only)."""

    def __init__(self, port: int, timeout: float = 120) -> None:
        self.port, self.timeout = port, timeout
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(2):  # one reconnect: the server may close idle connections
            if self.connection is None:
                self.connection = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.connection.request(
                    method, path, body=data, headers={"Content-Type": "application/json"}
                )
                response = self.connection.getresponse()
                payload = response.read()
                try:
                    return response.status, json.loads(payload or b"null")
                except ValueError:
                    return response.status, {"raw": payload.decode(errors="replace")[:200]}
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def rows_body(stamps: list[str], values: np.ndarray, columns: list[str], a: int, b: int) -> dict:
    return {
        "timestamps": stamps[a:b],
        "values": {c: values[a:b, j].tolist() for j, c in enumerate(columns)},
    }


@dataclass
class Streams:
    """Stream ``i`` replays ETTm1 from row ``offsets[i]``; ``sent[i]`` rows sent so far."""

    names: list[str]
    offsets: np.ndarray
    sent: np.ndarray
    got: dict[str, list[dict]] = field(default_factory=dict)

    @classmethod
    def make(cls, n: int, prefix: str, n_rows: int, needed: int, seed: int = 0) -> Streams:
        rng = np.random.default_rng(seed)
        offsets = rng.integers(0, n_rows - needed, size=n)
        return cls([f"{prefix}-{i}" for i in range(n)], offsets, np.zeros(n, np.int64))


def prime(port: int, streams: Streams, data, rows: int, bulk: int) -> None:
    """Send each stream its first ``rows`` rows (bulk requests; not timed)."""
    stamps, values, columns = data
    client = Client(port)
    for start in range(0, len(streams.names), bulk):
        body = {"streams": {}}
        for i in range(start, min(start + bulk, len(streams.names))):
            o = int(streams.offsets[i])
            body["streams"][streams.names[i]] = rows_body(stamps, values, columns, o, o + rows)
        status, out = client.request("POST", "/v1/rows", body)
        if status != 200 or out.get("failed"):
            raise RuntimeError(f"priming failed: {status} {str(out)[:300]}")
    streams.sent[:] = rows
    client.close()


def drive(
    port: int,
    streams: Streams,
    data,
    ticks: int,
    mode: str,
    clients: int,
    bulk: int,
    seconds: float | None = None,
) -> dict:
    """Send ``ticks`` new rows per stream; every row should get one forecast back. With
    ``seconds``, each client stops sending once that long has passed (closed loop: its next
    request as soon as the answer arrives), ``ticks`` being then a cap."""
    stamps, values, columns = data
    n = len(streams.names)
    sent_before = streams.sent.copy()
    latencies: list[float] = []
    errors: list[str] = []
    forecasts = [0]
    lock = threading.Lock()
    if mode == "per_stream":
        groups = [list(range(k, n, clients)) for k in range(min(clients, n))]
    else:  # bulk: groups of `bulk` streams, a request per group and tick
        groups = [list(range(k, min(k + bulk, n))) for k in range(0, n, bulk)]
    groups_per_worker = [
        groups[k :: max(1, min(clients, len(groups)))] for k in range(min(clients, len(groups)))
    ]

    def worker(my_groups: list[list[int]]) -> None:
        client = Client(port)
        mine, seen, errs = [], 0, []
        try:
            for _ in range(ticks):
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                for group in my_groups:
                    for_bulk = {}
                    for i in group:
                        o, k = int(streams.offsets[i]), int(streams.sent[i])
                        body = rows_body(stamps, values, columns, o + k, o + k + 1)
                        if mode == "bulk":
                            for_bulk[streams.names[i]] = body
                            continue
                        start = time.perf_counter()
                        status, out = client.request(
                            "POST", f"/v1/streams/{streams.names[i]}/rows", body
                        )
                        mine.append(time.perf_counter() - start)
                        if status != 200:
                            errs.append(f"{status} {str(out)[:200]}")
                            continue
                        streams.got.setdefault(streams.names[i], []).extend(out["forecasts"])
                        seen += len(out["forecasts"])
                        streams.sent[i] += 1
                    if mode == "bulk":
                        start = time.perf_counter()
                        status, out = client.request("POST", "/v1/rows", {"streams": for_bulk})
                        mine.append(time.perf_counter() - start)
                        if status != 200:
                            errs.append(f"{status} {str(out)[:200]}")
                            continue
                        for i in group:
                            answer = out["streams"][streams.names[i]]
                            if answer["status"] != 200:
                                errs.append(f"{answer['status']} {str(answer)[:200]}")
                                continue
                            streams.got.setdefault(streams.names[i], []).extend(answer["forecasts"])
                            seen += len(answer["forecasts"])
                            streams.sent[i] += 1
        except Exception as err:  # counted, never hidden
            errs.append(f"{type(err).__name__}: {err}")
        finally:
            client.close()
        with lock:
            latencies.extend(mine)
            errors.extend(errs)
            forecasts[0] += seen

    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in groups_per_worker]
    start = time.perf_counter()
    deadline = None if seconds is None else start + seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1800)
    elapsed = time.perf_counter() - start
    latency = percentiles(latencies or [0.0])
    return {
        "mode": mode,
        "streams": n,
        "ticks": ticks if seconds is None else None,
        "requests": len(latencies),
        "forecasts": forecasts[0],
        "expected_forecasts": n * ticks
        if seconds is None
        else int((streams.sent - sent_before).sum()),
        "seconds": elapsed,
        "forecasts_per_s": forecasts[0] / elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
        "errors": len(errors),
        "error_sample": errors[:3],
    }


def batch_delta(before: dict, after: dict) -> dict:
    """Mean requests per @serve.batch call and windows per device call between two stats."""
    out = {}
    for key in ("batch_requests", "batch_windows"):
        calls = totals = 0.0
        for b, a in zip(before["shards"], after["shards"], strict=True):
            calls += a[key]["calls"] - b[key]["calls"]
            totals += (a[key]["mean"] or 0) * a[key]["calls"] - (b[key]["mean"] or 0) * b[key][
                "calls"
            ]
        out[key] = totals / calls if calls else None
    return out


def check_against_rolling(forecaster, streams: Streams, data, sample: int) -> dict:
    """The forecasts a sample of streams got, against ``rolling`` over the rows they sent."""
    stamps, values, _ = data
    icl = forecaster.input_chunk_length
    worst, checked = 0.0, 0
    for i in range(min(sample, len(streams.names))):
        got = streams.got.get(streams.names[i], [])
        if not got:
            continue
        o, k = int(streams.offsets[i]), int(streams.sent[i])
        reference = forecaster.rolling(values[o : o + k])  # [windows, H, N_t]
        index = {stamps[o + icl - 1 + w]: w for w in range(len(reference))}
        for forecast in got:
            w = index[forecast["time"]]
            array = np.array([forecast["values"][t] for t in forecaster.targets]).T
            worst = max(worst, float(np.abs(array - reference[w]).max()))
            checked += 1
    return {"forecasts_checked": checked, "max_abs_diff": worst}


def one_at_a_time(forecaster, data, n_streams: int, calls: int, seed: int = 1) -> dict:
    """``RollingForecaster.update`` with one row per call over ``n_streams`` streams, each
    stream's state swapped in (the model is the same for all; only the rows differ)."""
    stamps, values, _ = data
    icl = forecaster.input_chunk_length
    streams = Streams.make(n_streams, "serial", len(values), icl + calls + 1, seed)
    states = {}
    for i in range(min(n_streams, calls)):
        forecaster.reset()
        o = int(streams.offsets[i])
        forecaster.update(
            values[o : o + icl - 1], timestamps=np.array(stamps[o : o + icl - 1], "datetime64[ns]")
        )
        states[i] = _state(forecaster)
    latencies, made = [], 0
    start = time.perf_counter()
    for call in range(calls):
        i = call % len(states)
        _restore(forecaster, states[i])
        row = icl - 1 + call // len(states)
        o = int(streams.offsets[i])
        t0 = time.perf_counter()
        out = forecaster.update(
            values[o + row : o + row + 1],
            timestamps=np.array(stamps[o + row : o + row + 1], "datetime64[ns]"),
        )
        latencies.append(time.perf_counter() - t0)
        made += len(out)
        states[i] = _state(forecaster)
    seconds = time.perf_counter() - start
    latency = percentiles(latencies)
    return {
        "calls": calls,
        "forecasts": made,
        "forecasts_per_s": made / seconds,
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
    }


def _state(forecaster) -> tuple:
    return (forecaster._history, forecaster._last_time, forecaster._timed, forecaster.rows_seen)


def _restore(forecaster, state: tuple) -> None:
    forecaster._history, forecaster._last_time, forecaster._timed, forecaster.rows_seen = state


def rss_of(stats: dict) -> dict:
    return {
        "shards_rss_mb": [round((s.get("rss_bytes") or 0) / 2**20, 1) for s in stats["shards"]],
        "ingress_rss_mb": round((stats["ingress"].get("rss_bytes") or 0) / 2**20, 1),
        "state_mb": round(sum(s.get("state_bytes", 0) for s in stats["shards"]) / 2**20, 2),
    }


# ------------------------------------------------------------------------------ runs
def pool_ceiling(forecaster, data, n: int, ticks: int, seed: int = 2) -> dict:
    """The same load as one ``StreamPool.update`` per tick in this process: no HTTP, no Ray;
    the most the server could reach on this machine."""
    from timesclip_export.service.stream_pool import StreamPool

    stamps, values, columns = data
    icl = forecaster.input_chunk_length
    streams = Streams.make(n, "pool", len(values), icl + ticks + 1, seed)
    pool = StreamPool(forecaster)

    def tick(a: int, b: int) -> dict:
        rows = {}
        for i, name in enumerate(streams.names):
            o = int(streams.offsets[i])
            rows[name] = {"values": values[o + a : o + b], "timestamps": stamps[o + a : o + b]}
        return rows

    pool.update(tick(0, icl - 1))
    start, made = time.perf_counter(), 0
    for k in range(ticks):
        made += len(pool.update(tick(icl - 1 + k, icl + k)).forecasts)
    seconds = time.perf_counter() - start
    return {"streams": n, "ticks": ticks, "forecasts": made, "forecasts_per_s": made / seconds}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def steady_rss(args: argparse.Namespace, port: int, data, icl: int, client: Client) -> dict:
    """The shard's RSS after each of ``--steady-ticks`` bulk rows for the largest level."""
    n = max(args.streams)
    streams = Streams.make(n, "steady", len(data[1]), icl + args.steady_ticks + 1, seed=3)
    prime(port, streams, data, icl - 1, args.bulk)
    trace, errors = [], 0
    for _ in range(args.steady_ticks):
        errors += drive(port, streams, data, 1, "bulk", args.clients, args.bulk)["errors"]
        trace.append(rss_of(client.request("GET", "/v1/stats")[1])["shards_rss_mb"][0])
    for name in streams.names:
        client.request("DELETE", f"/v1/streams/{name}")
    return {"streams": n, "ticks": args.steady_ticks, "shard_rss_mb": trace, "errors": errors}


def big_stream(port: int, data, name: str, rows: int, stop: threading.Event) -> dict:
    """Send stream ``name`` ``rows`` rows a request until ``stop`` is set (closed loop): ETTm1
    rows cycling through the data, timestamps generated at its frequency so the stream never
    runs out; each request's rows follow the last accepted ones."""
    stamps, values, columns = data
    first = np.datetime64(stamps[0], "s")
    step = np.datetime64(stamps[1], "s") - first
    client = Client(port, timeout=600)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    sample: list[str] = []
    accepted = 0
    start = time.perf_counter()
    try:
        while not stop.is_set():
            index = np.arange(accepted, accepted + rows)
            times = np.datetime_as_string(first + step * index, unit="s").tolist()
            block = np.take(values, index, axis=0, mode="wrap")
            t0 = time.perf_counter()
            try:
                status, out = client.request(
                    "POST", f"/v1/streams/{name}/rows", rows_body(times, block, columns, 0, rows)
                )
            except Exception as err:  # counted, never hidden
                status, out = 599, {"error": f"{type(err).__name__}: {err}"}
            if status == 200:
                latencies.append(time.perf_counter() - t0)
                accepted += rows
                continue
            codes[str(status)] = codes.get(str(status), 0) + 1
            if len(sample) < 3:
                sample.append(f"{status} {str(out)[:200]}")
            stop.wait(0.1)  # an error answers fast: do not spin on it
    finally:
        client.close()
    seconds = time.perf_counter() - start
    return {
        "rows_per_request": rows,
        "requests": len(latencies),
        "mean_s_per_request": float(np.mean(latencies)) if latencies else None,
        "rows_per_s": accepted / seconds,
        "seconds": seconds,
        "errors": sum(codes.values()),
        "error_codes": codes,
        "error_sample": sample,
    }


def stress_phase(
    args: argparse.Namespace, port: int, data, forecaster, shards: int, preset: str
) -> dict:
    """``--stress-clients`` small clients, one stream and one row a request each (closed loop),
    for ``--stress-seconds`` alone ("unloaded"), then as long again beside one big client
    sending the most rows a stream may send in a request ("loaded")."""
    from timesclip_export.service.api import shard_for

    client = Client(port)
    icl = forecaster.input_chunk_length
    limits = client.request("GET", "/v1/model")[1].get("limits") or {}
    server_rows = limits.get("max_rows_per_stream")
    rows = args.stress_rows or server_rows or 1024
    n, seconds = args.stress_clients, args.stress_seconds
    cap = min(int(300 * seconds), (len(data[1]) - icl - 2) // 2)  # rows per stream and phase
    streams = Streams.make(n, f"{preset}-stress", len(data[1]), icl + 1 + 2 * cap, seed=4)
    prime(port, streams, data, icl, args.bulk)
    drive(port, streams, data, 1, "per_stream", n, args.bulk)  # warm-up tick
    before = rss_of(client.request("GET", "/v1/stats")[1])
    phases = {"unloaded": drive(port, streams, data, cap, "per_stream", n, args.bulk, seconds)}
    stop, big = threading.Event(), {}
    big_name = f"{preset}-stress-big"
    thread = threading.Thread(
        target=lambda: big.update(big_stream(port, data, big_name, rows, stop)), daemon=True
    )
    thread.start()
    phases["loaded"] = drive(port, streams, data, cap, "per_stream", n, args.bulk, seconds)
    stop.set()
    thread.join(timeout=900)
    after = rss_of(client.request("GET", "/v1/stats")[1])
    check = check_against_rolling(forecaster, streams, data, args.check_streams)
    for name in [*streams.names, big_name]:
        client.request("DELETE", f"/v1/streams/{name}")
    client.close()
    small = {
        phase: {
            key: level[key]
            for key in ("requests", "p50_ms", "p99_ms", "requests_per_s", "errors", "error_sample")
        }
        for phase, level in phases.items()
    }
    ratio = {
        q: small["loaded"][f"{q}_ms"] / small["unloaded"][f"{q}_ms"]
        if small["loaded"]["requests"] and small["unloaded"]["requests"]
        else None
        for q in ("p50", "p99")
    }
    return {
        "preset": preset,
        "shards": shards,
        "small_clients": n,
        "small_streams_on_big_shard": sum(
            shard_for(name, shards) == shard_for(big_name, shards) for name in streams.names
        ),
        "seconds_per_phase": seconds,
        "max_rows_per_stream": {"server": server_rows, "used": rows},
        "small": small,
        "big": big,
        "loaded_over_unloaded": ratio,
        "goal": "small-client p99 loaded within 2x of unloaded",
        "goal_met": None if ratio["p99"] is None else ratio["p99"] <= 2.0,
        "check": check,
        "rss_before": before,
        "rss_after": after,
    }


def run_preset(
    args: argparse.Namespace,
    bundle: Path,
    data,
    preset: str,
    folder: Path,
    steady: bool = False,
    stress: bool = False,
) -> dict:
    """Start a server for ``bundle``, run the stream levels, the one-at-a-time path and the
    in-process ceiling; with ``steady``, an RSS trace under a long bulk load; with ``stress``,
    small clients beside a big one."""
    from timesclip_export.runtime.forecaster import RollingForecaster
    from timesclip_export.service import server

    port = args.port or free_port()
    # --stress-rows is the server's --max-rows-per-stream; not passed otherwise.
    limits = {"max_rows_per_stream": args.stress_rows} if args.stress_rows else {}
    config = server.ServeConfig(
        bundle=str(bundle),
        port=port,
        shards=1,
        batch_size=args.batch_size,
        device="cpu",
        **limits,
    )
    started = time.perf_counter()
    server.start(config, quiet=True)
    startup_s = time.perf_counter() - started
    forecaster = RollingForecaster(bundle, device="cpu", batch_size=config.batch_size)
    icl = forecaster.input_chunk_length
    client = Client(port)
    result: dict = {
        "preset": preset,
        "shards": config.shards,
        "startup_s": round(startup_s, 1),
        "levels": [],
    }
    try:
        result["rss_start"] = rss_of(client.request("GET", "/v1/stats")[1])
        for n, ticks in zip(args.streams, args.ticks, strict=True):
            for mode in ("per_stream", "bulk"):
                if mode == "bulk" and n == 1:
                    continue
                streams = Streams.make(n, f"{preset}-{mode}-{n}", len(data[1]), icl + ticks + 2)
                prime(port, streams, data, icl - 1, args.bulk)
                drive(port, streams, data, 1, mode, args.clients, args.bulk)  # warm-up tick
                before = client.request("GET", "/v1/stats")[1]
                level_rss = rss_of(before)
                level = drive(port, streams, data, ticks, mode, args.clients, args.bulk)
                after = client.request("GET", "/v1/stats")[1]
                level.update(batch_delta(before, after))
                level["rss_before"], level["rss_after"] = level_rss, rss_of(after)
                level["check"] = check_against_rolling(
                    forecaster, streams, data, args.check_streams
                )
                for name in streams.names:  # free the shard for the next level
                    client.request("DELETE", f"/v1/streams/{name}")
                result["levels"].append(level)
                print(_level_line(preset, level), flush=True)
        result["rss_end"] = rss_of(client.request("GET", "/v1/stats")[1])
        if steady:
            result["steady"] = steady_rss(args, port, data, icl, client)
        if stress:
            result["stress"] = stress_phase(args, port, data, forecaster, config.shards, preset)
            print(_stress_lines(result["stress"]), flush=True)
    finally:
        client.close()
        server.stop(config)
    # In this process, with the server stopped: nothing else on the cores.
    forecaster.reset()
    result["one_at_a_time"] = one_at_a_time(forecaster, data, max(args.streams), args.serial_calls)
    result["in_process_pool"] = pool_ceiling(forecaster, data, max(args.streams), args.ticks[-1])
    serial = result["one_at_a_time"]["forecasts_per_s"]
    for level in result["levels"]:
        level["speedup_vs_one_at_a_time"] = level["forecasts_per_s"] / serial
    result["in_process_pool"]["speedup_vs_one_at_a_time"] = (
        result["in_process_pool"]["forecasts_per_s"] / serial
    )
    return result


class Service:
    """``timesclip-darts serve`` as an operator runs it: its own process (group), stopped with
    SIGTERM, started again on the same ``--snapshot-dir``."""

    def __init__(self, bundle: Path, port: int, snapshots: Path, every: float, log: Path) -> None:
        self.command = [
            sys.executable,
            "-m",
            "timesclip_cli.main",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--shards",
            "2",
            "--snapshot-dir",
            str(snapshots),
            "--snapshot-every",
            str(every),
        ]
        self.port, self.log_path = port, log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> float:
        """Start and wait until it answers; the seconds that took."""
        began = time.perf_counter()
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = Client(self.port, timeout=5)
        while time.perf_counter() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}: {self.log_path}")
            try:
                if client.request("GET", "/v1/model")[0] == 200:
                    client.close()
                    return time.perf_counter() - began
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"serve not up after {timeout} s: {self.log_path}")

    def stop(self, timeout: float = 300) -> int | None:
        """SIGTERM (drain, snapshots, stop); SIGKILL to the group only past ``timeout``."""
        process, self.process = self.process, None
        if process is None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return None


def fault_run(args: argparse.Namespace, bundle: Path, data, folder: Path) -> dict:
    """The fault run on a two-shard service of its own (:class:`Service`)."""
    port = free_port()
    service = Service(
        bundle, port, folder / "snapshots_fault", args.snapshot_every, folder / "fault.log"
    )
    service.start()
    try:
        client = Client(port)
        icl = client.request("GET", "/v1/model")[1]["input_chunk_length"]
        client.close()
        result = fault_phase(args, service, data, icl)
    finally:
        service.stop()
    result["server_log_tail"] = service.log_path.read_text(errors="replace").splitlines()[-5:]
    return result


def fault_phase(args: argparse.Namespace, service: Service, data, icl: int) -> dict:
    """Paced rows to timed and untimed streams (half each); a third of the way in shard 0's
    process is killed (SIGKILL: it restarts from its last snapshot, the rows after it are
    lost), two thirds in the whole service gets SIGTERM and is started again. Every client
    runs the documented loop: each request says where its rows start (``"from"``); a 200
    says the stream's new ``position``, a 409 the server's position, from which it re-sends;
    503s and refused connections are retried after a pause. A forecast is keyed by the row
    it follows, so lost (rows that never got one) and duplicated ones (rows re-sent after a
    restore) are counted for untimed streams too."""
    stamps, values, columns = data
    n, ticks = args.fault_streams, args.fault_ticks
    streams = Streams.make(n, "fault", len(values), icl + ticks + 1, seed=7)
    timed = [i % 2 == 0 for i in range(n)]
    received: dict[str, dict[int, list]] = {name: {} for name in streams.names}
    log: dict = {"503": 0, "refused": 0, "404": 0, "409_behind": 0, "409_seen": 0, "ahead": 0}
    log["other"] = []
    lock = threading.Lock()
    workers = min(args.clients, n)
    tick_done = [0] * workers

    def send(c: Client, i: int, upto: int) -> None:
        """Send stream ``i`` its rows up to ``upto`` (exclusive), retrying as a client would."""
        name, o = streams.names[i], int(streams.offsets[i])
        deadline = time.monotonic() + 300
        while streams.sent[i] < upto and time.monotonic() < deadline:
            k = int(streams.sent[i])
            body = {**rows_body(stamps, values, columns, o + k, o + upto), "from": k}
            if not timed[i]:
                del body["timestamps"]
            try:
                status, out = c.request("POST", f"/v1/streams/{name}/rows", body)
            except (OSError, http.client.HTTPException):
                status, out = 0, {}
            with lock:
                if status == 200:
                    position = out["position"]
                    first = position - len(out["forecasts"])  # the row each one follows
                    for r, forecast in enumerate(out["forecasts"], start=first):
                        received[name].setdefault(r, []).append(forecast["values"])
                    streams.sent[i] = position
                elif status == 409 and "position" in out.get("error", {}):
                    position = out["error"]["position"]
                    log["409_behind" if position < k else "409_seen"] += 1
                    log["ahead"] += position > k  # rows landed without an answer
                    streams.sent[i] = position
                elif status in (0, 503):
                    log["503" if status else "refused"] += 1
                elif status == 404 and "raw" in out:  # Serve's proxy: the app is not deployed
                    log["404"] += 1
                else:
                    log["other"].append(f"{status} {str(out)[:200]}")
                    return
            if status in (0, 503) or (status == 404 and "raw" in out):
                time.sleep(0.25)

    def worker(w: int, mine: list[int]) -> None:
        c = Client(service.port, timeout=60)
        try:
            for tick in range(ticks):
                begin = time.monotonic()
                for i in mine:
                    send(c, i, icl + tick)
                tick_done[w] = tick + 1
                time.sleep(max(0.0, args.fault_tick_s - (time.monotonic() - begin)))
        finally:
            c.close()

    groups = [list(range(k, n, workers)) for k in range(workers)]
    threads = [
        threading.Thread(target=worker, args=(w, g), daemon=True) for w, g in enumerate(groups)
    ]
    events: dict = {}
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if "shard0_killed_at_s" not in events and min(tick_done) >= ticks // 3:
            time.sleep(args.snapshot_every * 0.6)  # rows after the last snapshot, to be lost
            client = Client(service.port)
            shard0 = next(
                s for s in client.request("GET", "/v1/stats")[1]["shards"] if s["shard"] == 0
            )
            client.close()
            os.kill(shard0["pid"], signal.SIGKILL)
            events["shard0_killed_at_s"] = round(time.perf_counter() - start, 2)
        elif "sigterm_at_s" not in events and min(tick_done) >= 2 * ticks // 3:
            events["sigterm_at_s"] = round(time.perf_counter() - start, 2)
            events["sigterm_exit_code"] = service.stop()
            events["restart_s"] = round(service.start(), 1)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    client = Client(service.port)
    stats = client.request("GET", "/v1/stats")[1]
    client.close()
    counts = {kind: {"lost": 0, "duplicated": 0, "differing": 0} for kind in ("timed", "untimed")}
    for i, name in enumerate(streams.names):
        kind = counts["timed" if timed[i] else "untimed"]
        for row in range(icl - 1, icl - 1 + ticks):
            got = received[name].get(row, [])
            kind["lost"] += not got
            kind["duplicated"] += max(0, len(got) - 1)
            kind["differing"] += any(g != got[0] for g in got[1:])
    return {
        "streams": n,
        "timed_streams": sum(timed),
        "ticks": ticks,
        "tick_s": args.fault_tick_s,
        "shards": 2,
        "snapshot_every_s": args.snapshot_every,
        **events,
        "restored_after_sigterm": [s.get("restored_from") is not None for s in stats["shards"]],
        "expected_forecasts": n * ticks,
        "lost_forecasts": sum(k["lost"] for k in counts.values()),
        "duplicated_forecasts": sum(k["duplicated"] for k in counts.values()),
        "duplicates_differing": sum(k["differing"] for k in counts.values()),
        "by_kind": counts,
        "retries_503": log["503"],
        "retries_refused_connection": log["refused"],
        "retries_404_not_deployed": log["404"],
        "conflicts_409_stream_behind": log["409_behind"],
        "conflicts_409_already_seen": log["409_seen"],
        "rows_landed_unanswered": log["ahead"],
        "other_errors": len(log["other"]),
        "error_sample": log["other"][:3],
        "seconds": round(seconds, 1),
    }


# ------------------------------------------------------------------------------ overhead
def listening_sockets() -> list[str]:
    """``ss -ltnp`` lines of the sockets this process and its children (Ray) listen on."""
    import subprocess

    ours = {os.getpid()}
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
        except (OSError, IndexError, ValueError):
            continue
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in ours} - ours
        grew = bool(found)
        ours |= found
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    return [
        " ".join(line.split()[3:])
        for line in out.splitlines()
        if any(f"pid={pid}," in line for pid in ours)
    ]


def http_port(config_port: int, sockets: list[str]) -> int | None:
    """The port answering ``GET /healthz``: with direct ingress the ingress replica's own (Ray
    allots it from 30000-31000; Serve's proxy still listens on ``config_port``), else Serve's."""
    found = {int(line.split()[0].rsplit(":", 1)[1]) for line in sockets}
    ports = sorted(p for p in found if 30000 <= p <= 31000) + [config_port]
    for port in ports:
        try:
            if Client(port, timeout=5).request("GET", "/healthz")[0] == 200:
                return port
        except (OSError, http.client.HTTPException):
            continue
    return None


def overhead_child(spec_path: str) -> int:
    """One server (an ingress mode, a thread count) and its three loads; JSON to the spec's
    ``out``. A process of its own: Ray Serve reads its mode switches once, on import."""
    spec = json.loads(Path(spec_path).read_text())
    os.environ.update(INGRESS_MODES[spec["mode"]])
    from timesclip_export.service import server

    data = load_rows(spec["data_dir"])
    config = server.ServeConfig(
        bundle=spec["bundle"],
        port=free_port(),
        batch_size=spec["batch_size"],
        cpus_per_shard=spec["cpus_per_shard"],
    )
    result: dict = {"mode": spec["mode"], "cpus_per_shard": spec["cpus_per_shard"]}
    result["load_average"] = os.getloadavg()
    started = time.perf_counter()
    server.start(config, quiet=True)
    try:
        result["startup_s"] = round(time.perf_counter() - started, 1)
        result["listening"] = listening_sockets()
        port = http_port(config.port, result["listening"])
        if port is None:
            result["error"] = "no port answered GET /healthz"
        else:
            result["port"] = port
            result.update(overhead_loads(spec, port, data))
    finally:
        server.stop(config)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


def overhead_loads(spec: dict, port: int, data) -> dict:
    """One row a request from one client (latency) and from ``clients`` (throughput, a stream
    each: ``per_row_clients``), then ``POST /v1/rows`` of ``bulk`` streams a request; each for
    ``seconds``, closed loop."""
    client = Client(port)
    icl = client.request("GET", "/v1/model")[1]["input_chunk_length"]
    seconds, clients, bulk = spec["seconds"], spec["clients"], spec["bulk"]
    cap = int(400 * seconds)
    out: dict = {}
    loads = {
        "per_row_1_client": (1, "per_stream", 1),
        "per_row_clients": (clients, "per_stream", clients),
        "bulk": (spec["streams"], "bulk", 2),
    }
    for name, (n, mode, workers) in loads.items():
        streams = Streams.make(n, f"oh-{name}", len(data[1]), icl + cap + 2, seed=5)
        prime(port, streams, data, icl - 1, bulk)
        drive(port, streams, data, 2, mode, workers, bulk)  # warm-up
        level = drive(port, streams, data, cap, mode, workers, bulk, seconds)
        out[name] = {k: level[k] for k in LOAD_KEYS}
    shard = client.request("GET", "/v1/stats")[1]["shards"][0]
    out["shard_threads"] = shard.get("threads")  # as the shard reports them
    client.close()
    return out


LOAD_KEYS = ("streams", "requests", "forecasts_per_s", "p50_ms", "p99_ms", "errors")


def in_process(
    bundle: Path, data, threads: int, streams: int, batch_size: int | None, calls: int = 200
) -> dict:
    """The same work without HTTP or Ray, on ``threads`` threads: one row of one stream per
    ``StreamPool.update`` (latency), and the ceiling (a row of ``streams`` streams a call)."""
    import torch
    from timesclip_export.runtime.forecaster import RollingForecaster
    from timesclip_export.service.stream_pool import StreamPool

    torch.set_num_threads(threads)  # the rasteriser follows onnx_threads on the ONNX path
    forecaster = RollingForecaster(
        bundle, device="cpu", batch_size=batch_size or 32, onnx_threads=threads
    )
    stamps, values, _ = data
    icl = forecaster.input_chunk_length
    pool = StreamPool(forecaster)
    o = 1000
    pool.update({"s": {"values": values[o : o + icl - 1], "timestamps": stamps[o : o + icl - 1]}})
    latencies = []
    for k in range(icl - 1, icl - 1 + calls):
        t0 = time.perf_counter()
        pool.update(
            {"s": {"values": values[o + k : o + k + 1], "timestamps": stamps[o + k : o + k + 1]}}
        )
        latencies.append(time.perf_counter() - t0)
    latency = percentiles(latencies[10:])
    return {
        "threads": threads,
        "per_row_p50_ms": latency["p50_ms"],
        "per_row_p99_ms": latency["p99_ms"],
        "ceiling": pool_ceiling(forecaster, data, streams, 4),
    }


def overhead_main(args: argparse.Namespace) -> int:
    """``--overhead``: for each preset, a server per (mode, threads) in a process of its own,
    beside the in-process path on as many threads; writes ``serve_overhead.json``."""
    import shutil
    import subprocess

    data = load_rows(args.data_dir)
    presets = ["tiny", "small"] if args.preset == "both" else [args.preset]
    # --bundle may name a bundle per preset: bundles/bundle_{preset}
    presets = presets[:1] if args.bundle and "{preset}" not in args.bundle else presets
    started = time.perf_counter()
    result: dict = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "port")},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "load_average_start": os.getloadavg(),
        "goals": {"per_row_p50_overhead_ms": 3.0, "bulk_over_ceiling": 0.8},
        "presets": [],
    }
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as scratch:
        folder = Path(scratch)
        for preset in presets:
            bundle = (
                Path(args.bundle.format(preset=preset))
                if args.bundle
                else make_bundle(args, preset, folder)
            )
            runs = [("proxy", t) for t in args.threads if "proxy" in args.modes]
            runs += [(m, min(args.threads)) for m in args.modes if m != "proxy"]
            servers = []
            for mode, threads in runs:
                if mode == "haproxy" and shutil.which("haproxy") is None:
                    servers.append(
                        {
                            "mode": mode,
                            "threads": threads,
                            "error": "no haproxy binary: not measurable here",
                        }
                    )
                    continue
                spec = {
                    "mode": mode,
                    "bundle": str(bundle),
                    "data_dir": args.data_dir,
                    "batch_size": args.batch_size,
                    "cpus_per_shard": 0 if threads == 1 else threads,
                    "seconds": args.overhead_seconds,
                    "clients": args.stress_clients,
                    "bulk": args.bulk,
                    "streams": args.overhead_streams,
                    "out": str(folder / f"{preset}-{mode}-{threads}.json"),
                }
                Path(spec["out"] + ".spec").write_text(json.dumps(spec))
                child = [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_serve",
                    "--overhead-child",
                    spec["out"] + ".spec",
                ]
                done = subprocess.run(child, cwd=root, capture_output=True, text=True, timeout=900)
                if done.returncode or not Path(spec["out"]).is_file():
                    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
                    servers.append({"mode": mode, "threads": threads, "error": " | ".join(tail)})
                    continue
                servers.append({"threads": threads, **json.loads(Path(spec["out"]).read_text())})
            local = {
                t: in_process(bundle, data, t, args.overhead_streams, args.batch_size)
                for t in args.threads
            }
            for run in servers:
                ref = local[run["threads"]]
                if "bulk" in run:
                    run["per_row_overhead_p50_ms"] = (
                        run["per_row_1_client"]["p50_ms"] - ref["per_row_p50_ms"]
                    )
                    run["bulk_over_ceiling"] = (
                        run["bulk"]["forecasts_per_s"] / ref["ceiling"]["forecasts_per_s"]
                    )
                    run["bulk_forecasts_per_s_per_thread"] = (
                        run["bulk"]["forecasts_per_s"] / run["threads"]
                    )
            result["presets"].append(
                {"preset": preset, "servers": servers, "in_process": list(local.values())}
            )
            print(_overhead_lines(result["presets"][-1]), flush=True)
    result["load_average_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out) if args.out else RESULTS / "serve_overhead.json"
    from timesclip_darts.atomic_files import write_text_atomic

    write_text_atomic(out, json.dumps(result, indent=2))
    print(f"\nwrote {out} ({result['seconds']} s)")
    return 0


def _overhead_lines(run: dict) -> str:
    """The overhead table of one preset: a line per server, then the in-process references."""
    lines = [
        f"\n{run['preset']}: mode     thr  1 client p50/p99 ms  N clients fcst/s  p50 ms  "
        "bulk fcst/s  p50 ms  overhead p50 ms  bulk/ceiling",
    ]
    for s in run["servers"]:
        if "bulk" not in s:
            lines.append(f"  {s['mode']:<8} {s['threads']:>3}  {s.get('error')}")
            continue
        one, bulk = s["per_row_1_client"], s["bulk"]
        many = s["per_row_clients"]
        lines.append(
            f"  {s['mode']:<8} {s['threads']:>3}  {one['p50_ms']:>8.1f} {one['p99_ms']:>8.1f}  "
            f"{many['forecasts_per_s']:>16.1f} {many['p50_ms']:>7.1f} "
            f"{bulk['forecasts_per_s']:>12.1f} {bulk['p50_ms']:>7.1f} "
            f"{s['per_row_overhead_p50_ms']:>16.1f} {s['bulk_over_ceiling']:>12.2f}"
        )
    for ref in run["in_process"]:
        lines.append(
            f"  in-process {ref['threads']} thread(s): one row p50 {ref['per_row_p50_ms']:.1f} ms, "
            f"p99 {ref['per_row_p99_ms']:.1f} ms; ceiling {ref['ceiling']['forecasts_per_s']:.1f} "
            f"forecasts/s ({ref['ceiling']['streams']} streams)"
        )
    return "\n".join(lines)


def _level_line(preset: str, level: dict) -> str:
    return (
        f"{preset:<6} {level['streams']:>6} {level['mode']:<10} {level['forecasts_per_s']:>9.1f} "
        f"{level['p50_ms']:>8.1f} {level['p99_ms']:>9.1f} {level['batch_requests'] or 0:>7.1f} "
        f"{level['batch_windows'] or 0:>8.1f} {level['errors']:>6} "
        f"{level['check']['max_abs_diff']:>9.1e}"
    )


def _stress_lines(stress: dict) -> str:
    """The stress case in a few lines: small clients per phase, the big client, the ratios."""
    lines = [
        f"stress ({stress['preset']}, {stress['shards']} shard(s)): {stress['small_clients']} "
        f"small clients ({stress['small_streams_on_big_shard']} on the big stream's shard), 1 row "
        f"a request each, {stress['seconds_per_phase']:g} s per phase"
    ]
    for phase, small in stress["small"].items():
        lines.append(
            f"  {phase:<9} small: {small['requests']:>6} requests, p50 {small['p50_ms']:.1f} ms, "
            f"p99 {small['p99_ms']:.1f} ms, {small['requests_per_s']:.1f} requests/s, errors "
            f"{small['errors']}"
        )
    big = stress["big"]
    mean = big.get("mean_s_per_request")
    lines.append(
        f"  loaded    big: {big.get('rows_per_request')} rows a request, {big.get('requests')} "
        f"requests, {'-' if mean is None else f'{mean:.2f}'} s a request, "
        f"{big.get('rows_per_s', 0):.0f} rows/s, errors {big.get('errors')}"
        + (f" {big['error_codes']}" if big.get("error_codes") else "")
    )
    ratio = stress["loaded_over_unloaded"]
    verdict = {True: "met", False: "NOT met", None: "unknown"}[stress["goal_met"]]
    lines.append(
        f"  loaded/unloaded small p50 x{ratio['p50'] or 0:.2f}, p99 x{ratio['p99'] or 0:.2f}; "
        f"goal ({stress['goal']}): {verdict}"
    )
    return "\n".join(lines)


HEADER = "preset streams mode        fcst/s   p50 ms    p99 ms  req/b  win/call errors  max|diff|"


def print_table(result: dict) -> None:
    print(f"\n{HEADER}  x serial")
    for run in result["presets"]:
        for level in run["levels"]:
            print(f"{_level_line(run['preset'], level)} {level['speedup_vs_one_at_a_time']:>9.1f}")
        serial, pool = run["one_at_a_time"], run["in_process_pool"]
        print(
            f"{run['preset']:<6} {'-':>6} {'serial':<10} {serial['forecasts_per_s']:>9.1f} "
            f"{serial['p50_ms']:>8.1f} {serial['p99_ms']:>9.1f}   RollingForecaster.update, one "
            "row per call, in process"
        )
        print(
            f"{run['preset']:<6} {pool['streams']:>6} {'pool':<10} {pool['forecasts_per_s']:>9.1f}"
            f"{'':>47}{pool['speedup_vs_one_at_a_time']:>9.1f}   StreamPool.update in process "
            "(no HTTP): the ceiling"
        )
        per_level = ", ".join(
            f"{level['streams']} {level['mode']}: {level['rss_before']['shards_rss_mb'][0]:.0f}"
            f"->{level['rss_after']['shards_rss_mb'][0]:.0f}"
            for level in run["levels"]
        )
        print(
            f"{run['preset']:<6} RSS MB shard 0 before -> after each level's timed rows: "
            f"{per_level}; at start {run['rss_start']['shards_rss_mb']}, at end "
            f"{run['rss_end']['shards_rss_mb']}; ingress {run['rss_start']['ingress_rss_mb']} -> "
            f"{run['rss_end']['ingress_rss_mb']}; startup {run['startup_s']} s, "
            f"{run['shards']} shard(s)"
        )
    for run in result["presets"]:
        if "steady" in run:
            trace = run["steady"]["shard_rss_mb"]
            print(
                f"{run['preset']:<6} steady: {run['steady']['streams']} streams x "
                f"{run['steady']['ticks']} bulk rows, shard RSS MB first {trace[0]:.0f}, min "
                f"{min(trace):.0f}, max {max(trace):.0f}, last {trace[-1]:.0f}"
            )
    if "stress" in result:
        print(f"\n{_stress_lines(result['stress'])}")
    fault = result.get("fault")
    if fault:
        kinds = ", ".join(
            f"{kind}: lost {c['lost']}, duplicated {c['duplicated']} (differing {c['differing']})"
            for kind, c in fault["by_kind"].items()
        )
        print(
            f"\nfault: shard 0 killed (SIGKILL) at {fault.get('shard0_killed_at_s')} s, the "
            f"service stopped (SIGTERM, exit {fault.get('sigterm_exit_code')}) at "
            f"{fault.get('sigterm_at_s')} s and up again in {fault.get('restart_s')} s; "
            f"{fault['expected_forecasts']} forecasts expected, lost {fault['lost_forecasts']}, "
            f"duplicated {fault['duplicated_forecasts']} (differing "
            f"{fault['duplicates_differing']}); {kinds}; retries: 503 {fault['retries_503']}, "
            f"refused connection {fault['retries_refused_connection']}, Serve's 404 "
            f"{fault['retries_404_not_deployed']}; 409 behind "
            f"{fault['conflicts_409_stream_behind']}, already seen "
            f"{fault['conflicts_409_already_seen']}; other errors {fault['other_errors']}"
        )


def fault_main(args: argparse.Namespace) -> int:
    """``--fault-only``: the fault run alone, on ``--bundle`` or a tiny model trained here;
    writes ``serve_fault.json``. Exit 1 on a lost forecast or an unexpected error."""
    from timesclip_export.bundle.format import library_versions

    from timesclip_darts.atomic_files import write_text_atomic

    data = load_rows(args.data_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_fault_") as scratch:
        folder = Path(scratch)
        bundle = Path(args.bundle) if args.bundle else make_bundle(args, "tiny", folder)
        fault = fault_run(args, bundle, data, folder)
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "port")},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "versions": library_versions(),
        "fault": fault,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print_table({"presets": [], "fault": fault})
    out = Path(args.out) if args.out else RESULTS / "serve_fault.json"
    write_text_atomic(out, json.dumps(result, indent=2))
    print(f"\nwrote {out} ({result['seconds']} s)")
    return 1 if fault["lost_forecasts"] or fault["other_errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.overhead_child:
        return overhead_child(args.overhead_child)
    if args.overhead:
        return overhead_main(args)
    if args.fault_only:
        return fault_main(args)
    import dataclasses

    import torch
    from timesclip_export.bundle.format import library_versions
    from timesclip_export.service.server import ServeConfig

    if args.stress_rows and "max_rows_per_stream" not in {
        f.name for f in dataclasses.fields(ServeConfig)
    }:
        raise SystemExit("this server has no --max-rows-per-stream yet; drop --stress-rows")

    data = load_rows(args.data_dir)
    presets = ["tiny", "small"] if args.preset == "both" else [args.preset]
    if args.bundle:
        presets = presets[:1]
    started = time.perf_counter()
    result: dict = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "port")},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": library_versions(),
        "data": "ETTm1 (15-minute rows), raw values; stream i replays it from a random offset",
        "presets": [],
    }
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as scratch:
        folder = Path(scratch)
        bundles = {}
        for preset in presets:
            bundles[preset] = (
                Path(args.bundle) if args.bundle else make_bundle(args, preset, folder)
            )
            steady = preset == presets[0] and args.steady_ticks > 0
            stress = preset == presets[0] and not args.no_stress
            run = run_preset(args, bundles[preset], data, preset, folder, steady, stress)
            if stress:
                result["stress"] = run.pop("stress")
            result["presets"].append(run)
        if not args.no_fault:
            result["fault"] = fault_run(args, bundles[presets[0]], data, folder)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_table(result)
    name = "serve_smoke.json" if args.smoke else "serve.json"
    out = Path(args.out) if args.out else RESULTS / name
    from timesclip_darts.atomic_files import write_text_atomic

    write_text_atomic(out, json.dumps(result, indent=2))
    print(f"\nwrote {out} ({result['seconds']} s)")
    errors = sum(level["errors"] for run in result["presets"] for level in run["levels"])
    fault = result.get("fault") or {}
    stress = result.get("stress")
    if stress:  # small clients must not fail; the big one must get something through
        errors += sum(phase["errors"] for phase in stress["small"].values())
        errors += not stress["big"].get("requests")
    return 1 if errors or fault.get("other_errors") else 0


if __name__ == "__main__":
    sys.exit(main())
