"""A real ``timesclip-darts serve`` for the tests: a subprocess on a free loopback port (two
shards, a token, a snapshot folder), started once per session by the ``server`` fixture
(conftest.py) for every module that asks for it; every client call has a timeout, and the
server's whole process group is killed at the end."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

TOKEN = "test-token-0123"
SHARDS = 2
MAX_BYTES = 256 * 1024
START_TIMEOUT_S = 150
HTTP_TIMEOUT_S = 60


# ------------------------------------------------------------------------------ the server
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> dict[int, str]:
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


def alive(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (and not a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


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
        self.launch()
        try:
            self._wait_until_up()
        except BaseException:
            self.stop(timeout=10)
            raise

    def launch(self) -> None:
        """Start the command and return at once (:meth:`start` also waits until it serves)."""
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
        tree = descendants(process.pid)
        try:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            for pid, started in {**tree, **descendants(process.pid)}.items():
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
