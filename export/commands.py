"""``timesclip-darts export`` and ``timesclip-darts stream``, registered on the main command by
:func:`add_commands`. Heavy imports happen inside the commands, so building the parser stays
cheap; user errors are ``ValueError`` subclasses, which the main command prints as one line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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


def cmd_export(args: argparse.Namespace) -> int:
    from timesclip_export.bundle import export_bundle

    manifest = export_bundle(
        args.model_path,
        args.out_dir,
        scaler=False if args.no_scaler else None,
        opset=args.opset,
        optimize=not args.no_optimize,
        overwrite=args.overwrite,
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
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from timesclip_export.runtime import RollingForecaster
    from timesclip_export.stream import stream_forecasts

    forecaster = RollingForecaster(
        args.bundle,
        device=args.device,
        optimized=not args.plain,
        vision_dtype=args.vision_dtype,
        compile_vision=args.compile,
    )
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
