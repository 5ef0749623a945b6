"""The options of ``timesclip-darts serve`` (:class:`ServeConfig`) and the files they name: the
bundle's manifest and the snapshot folder's layout. No Ray: the CLI, the shards, the ingress and
the launcher (:mod:`timesclip_export.service.server`) all read them from here."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import InitVar, dataclass
from pathlib import Path

from timesclip_darts.atomic_files import write_text_atomic

APP_NAME = "timesclip"
# Windows per device call by default. It is also the step in which a large request runs between
# other requests' batches, so on a CPU, where a window costs the same in a batch of 32 as of 256,
# a small step keeps other streams' latency low; a GPU needs large batches to be busy.
CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 256
LAYOUT_FILE = "layout.json"
SNAPSHOT_FORMAT = "shard-{index}-of-{shards}.snapshot"
LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


@dataclass
class ServeConfig:
    """Options of ``timesclip-darts serve`` (see its ``--help``)."""

    bundle: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    shards: int = 1
    num_gpus: float = 0.0
    cpus_per_shard: float | None = None  # None: local_cpus() // shards on a local Ray, else 1
    address: str | None = None
    # The bearer token is given as ``token`` and kept only as its digest: the config is sent to
    # every replica (and kept in Ray's control store), so the plaintext never leaves this process.
    token: InitVar[str | None] = None
    token_sha256: str | None = None
    allow_open_cluster: bool = False
    max_request_bytes: int = 8 << 20
    max_streams: int | None = None
    snapshot_dir: str | None = None
    snapshot_every: float = 60.0
    device: str = "cpu"
    vision: str = "auto"
    batch_size: int | None = None  # None: CPU_BATCH_SIZE on the CPU, else GPU_BATCH_SIZE
    batch_wait_ms: float = 1.0
    max_rows_per_stream: int = 1024
    max_streams_per_request: int = 1024
    request_timeout_s: float = 60.0
    max_queued_requests: int = 1000
    metrics_port: int | None = None
    trusted_key: str | None = None
    access_log: bool = False

    def __post_init__(self, token: str | None) -> None:
        if token is not None:
            if not token.strip():
                raise ValueError("the bearer token is empty")
            self.token_sha256 = token_digest(token)

    def limits(self) -> dict:
        """The bounds of the work one request may ask for (``GET /v1/model``)."""
        return {
            "max_request_bytes": self.max_request_bytes,
            "max_rows_per_stream": self.max_rows_per_stream,
            "max_streams_per_request": self.max_streams_per_request,
            "windows_per_device_call": self.batch_size,
            "request_timeout_s": self.request_timeout_s,
        }

    def check(self) -> None:
        if self.batch_size is None:
            self.batch_size = CPU_BATCH_SIZE if self.device == "cpu" else GPU_BATCH_SIZE
        for name in (
            "replicas",
            "shards",
            "batch_size",
            "max_rows_per_stream",
            "max_streams_per_request",
            "max_queued_requests",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.request_timeout_s <= 0:
            raise ValueError("--request-timeout must be positive (seconds)")
        if self.num_gpus < 0:
            raise ValueError("--num-gpus must be 0 or more")
        if self.cpus_per_shard is None:
            self.cpus_per_shard = 1 if self.address else max(1, local_cpus() // self.shards)
        if not self.cpus_per_shard >= 0:  # also refuses NaN
            raise ValueError("--cpus-per-shard must be 0 or more")
        if self.max_request_bytes < 1024:
            raise ValueError("--max-request-bytes must be at least 1024")
        if self.max_streams is not None and self.max_streams < 1:
            raise ValueError("--max-streams must be at least 1")
        if self.snapshot_every <= 0:
            raise ValueError("--snapshot-every must be positive (seconds)")
        if self.batch_wait_ms < 0:
            raise ValueError("--batch-wait-ms must be 0 or more")


def token_digest(token: str) -> str:
    """The hex SHA-256 of a bearer token: what the ingress compares a presented token's with."""
    return hashlib.sha256(token.encode()).hexdigest()


def local_cpus() -> int:
    """The cores this process may run on (its affinity, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shard_threads(config: ServeConfig) -> int:
    """Threads of each shard's torch, numba and ONNX Runtime pools: ``--cpus-per-shard``
    rounded, at least 1 (0 reserves no core and runs one thread)."""
    return max(1, round(config.cpus_per_shard or 0))


def snapshot_path(config: ServeConfig, index: int) -> Path | None:
    if not config.snapshot_dir:
        return None
    return Path(config.snapshot_dir) / SNAPSHOT_FORMAT.format(index=index, shards=config.shards)


def check_snapshot_dir(config: ServeConfig, manifest: dict) -> None:
    """Create ``--snapshot-dir`` or check that its snapshots hold streams of this kind of bundle
    (the same inputs, input length and time index: a retrained model continues them) and of
    this many shards (streams are placed by shard count: another count would misroute them)."""
    from timesclip_export.service.stream_pool import manifest_digest, state_layout

    if not config.snapshot_dir:
        return
    folder = Path(config.snapshot_dir)
    folder.mkdir(parents=True, exist_ok=True)
    layout = {"shards": config.shards, "streams": state_layout(manifest)}
    path = folder / LAYOUT_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is unreadable ({err}); use another --snapshot-dir") from err
        if not isinstance(found, dict):
            raise ValueError(f"{path} is not a snapshot layout; use another --snapshot-dir")
        if found.get("shards") != config.shards:
            raise ValueError(
                f"--snapshot-dir {folder} holds snapshots of {found.get('shards')} shard(s); "
                f"streams are placed by the number of shards, so start with --shards "
                f"{found.get('shards')} or use an empty folder"
            )
        same_bundle = found.get("bundle_manifest_sha256") == manifest_digest(manifest)
        if found.get("streams") != layout["streams"] and not same_bundle:
            raise ValueError(
                f"--snapshot-dir {folder} holds streams of a bundle with other inputs, input "
                "length or time index; use an empty folder"
            )
        if found == layout:
            return
    write_text_atomic(path, json.dumps(layout))


def read_manifest(config: ServeConfig) -> dict:
    from timesclip_export.bundle.format import read_manifest

    return read_manifest(config.bundle, trusted_key=config.trusted_key)
