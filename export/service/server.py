"""``timesclip-darts serve BUNDLE``: the deployment runtime behind an HTTP JSON API on Ray Serve,
for many live streams (one forecast per stream after every new row) and stateless windows. This
module starts, stops and snapshots the Serve application (``timesclip``); its deployments are:

- ``Ingress`` (``--replicas``, :mod:`timesclip_export.service.ingress`): the FastAPI routes,
  auth, request limits and validation; no model. It sends each stream's rows to the one shard
  that owns the stream (rendezvous hashing of the stream id, :func:`api.shard_for`).
- ``Shard0`` ... ``Shard{N-1}`` (``--shards``, one replica each,
  :mod:`timesclip_export.service.shard`): a :class:`StreamPool` per shard, so a stream's state
  lives in exactly one process. With ``--snapshot-dir`` a shard writes its pool every
  ``--snapshot-every`` seconds and on shutdown, and restores it when (re)started. Stateless
  ``POST /v1/forecast`` windows are batched on the shards' models too (round-robin, in parts of
  ``--batch-size`` windows).

Metrics are Ray's (``ray.util.metrics``), exported by each node's metrics agent as
``ray_timesclip_serve_*`` on the node's metrics export port. Ray is imported by the service's
deployments only: the runtime (``timesclip_export.runtime``) never imports it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ray import serve
from timesclip_export.service.config import (
    APP_NAME,
    ServeConfig,
    check_snapshot_dir,
    read_manifest,
)
from timesclip_export.service.ingress import Ingress
from timesclip_export.service.shard import Shard

__all__ = ["ServeConfig", "build_app", "run_server", "snapshot_all", "start", "stop"]


def build_app(config: ServeConfig) -> Any:
    """The Serve application: the HTTP ingress and one single-replica deployment per shard."""
    values = asdict(config)
    gpus = {"num_gpus": config.num_gpus} if config.num_gpus else {}
    # Enough concurrency per replica for @serve.batch to fill its batches (one row each).
    ongoing = max(2 * config.batch_size, 64)
    shards = [
        serve.deployment(
            Shard,
            name=f"Shard{i}",
            num_replicas=1,
            max_ongoing_requests=ongoing,
            max_queued_requests=config.max_queued_requests,  # beyond: 503 at the ingress
            ray_actor_options={"num_cpus": config.cpus_per_shard, **gpus},
            health_check_period_s=5,
        ).bind(values, i)
        for i in range(config.shards)
    ]
    ingress = serve.deployment(
        Ingress,
        name="Ingress",
        num_replicas=config.replicas,
        max_ongoing_requests=max(4 * ongoing, 1024),
        ray_actor_options={"num_cpus": 0},
    )
    return ingress.bind(values, *shards)


def shard_handles(config: ServeConfig) -> list[Any]:
    return [
        serve.get_deployment_handle(f"Shard{i}", app_name=APP_NAME) for i in range(config.shards)
    ]


def start(config: ServeConfig, quiet: bool = False) -> None:
    """Connect to (or start) Ray, start Serve's HTTP proxy on ``host:port`` and deploy. Paths
    are made absolute first: replicas may run in another folder (or on another node)."""
    import ray

    config.check()
    for name in ("bundle", "snapshot_dir", "trusted_key"):
        if getattr(config, name):
            setattr(config, name, str(Path(getattr(config, name)).expanduser().resolve()))
    manifest = read_manifest(config)
    from timesclip_export.bundle.format import verify_files

    verify_files(config.bundle, manifest)  # here, not in a crash-looping replica
    check_snapshot_dir(config, manifest)
    if not config.address:
        _check_port_free(config.host, config.port)
    init: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    if config.address:
        ray.init(address=config.address, **init)
    else:
        ray.init(
            address="local",
            include_dashboard=False,
            _metrics_export_port=config.metrics_port,
            **init,
        )
    try:
        # Serve's own timeout backs up the ingress's (a JSON 504) should a handler hang.
        serve.start(
            http_options={
                "host": config.host,
                "port": config.port,
                "request_timeout_s": config.request_timeout_s + 10,
            }
        )
        serve.run(
            build_app(config),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
            logging_config={"enable_access_log": config.access_log},
        )
    except BaseException:
        _teardown(config)
        raise


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ValueError(
                f"cannot listen on {host}:{port} ({err.strerror}); use --port"
            ) from err


def snapshot_all(config: ServeConfig, timeout_s: float = 120) -> list[str | None]:
    """Ask every shard to write its snapshot now (a no-op without ``--snapshot-dir``)."""
    responses = [handle.snapshot.remote() for handle in shard_handles(config)]
    return [r.result(timeout_s=timeout_s) for r in responses]


def stop(config: ServeConfig) -> None:
    """Snapshot the shards, remove the application, and stop a Ray this process started."""
    try:
        if config.snapshot_dir:
            snapshot_all(config)
    finally:
        _teardown(config)


def _teardown(config: ServeConfig) -> None:
    """Remove the application: on a cluster only ours (other Serve apps stay), on the local Ray
    this process started, Serve and Ray themselves."""
    import ray

    if config.address:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()


def run_server(config: ServeConfig) -> int:
    """``timesclip-darts serve``: serve until SIGINT or SIGTERM, then snapshot and stop."""
    stopping = threading.Event()
    start(config)
    # After ray.init, which installs its own handlers: stop cleanly (snapshots) on either.
    previous = {
        sig: signal.signal(sig, lambda *_: stopping.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        where = f"http://{config.host}:{config.port}"
        print(
            f"serving {config.bundle} at {where} (shards: {config.shards}, replicas: "
            f"{config.replicas}, device: {config.device}, auth: "
            f"{'bearer token' if config.token else 'none'}, snapshots: "
            f"{config.snapshot_dir or 'none'}); Ctrl-C stops",
            flush=True,
        )
        if config.metrics_port and not config.address:
            print(
                f"metrics: http://127.0.0.1:{config.metrics_port}/metrics (ray_timesclip_serve_*)",
                flush=True,
            )
        while not stopping.wait(0.5):
            pass
        print("stopping: writing snapshots" if config.snapshot_dir else "stopping", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop(config)
    print("stopped", file=sys.stderr, flush=True)
    return 0
