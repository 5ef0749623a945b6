"""Stopping ``timesclip-darts serve`` loses nothing it acknowledged, and a signal at any moment of
start-up stops everything the command started (real servers, ``tests/service/serving.py``)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DATA_DIR, ETTH1_COLUMNS
from tests.service.serving import Server, alive, descendants

pytestmark = pytest.mark.integration  # real Ray Serve servers

STREAMS = 20


@pytest.fixture(scope="module")
def ett() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv", nrows=400)


def _body(ett: pd.DataFrame, start: int, rows: int, timed: bool, position: int) -> dict:
    part = ett.iloc[start : start + rows]
    body: dict = {"values": {c: part[c].tolist() for c in ETTH1_COLUMNS}, "from": position}
    if timed:
        body["timestamps"] = part["date"].tolist()
    return body


def test_sigterm_under_load_keeps_every_acknowledged_row_and_no_refused_one(
    server: Server, ett: pd.DataFrame
) -> None:
    """Rows go to 20 streams (timed and untimed) without pause; SIGTERM mid-load. The ingress
    answers 503 while the shards drain and snapshot; after a restart each stream holds exactly
    the rows the client saw acknowledged (a request cut off without an answer may or may not
    have landed), and the client's loop continues every stream from the position it is told."""
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
                body = _body(ett, acked[name], rows, "-t" in name, acked[name])
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
        while sum(acked.values()) < 10 * STREAMS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(acked.values()) >= 10 * STREAMS, f"too slow: {acked}"
        assert server.stop() == 0  # SIGTERM while the clients keep sending
        assert "stopping: draining" in server.log_path.read_text()
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert problems == [] and statuses.count(200) >= STREAMS
    server.start()
    for name in names:
        status, info = server.request("GET", f"/v1/streams/{name}")
        assert status == 200, (name, info)
        landed = {acked[name], acked[name] + unsure.get(name, 0)}
        assert info["position"] in landed, (name, info, acked[name], unsure.get(name))
        # The client's loop: it sends from where it believes the stream is; a 409 names the
        # server's position, from which it re-sends.
        believed = acked[name] + unsure.get(name, 0)
        body = _body(ett, believed, 1, "-t" in name, believed)
        status, out = server.request("POST", f"/v1/streams/{name}/rows", body)
        if info["position"] != believed:
            assert status == 409 and out["error"]["position"] == info["position"], out
            body = _body(ett, info["position"], 1, "-t" in name, info["position"])
            status, out = server.request("POST", f"/v1/streams/{name}/rows", body)
        assert status == 200 and out["position"] == info["position"] + 1, out


def _wait_for_line(server: Server, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_path.read_text(errors="replace"):
        assert server.process is not None and server.process.poll() is None, server.tail()
        assert time.monotonic() < deadline, f"no {text!r} in time:\n{server.tail()}"
        time.sleep(0.1)


@pytest.mark.parametrize("moment", ["sigterm while Ray starts", "sigint to the group deploying"])
def test_a_signal_during_start_up_stops_everything_the_command_started(
    moment: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    server = Server(tiny_bundle, tmp_path / "snapshots", tmp_path / "server.log")
    server.launch()
    assert server.process is not None
    process = server.process
    seen: dict[int, str] = {}  # every process the command started, while it runs

    def watch() -> None:
        while process.poll() is None:
            seen.update(descendants(process.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        if moment.startswith("sigterm"):
            deadline = time.monotonic() + 60  # Ray's first processes: inside ray.init
            while not seen and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
        else:
            _wait_for_line(server, "deploying", 120)
            time.sleep(1.0)  # the shards are loading the model
            os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal does
        code = process.wait(timeout=120)
        watcher.join(5)
        assert seen, "the command started no process before the signal"
        assert code == 0, server.tail()
        assert "stopped" in server.tail(), server.tail()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = [pid for pid, started in seen.items() if alive(pid, started)]
            if not left:
                break
            time.sleep(0.5)
        assert not left, f"left running: {left}\n{server.tail()}"
    finally:
        server.stop(timeout=10)
