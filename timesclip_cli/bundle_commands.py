"""``timesclip-darts export``, ``stream``, ``keygen`` and ``serve``, registered on the main command
by :func:`add_commands`. Heavy imports happen inside the commands, so building the parser stays
cheap; user errors are ``ValueError`` subclasses, which the main command prints as one line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from timesclip_cli.errors import UsageError
from timesclip_cli.mlflow_logging import check_mlflow_arguments, log_bundle_to_mlflow

TOKEN_ENV = "TIMESCLIP_SERVE_TOKEN"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``stream`` subcommands to the ``timesclip-darts`` parser."""
    export = subparsers.add_parser(
        "export",
        help="export a trained model as a bundle for the deployment runtime",
        description="Write a bundle (ONNX text and fusion graphs, their ORT-optimised variants, "
        "the torch.export vision path and manifest.json) for a model saved by `train`. "
        "A scaler saved beside the model (MODEL_PATH.scaler.json) goes into the bundle.",
    )
    export.add_argument("model_path", help="a model saved by `train` or `demo`")
    export.add_argument("out_dir", help="bundle folder to write (replaced only when complete)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    export.add_argument(
        "--no-optimize", action="store_true", help="skip ORT's transformer optimizer"
    )
    export.add_argument(
        "--no-scaler", action="store_true", help="ignore MODEL_PATH.scaler.json if it exists"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    export.add_argument(
        "--sign",
        metavar="KEYFILE",
        default=None,
        help="sign the manifest with this Ed25519 private key (PEM, from `keygen`): writes "
        "manifest.sig, which `stream --trusted-key` checks",
    )
    export.add_argument(
        "--mlflow",
        action="store_true",
        help="log the bundle folder (artifact bundle/) and, unless the run has one, the model "
        "(Darts' MLflow flavor) to MLflow: the run in MLFLOW_RUN_ID, or a new one in "
        "MLFLOW_EXPERIMENT_NAME (or _ID) at MLFLOW_TRACKING_URI (needs the mlflow extra)",
    )
    export.add_argument(
        "--mlflow-register",
        metavar="NAME",
        help="with --mlflow: also register the run's model as a new version of NAME",
    )
    export.set_defaults(func=cmd_export)

    stream = subparsers.add_parser(
        "stream",
        help="forecast after every new CSV row (stdin or a file) with an exported bundle",
        description="Read CSV rows (a time column, then the model's variates in order) and "
        "write one forecast per row that completes a window, as CSV or JSON lines.",
    )
    stream.add_argument("bundle", help="a bundle folder written by `export`")
    stream.add_argument("--input", default="-", help="CSV file (default: standard input)")
    stream.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    stream.add_argument("--output", default=None, help="file (default: standard output)")
    stream.add_argument("--time-col", default=None, help="time column (default: the first)")
    stream.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    _add_vision_argument(stream)
    stream.add_argument(
        "--quantiles",
        nargs="+",
        metavar="Q",
        help="quantiles strictly between 0 and 1, e.g. 0.1 0.5 0.9 (models with a likelihood; "
        "QuantileRegression: fitted ones only), written as <target>_q<q> beside each target",
    )
    stream.add_argument(
        "--trusted-key",
        metavar="PUBLIC_KEY",
        default=None,
        help="refuse the bundle unless its manifest.sig verifies with this Ed25519 public "
        "key (PEM)",
    )
    stream.add_argument(
        "--plain", action="store_true", help="run the plain graphs, not the optimised ones"
    )
    stream.add_argument(
        "--vision-dtype", choices=["float32", "float16", "bfloat16"], default="float32"
    )
    stream.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the vision path (faster; the first rows wait for the compiler)",
    )
    stream.add_argument(
        "--chunk-rows",
        type=int,
        default=1024,
        help="rows per batch when reading a regular file (default 1024)",
    )
    stream.set_defaults(func=cmd_stream)

    keygen = subparsers.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing bundles (export --sign, stream --trusted-key)",
        description="Write a new Ed25519 key pair as PEM files: PRIVATE (PKCS#8, unencrypted, "
        "readable by you only; keep it where bundles are exported) and PUBLIC "
        "(SubjectPublicKeyInfo; give it to the machines that run bundles). Existing files are "
        "never replaced.",
    )
    keygen.add_argument("private_key", help="private key file to write")
    keygen.add_argument("public_key", help="public key file to write")
    keygen.set_defaults(func=cmd_keygen)

    add_serve_command(subparsers)


def cmd_export(args: argparse.Namespace) -> int:
    from timesclip_export.exporter.writer import export_bundle

    check_mlflow_arguments(args)  # before a minute of exporting
    manifest = export_bundle(
        args.model_path,
        args.out_dir,
        scaler=False if args.no_scaler else None,
        opset=args.opset,
        optimize=not args.no_optimize,
        overwrite=args.overwrite,
        sign_key=args.sign,
    )
    model = manifest["model"]
    print(f"exported {args.model_path} -> {args.out_dir} (backbone: {model['backbone']})")
    print(
        f"input {model['input_chunk_length']} x {model['inputs']}, horizon "
        f"{model['output_chunk_length']} of {model['targets']}, frequency "
        f"{manifest['time']['freq']}, scaler: {'yes' if manifest['scaler'] else 'none'}"
    )
    for name, entry in manifest["files"].items():
        error = manifest["export_max_abs_error"].get(name)
        print(f"  {name:<16} {entry['bytes']:>12,d} bytes   max |error| vs torch {error:.1e}")
    for info in manifest["onnx"]["optimized"].values():
        ops = ", ".join(f"{op} x{n}" for op, n in info["fused_operators"].items()) or "none"
        print(f"  fused in {info['file']}: {ops}")
    if manifest.get("signature"):
        key = manifest["signature"]["public_key_sha256"]
        print(f"  signed: manifest.sig (Ed25519, public key sha256 {key[:16]}...)")
    if args.mlflow:
        for line in log_bundle_to_mlflow(args.model_path, args.out_dir, args.mlflow_register):
            print(line)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from timesclip_export.runtime.csv_stream import stream_forecasts
    from timesclip_export.runtime.forecaster import RollingForecaster

    from timesclip_darts.likelihoods import check_quantiles, parse_quantiles

    quantiles = parse_quantiles(args.quantiles) if args.quantiles is not None else []
    forecaster = RollingForecaster(
        args.bundle,
        vision=args.vision,
        device=args.device,
        optimized=not args.plain,
        vision_dtype=args.vision_dtype,
        compile_vision=args.compile,
        trusted_key=args.trusted_key,
    )
    check_quantiles(forecaster.manifest["model"]["likelihood"], quantiles)
    print(f"runtime: {forecaster.describe()}", file=sys.stderr)
    label = "standard input" if args.input == "-" else args.input
    source = sys.stdin if args.input == "-" else open(args.input, newline="")  # noqa: SIM115
    sink = sys.stdout if args.output is None else open(args.output, "w")  # noqa: SIM115
    try:
        count = stream_forecasts(
            forecaster,
            source,
            sink,
            fmt=args.format,
            time_col=args.time_col,
            chunk_rows=args.chunk_rows,
            label=label,
            quantiles=quantiles,
        )
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as Unix filters do, and keep
        # Python from complaining when it flushes standard output at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if source is not sys.stdin:
            source.close()
        if sink is not sys.stdout:
            sink.close()
    target = "standard output" if args.output is None else str(Path(args.output))
    print(f"wrote {count} forecast(s) to {target}", file=sys.stderr)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from timesclip_export.bundle.signing import generate_key_pair

    key = generate_key_pair(args.private_key, args.public_key)
    print(f"wrote {args.private_key} (private, keep it secret) and {args.public_key} (public)")
    print(f"public key sha256 {key}")
    return 0


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:
    """``serve``: the HTTP JSON API on Ray Serve (:mod:`timesclip_export.service.server`)."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a bundle over HTTP (Ray Serve): forecasts for many live streams",
        description="Serve forecasts over an HTTP JSON API (POST /v1/streams/{id}/rows, POST "
        "/v1/rows, POST /v1/forecast, GET /v1/model, GET /healthz) on Ray Serve, on this machine "
        "or a Ray cluster (--address). Streams are sharded by id over --shards stateful shards. "
        "Needs the serve extra: pip install timesclip-darts[serve].",
    )
    serve.add_argument(
        "bundle", help="a bundle folder written by `export` (same path on every node)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    serve.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="HTTP ingress replicas (parsing, auth, fan-out; no model)",
    )
    serve.add_argument(
        "--shards",
        type=int,
        default=1,
        help="model replicas, one StreamPool each; a stream lives on one shard (default 1)",
    )
    serve.add_argument(
        "--num-gpus",
        type=float,
        default=0.0,
        help="GPUs per shard (fractions share a GPU; default 0)",
    )
    serve.add_argument(
        "--cpus-per-shard",
        type=float,
        default=None,
        help="CPUs Ray reserves for each shard; its torch, numba and ONNX Runtime pools run "
        "max(1, round(N)) threads (0: no reservation, one thread; default: this machine's "
        "cores / --shards on a local Ray, 1 with --address)",
    )
    serve.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto' or HEAD:6379; default: start a local Ray); give this "
        "command the cluster's RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH",
    )
    serve.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="require 'Authorization: Bearer TOKEN', TOKEN being this file's first line; the "
        "file must be readable by its owner only (or give TOKEN in $TIMESCLIP_SERVE_TOKEN; "
        "default: no token)",
    )
    # Refused, never used: a token in argv is visible to every local user (ps).
    serve.add_argument("--token", default=None, help=argparse.SUPPRESS)
    serve.add_argument(
        "--allow-open-cluster",
        action="store_true",
        help="serve even on a Ray that answers calls without Ray's own token "
        "(RAY_AUTH_MODE=token not set where its nodes started); refused by default",
    )
    serve.add_argument(
        "--max-request-bytes", type=int, default=8 << 20, help="larger bodies get 413 (8 MiB)"
    )
    serve.add_argument(
        "--max-streams",
        type=int,
        default=None,
        help="per shard; the least recently updated "
        "streams are evicted beyond it (default: no limit)",
    )
    serve.add_argument(
        "--snapshot-dir",
        default=None,
        help="write each shard's streams here and restore them on (re)start",
    )
    serve.add_argument(
        "--snapshot-every", type=float, default=60.0, help="seconds between snapshots (60)"
    )
    serve.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    _add_vision_argument(serve)
    serve.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="windows per device call; larger requests run in steps of this many windows, "
        "between other requests' batches (32 on the CPU, 256 on a GPU)",
    )
    serve.add_argument(
        "--max-rows-per-stream",
        type=int,
        default=1024,
        help="rows of one stream (or window) in one request; more: 413 (1024)",
    )
    serve.add_argument(
        "--max-streams-per-request",
        type=int,
        default=1024,
        help="streams in one POST /v1/rows, windows in one POST /v1/forecast; more: 413 (1024)",
    )
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        help="seconds a request may take; longer: 504 and nothing of it acknowledged (60)",
    )
    serve.add_argument(
        "--max-queued-requests",
        type=int,
        default=1000,
        help="requests waiting for one shard; more: 503 with Retry-After (1000)",
    )
    serve.add_argument(
        "--batch-wait-ms", type=float, default=1.0, help="how long a batch waits to fill (1 ms)"
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Prometheus port of a local Ray's metrics "
        "agent (with --address: the cluster's `ray start --metrics-export-port`)",
    )
    serve.add_argument("--trusted-key", default=None, help="Ed25519 public key (PEM) to require")
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (Ray Serve access log)"
    )
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    token = serve_token(args.token, args.token_file, os.environ.get(TOKEN_ENV))
    try:
        import fastapi  # noqa: F401
        import orjson  # noqa: F401
        import ray.serve  # noqa: F401
    except ImportError:
        print("error: `serve` needs Ray Serve: pip install timesclip-darts[serve]", file=sys.stderr)
        return 2
    from timesclip_export.service.server import ServeConfig, run_server

    config = ServeConfig(
        bundle=args.bundle,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        shards=args.shards,
        num_gpus=args.num_gpus,
        cpus_per_shard=args.cpus_per_shard,
        address=args.address,
        token=token,
        allow_open_cluster=args.allow_open_cluster,
        max_request_bytes=args.max_request_bytes,
        max_streams=args.max_streams,
        snapshot_dir=args.snapshot_dir,
        snapshot_every=args.snapshot_every,
        device=args.device,
        vision=args.vision,
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_rows_per_stream=args.max_rows_per_stream,
        max_streams_per_request=args.max_streams_per_request,
        request_timeout_s=args.request_timeout,
        max_queued_requests=args.max_queued_requests,
        metrics_port=args.metrics_port,
        trusted_key=args.trusted_key,
        access_log=args.access_log,
    )
    return run_server(config)


def serve_token(argv_token: str | None, path: str | None, env_token: str | None) -> str | None:
    """The bearer token of ``serve``: from ``$TIMESCLIP_SERVE_TOKEN`` or ``--token-file``, never
    from argv (``--token``), where every local user sees it (``ps``)."""
    if argv_token is not None:
        raise UsageError(
            f"--token is refused: argv is visible to every local user; give the token in "
            f"${TOKEN_ENV} or in a file readable by you only (--token-file PATH)"
        )
    env_token = env_token or None
    if path is None:
        return env_token
    if env_token is not None:
        raise UsageError(f"give the token once: ${TOKEN_ENV} or --token-file, not both")
    return read_token_file(path)


def read_token_file(path: str) -> str:
    """The first line of ``path``, stripped; refused when empty, unreadable, or readable by the
    file's group or by others."""
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--token-file {path}: {getattr(err, 'strerror', None) or err}") from err
    if mode & 0o077:
        raise ValueError(
            f"--token-file {path} is open to its group or others (mode {mode & 0o777:o}): "
            f"chmod 600 {path}"
        )
    if not token:
        raise ValueError(f"--token-file {path}: the first line is empty")
    return token


def _add_vision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vision",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="the ViT's path: onnx (vision.onnx in onnxruntime, no torch needed), torch "
        "(vision.pt2) or auto (default: torch where torch sees CUDA, onnx elsewhere)",
    )
