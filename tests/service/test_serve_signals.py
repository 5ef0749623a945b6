"""A signal at any moment of ``timesclip-darts serve``'s start-up stops everything the command
started (real servers of ``tests/service/serving.py``, not the session's: each is interrupted).
Stopping a running server under load: ``test_serve.py``."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.service.serving import Server, alive, descendants

pytestmark = pytest.mark.integration  # real Ray Serve servers


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
