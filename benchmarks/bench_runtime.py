"""Forecasts per second of the deployment runtime against the Darts model, same windows, same
process; streaming latency per update. See README_runtime.md for measured numbers.

    python -m benchmarks.bench_runtime                     # tiny preset, whole ETTh1 test split
    python -m benchmarks.bench_runtime --preset small --windows 512
    python -m benchmarks.bench_runtime --smoke             # seconds; what the tests run

It trains a model (or takes ``--model``), exports a bundle without scaler (or takes
``--bundle``), and on the first ``--windows`` stride-1 windows of the ETTh1 test split (scaled,
as Darts sees them) times ``historical_forecasts(retrain=False, last_points_only=False)``
against ``RollingForecaster.rolling`` (both vision paths, ``vision.pt2`` in torch and
``vision.onnx`` in ONNX Runtime, with optimised and plain graphs, optionally the compiled torch
vision), checks that all give the same numbers, then times ``update`` one row at a time on
each vision path (and Darts' ``predict`` per new row). ``--vit-presets`` times the ViT alone,
images per second in torch (``vision.pt2``) and ONNX Runtime (``vision.opt.onnx``) at
``--vit-batches``, alternated in one run. On a machine with CUDA (torch and onnxruntime-gpu) it
repeats the comparison there, with the torch vision path in fp32, fp16 and bf16 and the ONNX
one on ORT's CUDA provider. Prints a table and writes JSON (``--out``, default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

# The timing helpers live in bench_gpu, which runs as a plain file too (its docstring).
from benchmarks.bench_gpu import HALF_TOLERANCE, INPUT, darts_pass, percentiles, streaming, timed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--model", help="a saved TimesCLIPModel (default: train one)")
    parser.add_argument("--bundle", help="its exported bundle (default: export one)")
    parser.add_argument("--windows", type=int, default=None, help="default: whole test split")
    parser.add_argument("--horizon", type=int, default=96, help="horizon of a new model")
    parser.add_argument("--train-windows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256, help="runtime windows per pass")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved passes of each path (best counts)"
    )
    parser.add_argument("--stream-updates", type=int, default=200)
    parser.add_argument("--darts-stream-updates", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time the compiled vision")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and ORT CPU threads (default: theirs)"
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA comparison")
    parser.add_argument(
        "--vit-presets",
        nargs="*",
        choices=["tiny", "small", "base"],
        default=["small", "base"],
        help="presets whose ViT is timed alone, torch vs ONNX Runtime (default: small base)",
    )
    parser.add_argument("--vit-batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--only-vit", action="store_true", help="time the ViT alone (--vit-presets), nothing else"
    )
    parser.add_argument("--data-dir", help="ETT CSV folder (default ../shared/data/ETT)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/<name>.json)")
    parser.add_argument("--smoke", action="store_true", help="a few-second run on 16 windows")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.windows, args.horizon = "tiny", args.windows or 16, 24
        args.train_windows, args.repeats = 64, 2
        args.stream_updates, args.darts_stream_updates = 8, 2
        args.vit_presets, args.vit_batches = ["tiny"], [8]
    return args


def train_model(args: argparse.Namespace, splits, folder: Path) -> Path:
    from timesclip_darts import TimesCLIPModel

    model = TimesCLIPModel(
        INPUT,
        args.horizon,
        clip_model_name=args.preset,
        d_model=32 if args.preset == "tiny" else 128,
        n_heads=4,
        n_epochs=1,
        batch_size=64,
        random_state=0,
        pl_trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False},
    )
    model.fit(splits.train, max_samples_per_ts=args.train_windows)
    path = folder / f"timesclip_{args.preset}.pt"
    model.save(str(path))
    return path


def compare_throughput(args, model, bundle: Path, test, values: np.ndarray, device: str):
    """Darts' ``historical_forecasts`` and the runtime variants on the same windows.

    The passes are interleaved ``--repeats`` times and the best time of each counts, so load
    from other processes on the machine hits every path alike. Darts' frozen-ViT feature cache
    (a training aid) is turned off: repeating the same windows would hit it, which a stream of
    new windows never does.
    """
    from timesclip_export.runtime.forecaster import RollingForecaster

    variants = [
        (f"runtime, {graphs} graphs, vision {vision}", {"vision": vision, "optimized": optimized})
        for vision in ("onnx", "torch")
        for graphs, optimized in (("optimised", True), ("plain", False))
    ]
    if args.compile:
        variants.append(
            (
                "runtime, optimised, compiled torch vision",
                {"vision": "torch", "compile_vision": True},
            )
        )
    if device == "cuda":
        variants += [
            (
                f"runtime, optimised, torch vision {dtype}",
                {"vision": "torch", "vision_dtype": dtype},
            )
            for dtype in ("float16", "bfloat16")
        ]
    horizon = model.output_chunk_length
    model.model.core.vision.cache = None
    darts_pass(model, test[-(INPUT + horizon + 3) :], horizon)
    forecasters, warmups = {}, {}
    for label, kwargs in variants:
        forecasters[label] = RollingForecaster(
            bundle,
            device=device,
            batch_size=args.batch_size,
            apply_scaler=False,
            onnx_threads=args.threads,
            **kwargs,
        )
        warmups[label], _ = timed(lambda f=forecasters[label]: f.rolling(values[: INPUT + 7]))
    best = dict.fromkeys(["darts", *forecasters], float("inf"))
    outputs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        seconds, reference = darts_pass(model, test, horizon)
        best["darts"] = min(best["darts"], seconds)
        for label, forecaster in forecasters.items():
            seconds, outputs[label] = timed(lambda f=forecaster: f.rolling(values))
            best[label] = min(best[label], seconds)
    n = len(reference)
    rows = [
        {
            "path": "Darts historical_forecasts",
            "device": device,
            "seconds": best["darts"],
            "windows_per_s": n / best["darts"],
        }
    ]
    fp32 = outputs[variants[0][0]]
    for label, kwargs in variants:
        out = outputs[label]
        row = {
            "path": label,
            "device": device,
            "seconds": best[label],
            "windows_per_s": n / best[label],
            "speedup_vs_darts": best["darts"] / best[label],
            "max_abs_diff_vs_darts": float(np.abs(out - reference).max()),
            "warmup_s": warmups[label],
            "describe": forecasters[label].describe(),
        }
        if "vision_dtype" in kwargs:
            diff = float(np.abs(out - fp32).max())
            row["max_abs_diff_vs_fp32"] = diff
            row["within_1e-3_of_fp32"] = diff <= HALF_TOLERANCE
        rows.append(row)
    return rows


def vit_throughput(preset: str, batches: list[int], repeats: int, threads: int | None) -> list:
    """Images per second of one preset's ViT alone: ``vision.pt2`` in torch against
    ``vision.opt.onnx`` and ``vision.onnx`` in ONNX Runtime (CPU), on the same CLIP-normalised
    pixels, alternated ``repeats`` times (best counts), with the largest difference."""
    import onnxruntime as ort
    import torch
    from timesclip_export.bundle.format import load_vision_program
    from timesclip_export.exporter import graphs
    from timesclip_export.runtime.engine import session_options

    from timesclip_darts import TimesCLIP

    core = graphs.export_core(TimesCLIP(INPUT, 1, 24, clip_model_name=preset))
    config = core.vision.backbone.config
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_vit_") as folder:
        folder = Path(folder)
        example = graphs.example_windows(2, INPUT, 1)
        graphs.export_vision(core, folder / "vision.pt2", example)
        graphs.export_vision_onnx(core, folder / "vision.onnx", example, graphs.DEFAULT_OPSET)
        fused = graphs.optimize_graph(
            folder / "vision.onnx",
            folder / "vision.opt.onnx",
            config.num_attention_heads,
            config.hidden_size,
        )
        program = load_vision_program(folder / "vision.pt2", "cpu")
        sessions = {
            graph: ort.InferenceSession(
                str(folder / f"vision.{suffix}onnx"),
                session_options(threads),
                providers=["CPUExecutionProvider"],
            )
            for graph, suffix in (("onnx", "opt."), ("onnx_plain", ""))
        }
        for batch in batches:
            pixels = graphs.vision_pixels(core, graphs.example_windows(batch, INPUT, 1, seed=2))
            feed = {"pixels": pixels.numpy()}
            with torch.inference_mode():
                program(pixels[:2])  # warm up
                for session in sessions.values():
                    session.run(None, {"pixels": feed["pixels"][:2]})
                best = dict.fromkeys(["torch", *sessions], float("inf"))
                outputs = {}
                for _ in range(repeats):
                    seconds, expected = timed(lambda p=pixels: program(p))
                    best["torch"] = min(best["torch"], seconds)
                    for graph, session in sessions.items():
                        seconds, (outputs[graph],) = timed(lambda s=session, f=feed: s.run(None, f))
                        best[graph] = min(best[graph], seconds)
            expected = expected.numpy()
            rows.append(
                {
                    "preset": preset,
                    "image_size": int(core.image_size),
                    "batch": batch,
                    "torch_images_per_s": batch / best["torch"],
                    "onnx_images_per_s": batch / best["onnx"],
                    "onnx_plain_images_per_s": batch / best["onnx_plain"],
                    "onnx_vs_torch": best["torch"] / best["onnx"],
                    "onnx_plain_vs_torch": best["torch"] / best["onnx_plain"],
                    "max_abs_diff": max(
                        float(np.abs(out - expected).max()) for out in outputs.values()
                    ),
                    "fused_operators": fused,
                }
            )
    return rows


def vit_only(args: argparse.Namespace) -> int:
    """``--only-vit``: the ViT table alone, printed and written as JSON."""
    import torch
    from timesclip_export.bundle.format import library_versions

    rows = []
    for preset in args.vit_presets:
        rows += vit_throughput(preset, args.vit_batches, args.repeats, args.threads)
    config = {"torch_threads": torch.get_num_threads(), "repeats": args.repeats}
    result = {"config": config, "versions": library_versions(), "vit": rows}
    print_vit_table(result)
    out = Path(args.out) if args.out else RESULTS / "runtime_vit_cpu.json"
    from timesclip_darts.atomic_files import write_text_atomic

    write_text_atomic(out, json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


def darts_streaming(model, test, horizon: int, updates: int) -> dict[str, float]:
    """Darts' way to forecast after one new row: ``predict`` on the latest window."""
    latencies = []
    for j in range(updates + 1):
        start = time.perf_counter()
        model.predict(horizon, series=test[j : j + INPUT], verbose=False)
        latencies.append(time.perf_counter() - start)
    return percentiles(latencies[1:])  # the first call sets up the trainer


def cuda_available() -> bool:
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def print_table(result: dict) -> None:
    config = result["config"]
    print(
        f"\nTimesCLIP runtime vs Darts: preset {config['preset']}, input {INPUT}, horizon "
        f"{config['horizon']}, {config['windows']} windows of the ETTh1 test split, torch "
        f"threads {config['torch_threads']}"
    )
    header = f"{'path':<40} {'device':<6} {'windows/s':>10} {'seconds':>8} {'vs Darts':>9}"
    print(header + f" {'max|diff|':>10}")
    print("-" * (len(header) + 11))
    for row in result["throughput"]:
        ratio = row.get("speedup_vs_darts")
        speedup = f"{ratio:.2f}x" if ratio else "-"
        print(
            f"{row['path']:<40} {row['device']:<6} {row['windows_per_s']:>10.1f} "
            f"{row['seconds']:>8.2f} {speedup:>9} "
            f"{row.get('max_abs_diff_vs_darts', 0.0):>10.1e}"
        )
    for key, stats in result["streaming"].items():
        device = key.split(",")[0]
        darts = result["darts_streaming"].get(device)
        extra = ""
        if darts:
            extra = (
                f"; Darts predict per row p50 {darts['p50_ms']:.1f} ms "
                f"({darts['p50_ms'] / stats['p50_ms']:.0f}x slower)"
            )
        print(
            f"streaming update, 1 row, {key}: p50 {stats['p50_ms']:.2f} ms, p99 "
            f"{stats['p99_ms']:.2f} ms over {stats['n']} updates{extra}"
        )
    if result.get("vit"):
        print_vit_table(result)


def print_vit_table(result: dict) -> None:
    config = result["config"]
    print(f"\nThe ViT alone, CPU, torch threads {config['torch_threads']}:")
    print(
        f"{'preset':<7} {'px':>4} {'batch':>6} {'torch img/s':>12} {'ORT opt':>8} "
        f"{'x':>6} {'ORT plain':>10} {'x':>6}"
    )
    for row in result["vit"]:
        print(
            f"{row['preset']:<7} {row['image_size']:>4} {row['batch']:>6} "
            f"{row['torch_images_per_s']:>12.1f} {row['onnx_images_per_s']:>8.1f} "
            f"{row['onnx_vs_torch']:>5.2f}x {row['onnx_plain_images_per_s']:>10.1f} "
            f"{row['onnx_plain_vs_torch']:>5.2f}x  max|diff| {row['max_abs_diff']:.1e}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    from timesclip_export.bundle.format import library_versions
    from timesclip_export.exporter.writer import export_bundle

    if args.threads:
        # Lightning resets torch's threads to the core count at fit unless OMP_NUM_THREADS is set.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    if args.only_vit:
        return vit_only(args)

    from timesclip_darts import TimesCLIPModel
    from timesclip_darts.data import ett_splits, load_darts_dataset

    splits = ett_splits(load_darts_dataset("ETTh1", args.data_dir), "ETTh1", INPUT)
    with tempfile.TemporaryDirectory(prefix="bench_runtime_") as scratch:
        scratch = Path(scratch)
        model_path = Path(args.model) if args.model else train_model(args, splits, scratch)
        bundle = Path(args.bundle) if args.bundle else scratch / "bundle"
        if not args.bundle:
            export_bundle(model_path, bundle, scaler=False)
        model = TimesCLIPModel.load(str(model_path))
        horizon = model.output_chunk_length
        available = len(splits.test) - INPUT - horizon + 1
        n = min(args.windows or available, available)
        test = splits.test[: INPUT + horizon + n - 1]
        values = test.values().astype(np.float32)[: INPUT + n - 1]
        times = test.time_index.values

        result: dict = {
            "config": {
                "preset": model.core.backbone_info.name,
                "horizon": horizon,
                "windows": n,
                "runtime_batch_size": args.batch_size,
                "darts_batch_size": model.batch_size,
                "repeats": args.repeats,
                "torch_threads": torch.get_num_threads(),
                "onnx_threads": args.threads or "onnxruntime default",
                "smoke": args.smoke,
                "darts_feature_cache": "off for the timed passes (see compare_throughput)",
            },
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpu_count": os.cpu_count(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            "versions": library_versions(),
            "throughput": [],
            "streaming": {},
            "darts_streaming": {},
            "vit": [],
        }
        devices = ["cpu"] + (["cuda"] if cuda_available() and not args.no_gpu else [])
        for device in devices:
            if device == "cuda":
                model = TimesCLIPModel.load(
                    str(model_path),
                    pl_trainer_kwargs={"accelerator": "gpu", "devices": 1},
                    map_location="cuda",
                )
            result["throughput"] += compare_throughput(args, model, bundle, test, values, device)
            for vision in ("onnx", "torch"):
                result["streaming"][f"{device}, vision {vision}"] = streaming(
                    bundle,
                    values,
                    times,
                    min(args.stream_updates, n),
                    device,
                    args.threads,
                    vision,
                )
            if args.darts_stream_updates:
                result["darts_streaming"][device] = darts_streaming(
                    model, test, horizon, args.darts_stream_updates
                )
    for preset in args.vit_presets:
        result["vit"] += vit_throughput(preset, args.vit_batches, args.repeats, args.threads)
    print_table(result)
    out = (
        Path(args.out)
        if args.out
        else RESULTS
        / (
            f"runtime_{result['config']['preset']}_{'-'.join(devices)}_"
            f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
        )
    )
    from timesclip_darts.atomic_files import write_text_atomic

    write_text_atomic(out, json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
