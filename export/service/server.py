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

Stopping (SIGINT or SIGTERM, :func:`stop`) drains before it removes anything: every shard
refuses new changes with 503 ``draining`` + ``Retry-After``, finishes the ones in flight and
writes its snapshot; then the application goes. So every row a client saw acknowledged is in a
snapshot. A signal during start-up stops what was started so far (Ray included).

Metrics are Ray's (``ray.util.metrics``), exported by each node's metrics agent as
``ray_timesclip_serve_*`` on the node's metrics export port. Ray is imported by the service's
deployments only: the runtime (``timesclip_export.runtime``) never imports it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
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
from timesclip_export.service.ray_auth import check_ray_auth
from timesclip_export.service.shard import SHUTDOWN_TIMEOUT_S, Shard

__all__ = ["ServeConfig", "build_app", "drain_all", "run_server", "snapshot_all", "start", "stop"]
logger = logging.getLogger("timesclip_export.service.server")
# Seconds Serve's shutdown may take before Ray is stopped regardless.
_TEARDOWN_TIMEOUT_S = 60
# Seconds between the shards' drain and the removal of the application: the answers of the last
# changes are on their way from the ingress through Serve's proxy, which stops with the app.
_ANSWER_GRACE_S = 1.0


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
            graceful_shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,  # room for the last snapshot
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


def start(
    config: ServeConfig, quiet: bool = False, on_ray_up: Callable[[], None] | None = None
) -> None:
    """Connect to (or start) Ray, start Serve's HTTP proxy on ``host:port`` and deploy. Paths
    are made absolute first: replicas may run in another folder (or on another node).
    ``on_ray_up`` runs once Ray is up (:func:`run_server` installs its signal handlers there,
    after Ray's); whatever raises from there on, a signal included, stops what was started."""
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
    try:
        # ray.init puts its own SIGTERM handler in (sys.exit): a SIGTERM while Ray starts
        # unwinds from here, and what Ray had started is stopped below.
        if config.address:
            ray.init(address=config.address, **init)
        else:
            ray.init(
                address="local",
                include_dashboard=False,
                _metrics_export_port=config.metrics_port,
                **init,
            )
        if on_ray_up is not None:
            on_ray_up()
        check_ray_auth(ray.get_runtime_context().gcs_address, config.allow_open_cluster)
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
        _abort(config)
        raise


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        # As Serve's proxy binds: a port whose last connections are in TIME_WAIT (a restart
        # right after a busy stop) is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def drain_all(
    config: ServeConfig, timeout_s: float = SHUTDOWN_TIMEOUT_S, shards: list[int] | None = None
) -> list[str | None]:
    """Drain every shard, or those listed (:meth:`Shard.drain`): new changes get 503
    ``draining``, the ones in flight finish, the snapshot is written. A shard that cannot be
    reached is logged and skipped (its last periodic snapshot stands)."""
    handles = shard_handles(config)
    indices = range(config.shards) if shards is None else shards
    responses = {index: handles[index].drain.remote() for index in indices}
    written: list[str | None] = []
    for index, response in responses.items():
        try:
            written.append(response.result(timeout_s=timeout_s))
        except Exception as err:
            print(f"warning: shard {index} did not drain ({type(err).__name__}: {err})", flush=True)
            written.append(None)
    return written


def stop(config: ServeConfig) -> None:
    """Drain the shards (their snapshots written), remove the application, and stop a Ray
    this process started."""
    try:
        drain_all(config)
        time.sleep(_ANSWER_GRACE_S)
    finally:
        _teardown(config)


def _serving_shards(config: ServeConfig) -> list[int]:
    """The shards whose replica is up, and so may have acknowledged rows (Serve's status)."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # Serve is not (or no longer) reachable: nothing of ours serves
        return []
    deployments = {} if app is None else app.deployments
    return [
        i
        for i in range(config.shards)
        if getattr(deployments.get(f"Shard{i}"), "status", None) == "HEALTHY"
    ]


def _abort(config: ServeConfig) -> None:
    """Stop after a failure or a signal during start-up: the shards already serving (a request
    may have been answered before the deployment finished) drain first, then everything
    started is removed."""
    import ray

    if ray.is_initialized():
        serving = _serving_shards(config)
        if serving:
            drain_all(config, shards=serving)
    _teardown(config)


def _teardown(config: ServeConfig) -> None:
    """Remove the application: on a cluster only ours (other Serve apps stay), on the local Ray
    this process started, Serve and Ray themselves; Ray is left after at most
    ``_TEARDOWN_TIMEOUT_S`` of that, so that a broken Serve never keeps the command from
    ending (nor hides the error that stopped it)."""
    import ray

    if not ray.is_initialized():
        return
    remove = (lambda: serve.delete(APP_NAME)) if config.address else serve.shutdown
    done = threading.Thread(target=_quietly(remove), daemon=True)
    done.start()
    done.join(_TEARDOWN_TIMEOUT_S)
    ray.shutdown()


def _quietly(fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            logger.exception("stopping Serve failed; stopping Ray regardless")

    return run


class _Interrupted(BaseException):
    """SIGINT or SIGTERM during start-up: unwinds :func:`start`, which stops what it began."""


def run_server(config: ServeConfig) -> int:
    """``timesclip-darts serve``: serve until SIGINT or SIGTERM, then drain, snapshot and stop.
    A signal while Ray starts is acted on once it is up; one while Serve deploys interrupts
    the deployment; either way everything started is stopped."""
    stopping = threading.Event()
    interruptible = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()
        if interruptible.is_set():
            interruptible.clear()
            raise _Interrupted(signum)

    def on_ray_up() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # again: ray.init installs its own
            signal.signal(sig, on_signal)
        if stopping.is_set():
            raise _Interrupted(signal.SIGTERM)
        interruptible.set()
        print("Ray is up; deploying (each shard loads the model)", flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        start(config, on_ray_up=on_ray_up)
        interruptible.clear()  # inside the try: a signal up to here is handled below
    except BaseException as err:
        # A signal: ours (_Interrupted, which Ray's compiled code may re-raise as another
        # error) or Ray's own SIGTERM handler while Ray starts (SystemExit).
        if not (stopping.is_set() or isinstance(err, SystemExit)):
            _restore(previous)
            raise
        _while_stopping(previous)
        try:
            _abort(config)  # a no-op unless the signal came just after start() returned
        finally:
            _restore(previous)
        print("stopped during start-up", file=sys.stderr, flush=True)
        return 0
    try:
        if not stopping.is_set():  # else a signal came between the deployment and here
            _serve_until_stopped(config, stopping)
        print(
            "stopping: draining, then writing snapshots" if config.snapshot_dir else "stopping",
            flush=True,
        )
    finally:
        _while_stopping(previous)
        try:
            stop(config)
        finally:
            _restore(previous)
    print("stopped", file=sys.stderr, flush=True)
    return 0


def _serve_until_stopped(config: ServeConfig, stopping: threading.Event) -> None:
    where = f"http://{config.host}:{config.port}"
    print(
        f"serving {config.bundle} at {where} (shards: {config.shards}, replicas: "
        f"{config.replicas}, device: {config.device}, auth: "
        f"{'bearer token' if config.token_sha256 else 'none'}, snapshots: "
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


def _while_stopping(previous: dict) -> None:
    """Signals while draining and stopping: Ctrl-C again interrupts the drain (Ray is still
    stopped), a repeated SIGTERM is ignored, so that it cannot end the process before Ray is
    stopped."""
    signal.signal(signal.SIGINT, previous[signal.SIGINT])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _restore(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
