"""The GPU check in one command: parity, placement, speed and training of TimesCLIP on one GPU.

    python benchmarks/bench_gpu.py                         # one GPU: < 4 min, small + base presets
    python benchmarks/bench_gpu.py --device cpu --smoke    # seconds on CPU; what the tests run

It trains its own models (bundles exported with another torch may not load) and exports each in
a background process as soon as it is trained (the CPU-bound export of ``base`` overlaps the GPU
work), then measures, writing ``benchmarks/results/gpu_<name>.json`` (``--out``; ``section_s``
holds each section's wall time) and printing markdown tables:

- parity: the CUDA rasteriser (dense torch field) against the CPU numba kernel, per pixel
  (<= 1e-4); the runtime (full CUDA where onnxruntime has it, else mixed; and the mixed placement
  forced as well) against the Darts model's ``historical_forecasts`` on the ETTh1 test split
  (<= 1e-4, fp32); fp16 and bf16 vision against fp32 (<= 1e-3);
- placement, with onnxruntime-gpu: both graphs wholly on ``CUDAExecutionProvider`` (sessions
  made with ``session.disable_cpu_ep_fallback``, and every node's provider from ORT's profile),
  and I/O binding into torch's tensors (the bound outputs are the torch buffers);
- speed: windows/s of the runtime (fp32, bf16 vision) against Darts' ``historical_forecasts``
  (fp32) at batch 256 and 1024, for the ``small`` and ``base`` presets; ViT images/s of ``base``
  at 224 px in bf16; streaming ``update`` latency (p50/p99);
- training: one fit (``--train-epochs``, 2 by default so the cache's second epoch shows) of the
  ``small`` and ``base`` presets with and without the frozen-ViT feature cache: windows/s per
  epoch, peak GPU memory, cache bytes held at each epoch's end and after fit, and whether both
  models forecast the same.

``--smoke`` runs the ``tiny`` preset on a few windows; what needs CUDA is recorded as
"skipped: no CUDA". ``--model``/``--bundle`` replace the first preset's trained model and its
export (the tests pass the session's tiny ones). Work beyond ``--budget-s`` seconds is skipped
and recorded as such, so the command ends in time on a slower machine. Random-weight presets,
not pretrained CLIP.

It imports installed packages only, so it runs as a plain file (as above, how a GPU machine's
own README runs it) as well as ``python -m benchmarks.bench_gpu``; ``bench_runtime`` takes its
timing helpers from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
INPUT = 96
NO_CUDA = "skipped: no CUDA"
NO_TIME = "skipped: time budget"
PIXEL_TOLERANCE = 1e-4
PARITY_TOLERANCE = 1e-4
# fp16/bf16 vision is reported as usable when forecasts stay this close to fp32.
HALF_TOLERANCE = 1e-3
D_MODEL = {"tiny": 32, "small": 128, "base": 512}
N_HEADS = {"tiny": 4, "small": 4, "base": 8}


@contextlib.contextmanager
def clock(result: dict, section: str) -> Iterator[None]:
    """Record the wall seconds of a section under ``result["section_s"]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        result["section_s"][section] = round(time.perf_counter() - started, 2)


# ------------------------------------------------- timing helpers (bench_runtime takes them too)
def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": len(ms),
    }


def darts_pass(model, test, horizon: int) -> tuple[float, np.ndarray]:
    seconds, forecasts = timed(
        lambda: model.historical_forecasts(
            test, forecast_horizon=horizon, retrain=False, last_points_only=False, verbose=False
        )
    )
    return seconds, np.stack([f.values() for f in forecasts])


def streaming(
    bundle: Path, values, times, updates: int, device: str, threads: int | None, vision: str
):
    """Latency of ``update`` with one new row, after the first window has filled."""
    from timesclip_export.runtime.forecaster import RollingForecaster

    forecaster = RollingForecaster(
        bundle, vision=vision, device=device, apply_scaler=False, onnx_threads=threads
    )
    rolled = forecaster.rolling(values[: INPUT + updates - 1])
    forecaster.update(values[: INPUT - 1], timestamps=times[: INPUT - 1])
    latencies, outs = [], []
    for i in range(INPUT - 1, INPUT - 1 + updates):
        start = time.perf_counter()
        outs.append(forecaster.update(values[i : i + 1], timestamps=times[i : i + 1]))
        latencies.append(time.perf_counter() - start)
    stats = percentiles(latencies[1:] if updates > 1 else latencies)
    stats["max_abs_diff_vs_rolling"] = float(np.abs(np.concatenate(outs) - rolled).max())
    return stats


class Budget:
    """Seconds left of ``limit`` since creation; sections past it are skipped, not run."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.started = time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.started

    def exhausted(self) -> bool:
        return self.used() > self.limit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, a few windows, CPU ok")
    parser.add_argument("--name", help="results name (default: the GPU's, or cpu)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/gpu_<name>.json)")
    parser.add_argument("--data-dir", help="ETT CSV folder (default ../shared/data/ETT)")
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--windows", type=int, default=2048, help="test windows timed per preset")
    parser.add_argument("--train-windows", type=int, default=1024)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes (best counts)")
    parser.add_argument("--vit-images", type=int, default=512)
    parser.add_argument("--stream-updates", type=int, default=200)
    parser.add_argument("--budget-s", type=float, default=200.0)
    parser.add_argument("--model", help="a saved model for the first preset (default: train)")
    parser.add_argument("--bundle", help="its bundle (default: export one)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.presets, args.batch_sizes, args.windows = ["tiny"], [8], 16
        args.train_windows, args.train_epochs, args.repeats = 16, 1, 1
        args.vit_images, args.stream_updates = 32, 5
    return args


def resolve_device(requested: str, cuda_available: bool) -> str:
    """``cuda`` or ``cpu`` for the run; asking for CUDA where torch has none is an error."""
    if requested == "cuda" and not cuda_available:
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return "cuda" if requested in ("auto", "cuda") and cuda_available else "cpu"


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# ------------------------------------------------------------------------------ rasteriser
def rasteriser_parity(values: np.ndarray, sizes: list[int], device: str) -> list[dict] | str:
    """Max per-pixel difference between the dense torch field on CUDA and the CPU kernel."""
    if device != "cuda":
        return NO_CUDA
    import torch

    from timesclip_darts.preprocessor import instance_normalize
    from timesclip_darts.rendering import render_windows

    starts = np.linspace(0, len(values) - INPUT, 64).astype(int)
    x = torch.stack([torch.as_tensor(values[s : s + INPUT]) for s in starts]).float()
    x_norm, _ = instance_normalize(x)
    rows = []
    for size in sizes:
        kernel = render_windows(x_norm, size, backend="cpu-kernel")
        dense = render_windows(x_norm.cuda(), size, backend="torch").cpu()
        diff = max_diff(dense.numpy(), kernel.numpy())
        rows.append(
            {"image_size": size, "images": int(kernel.shape[0] * kernel.shape[1]), "max": diff}
        )
        rows[-1]["ok"] = diff <= PIXEL_TOLERANCE
    return rows


# ------------------------------------------------------------------------------ training
def cache_bytes(model: Any) -> int | None:
    """Bytes the model's frozen-ViT feature cache holds now (``None`` without one)."""
    cache = getattr(getattr(getattr(model.model, "core", None), "vision", None), "cache", None)
    return None if cache is None else int(getattr(cache, "used_bytes", 0))


def _epoch_stats(device: str):
    """A Lightning callback: wall time, peak GPU memory and cache bytes of every epoch."""
    import torch
    from pytorch_lightning.callbacks import Callback

    class EpochStats(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.peak_mib: list[float] = []
            self.cache_bytes: list[int | None] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self._started = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            _sync(device)
            self.seconds.append(time.perf_counter() - self._started)
            if device == "cuda":
                self.peak_mib.append(torch.cuda.max_memory_allocated() / 2**20)
            cache = getattr(getattr(pl_module.core, "vision", None), "cache", None)
            self.cache_bytes.append(None if cache is None else int(cache.used_bytes))

    return EpochStats()


def new_model(preset: str, epochs: int, cache_mb: float, device: str, callbacks=()) -> Any:
    from timesclip_darts import TimesCLIPModel

    accelerator = {"accelerator": "gpu", "devices": 1} if device == "cuda" else {}
    return TimesCLIPModel(
        INPUT,
        96,
        clip_model_name=preset,
        d_model=D_MODEL.get(preset, 128),
        n_heads=N_HEADS.get(preset, 4),
        n_epochs=epochs,
        batch_size=64,
        random_state=0,
        vision_cache_mb=cache_mb,
        pl_trainer_kwargs={
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": list(callbacks),
            **accelerator,
        },
    )


def bench_training(
    preset: str, splits, windows: int, epochs: int, device: str, folder: Path
) -> tuple[dict, Path]:
    """Fit with and without the feature cache (same seed); returns the row and the path of the
    model trained without cache (the one the runtime sections export)."""
    rows, forecasts, path = {}, {}, folder / f"timesclip_{preset}.pt"
    for label, cache_mb in (("no cache", 0.0), ("cache", 2048.0)):
        stats = _epoch_stats(device)
        model = new_model(preset, epochs, cache_mb, device, [stats])
        model.fit(splits.train, max_samples_per_ts=windows)
        forecasts[label] = model.predict(96, series=splits.val[:INPUT], verbose=False).values()
        rows[label] = {
            "epoch_s": stats.seconds,
            "windows_per_s": [windows / s for s in stats.seconds],
            "peak_gpu_mib": stats.peak_mib if device == "cuda" else NO_CUDA,
            "cache_bytes_at_epoch_end": stats.cache_bytes,
            "cache_bytes_after_fit": cache_bytes(model),
        }
        if label == "no cache":
            model.save(str(path), clean=True)  # no trainer kwargs: the callback would not pickle
    difference = max_diff(forecasts["cache"], forecasts["no cache"])
    row = {
        "preset": preset,
        "windows": windows,
        "epochs": epochs,
        "batch_size": 64,
        "runs": rows,
        "max_forecast_difference": difference,
        "forecasts_equal": difference <= 1e-5,
    }
    return row, path


# ------------------------------------------------------------------------------ runtime
def darts_model(path: Path, device: str) -> Any:
    from timesclip_darts import TimesCLIPModel

    if device == "cuda":
        kwargs = {"accelerator": "gpu", "devices": 1, "enable_progress_bar": False}
        return TimesCLIPModel.load(str(path), pl_trainer_kwargs=kwargs, map_location="cuda")
    return TimesCLIPModel.load(str(path))


def darts_forecasts(model: Any, test, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds and forecasts of Darts' ``historical_forecasts`` at ``batch_size``."""
    model.batch_size = batch_size  # predict's default batch
    return darts_pass(model, test, model.output_chunk_length)


def placements(device: str) -> dict[str, Any]:
    """The runtime's own choice (``auto``: full CUDA, or mixed where onnxruntime lacks CUDA)
    first, then the mixed placement forced, so both data flows are checked wherever the machine
    can run them (forced mixed on a CPU: one device, two sets of buffers)."""
    from timesclip_export.runtime.placement import Placement

    own = "auto" if device == "cuda" else "cpu"
    vision = "cuda:0" if device == "cuda" else "cpu"
    return {own: own, "mixed (forced)": Placement(vision, "cpu", "forced by bench", split=True)}


def runtime_parity(
    bundle: Path, values: np.ndarray, reference: np.ndarray, device: str, batch_size: int
) -> list[dict]:
    """Each placement and vision dtype against Darts (fp32) and against fp32."""
    from timesclip_export.runtime.forecaster import RollingForecaster

    rows, fp32 = [], None
    for i, (label, where) in enumerate(placements(device).items()):
        # Half precision on the runtime's own placement only.
        for dtype in ("float32", "float16", "bfloat16") if i == 0 else ("float32",):
            forecaster = RollingForecaster(
                bundle,
                vision="torch",
                device=where,
                apply_scaler=False,
                batch_size=batch_size,
                vision_dtype=dtype,
            )
            out = forecaster.rolling(values)[: len(reference)]
            row = {
                "placement": label,
                "mode": forecaster.placement.mode,
                "vision_dtype": dtype,
                "windows": len(reference),
                "max_abs_diff_vs_darts": max_diff(out, reference),
                "describe": forecaster.describe(),
            }
            if dtype == "float32":
                fp32 = out if fp32 is None else fp32
                row["ok"] = row["max_abs_diff_vs_darts"] <= PARITY_TOLERANCE
            else:
                row["max_abs_diff_vs_fp32"] = max_diff(out, fp32)
                row["ok"] = row["max_abs_diff_vs_fp32"] <= HALF_TOLERANCE
            rows.append(row)
    # The ONNX vision path: vision.onnx on ORT's CUDA provider where present, else its CPU one.
    forecaster = RollingForecaster(
        bundle, vision="onnx", device="auto", apply_scaler=False, batch_size=batch_size
    )
    out = forecaster.rolling(values)[: len(reference)]
    diff = max_diff(out, reference)
    rows.append(
        {
            "placement": "vision onnx",
            "mode": forecaster.placement.mode,
            "vision_dtype": "float32",
            "windows": len(reference),
            "max_abs_diff_vs_darts": diff,
            "describe": forecaster.describe(),
            "ok": diff <= PARITY_TOLERANCE,
        }
    )
    return rows


def bench_speed(
    bundle: Path, model: Any, test, values: np.ndarray, args, device: str, preset: str
) -> list[dict]:
    """Windows/s of Darts (fp32) and the runtime (fp32, bf16 vision) per batch size, interleaved
    ``--repeats`` times (best counts)."""
    from timesclip_export.runtime.forecaster import RollingForecaster

    rows = []
    runtime_device = "auto" if device == "cuda" else "cpu"
    for batch in args.batch_sizes:
        forecasters = {
            dtype: RollingForecaster(
                bundle,
                vision="torch",
                device=runtime_device,
                apply_scaler=False,
                batch_size=batch,
                vision_dtype=dtype,
            )
            for dtype in ("float32", "bfloat16")
        }
        # The ONNX vision path (float32; ORT's CUDA provider where present).
        forecasters["onnx_float32"] = RollingForecaster(
            bundle, vision="onnx", device="auto", apply_scaler=False, batch_size=batch
        )
        for forecaster in forecasters.values():  # warm up: allocations, cuDNN/cuBLAS choices
            forecaster.rolling(values[: INPUT + min(batch, len(values) - INPUT + 1) - 1])
        best = dict.fromkeys(["darts", *forecasters], float("inf"))
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            seconds, reference = darts_forecasts(model, test, batch)
            best["darts"] = min(best["darts"], seconds)
            for dtype, forecaster in forecasters.items():
                seconds, outputs[dtype] = timed(lambda f=forecaster: f.rolling(values))
                best[dtype] = min(best[dtype], seconds)
        n = len(reference)
        row = {
            "preset": preset,
            "batch_size": batch,
            "windows": n,
            "mode": forecasters["float32"].placement.mode,
            "darts_fp32_windows_per_s": n / best["darts"],
        }
        for dtype in forecasters:
            row[f"runtime_{dtype}_windows_per_s"] = n / best[dtype]
            row[f"runtime_{dtype}_vs_darts"] = best["darts"] / best[dtype]
            row[f"runtime_{dtype}_max_abs_diff_vs_darts"] = max_diff(outputs[dtype][:n], reference)
        rows.append(row)
    return rows


def vit_images_per_s(bundle: Path, device: str, images: int, repeats: int) -> dict:
    """Images/s of the bundle's ViT program alone (random CLIP-sized pixels), fp32 and bf16."""
    import torch
    from timesclip_export.bundle.format import VISION_FILE, load_vision_program, read_manifest

    size = read_manifest(bundle)["model"]["image_size"]
    program = load_vision_program(bundle / VISION_FILE, "cuda:0" if device == "cuda" else device)
    pixels = torch.randn(images, 3, size, size, device="cuda" if device == "cuda" else "cpu")
    result: dict[str, Any] = {"image_size": size, "images": images}
    for dtype, autocast in (("float32", None), ("bfloat16", torch.bfloat16)):

        def run(autocast=autocast) -> None:
            with torch.inference_mode():
                if autocast is None:
                    program(pixels)
                else:
                    with torch.autocast(pixels.device.type, dtype=autocast):
                        program(pixels)
            _sync(device)

        run()  # warm-up
        seconds, _ = timed(run, repeats)
        result[f"{dtype}_images_per_s"] = images / seconds
    with torch.inference_mode():
        expected = program(pixels).cpu().numpy()  # fp32 features, the ONNX graph's reference
    result.update(_onnx_vit_images_per_s(bundle, pixels, expected, device, repeats))
    return result


def _onnx_vit_images_per_s(
    bundle: Path, pixels: Any, expected: np.ndarray, device: str, repeats: int
) -> dict:
    """Images/s of the bundle's ``vision.opt.onnx`` in ONNX Runtime: on its CUDA provider with
    I/O binding (pixels and features stay on the GPU) where present, else on its CPU provider;
    and the largest difference from ``expected``, the torch program's fp32 features."""
    import onnxruntime as ort
    from timesclip_export.bundle.format import OPTIMIZED_FILES
    from timesclip_export.runtime.engine import session_options

    cuda = device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None
    session = ort.InferenceSession(
        str(bundle / OPTIMIZED_FILES["vision"]),
        session_options(None),
        providers=providers or ["CPUExecutionProvider"],
    )
    binding = session.io_binding()
    if cuda:
        binding.bind_input(
            "pixels", "cuda", 0, np.float32, tuple(pixels.shape), pixels.contiguous().data_ptr()
        )
        binding.bind_output("features", "cuda", 0)
    else:
        binding.bind_cpu_input("pixels", pixels.cpu().numpy())
        binding.bind_output("features")

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    run()  # warm-up
    seconds, _ = timed(run, repeats)
    return {
        "onnx_provider": session.get_providers()[0],
        "onnx_float32_images_per_s": len(pixels) / seconds,
        "onnx_max_abs_diff": max_diff(binding.copy_outputs_to_cpu()[0], expected),
    }


# ------------------------------------------------------------------------------ placement
def providers_by_node(events: list[dict]) -> dict[str, dict[str, int]]:
    """From an ONNX Runtime profile (``enable_profiling``): per provider, how many nodes of
    each operator ran there."""
    nodes: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            name = re.sub(r"_(kernel_time|fence_before|fence_after)$", "", event.get("name", ""))
            nodes[name] = (args["provider"], args.get("op_name", "?"))
    counts: dict[str, Counter] = defaultdict(Counter)
    for provider, op in nodes.values():
        counts[provider][op] += 1
    return {provider: dict(ops) for provider, ops in counts.items()}


def _profiled_sessions(forecaster: Any, folder: Path, strict: bool) -> dict[str, Any]:
    """New sessions for the forecaster's two graphs, as it makes them, plus profiling (and with
    ``strict``, ORT's refusal to fall back to the CPU provider for any node)."""
    import onnxruntime as ort
    import torch
    from timesclip_export.bundle.format import GRAPH_FILES, OPTIMIZED_FILES
    from timesclip_export.runtime.placement import open_session

    files = OPTIMIZED_FILES if forecaster.optimized else GRAPH_FILES
    stream = None
    if forecaster.placement.ort_device == "cuda":
        stream = torch.cuda.current_stream(forecaster.placement.graph_device).cuda_stream
    sessions = {}
    for part in ("text", "fusion"):  # the torch vision path's two graphs
        name = files[part]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_profiling = not strict
        options.profile_file_prefix = str(folder / f"profile_{part}")
        if strict:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        sessions[part] = open_session(
            forecaster.bundle / name, options, forecaster.placement, stream, ort.InferenceSession
        )
    return sessions


def ort_placement(forecaster: Any, values: np.ndarray, folder: Path) -> dict:
    """Which provider ran every node of both graphs (ORT's profile of one rolling pass through
    the runtime's own I/O binding) and, on CUDA, whether sessions that may not fall back to the
    CPU provider load at all."""
    from timesclip_export.errors import BundleError

    engine = forecaster._engine  # the torch vision path's engine
    original = engine._text, engine._fusion
    sessions = _profiled_sessions(forecaster, folder, strict=False)
    engine._text, engine._fusion = sessions["text"], sessions["fusion"]
    engine._buffers.clear()  # bind the new sessions
    try:
        forecaster.rolling(values)
    finally:
        engine._text, engine._fusion = original
        engine._buffers.clear()
    result: dict[str, Any] = {"ort_device": forecaster.placement.ort_device}
    for part, session in sessions.items():
        profile = Path(session.end_profiling())
        by_provider = providers_by_node(json.loads(profile.read_text()))
        result[part] = {"nodes_by_provider": by_provider}
    if forecaster.placement.ort_device != "cuda":
        result["no_cpu_fallback"] = NO_CUDA
        result["wholly_on_cuda"] = NO_CUDA
        return result
    try:
        _profiled_sessions(forecaster, folder, strict=True)
        result["no_cpu_fallback"] = "both graphs load with session.disable_cpu_ep_fallback=1"
        strict_ok = True
    except BundleError as err:
        result["no_cpu_fallback"] = f"refused: {str(err)[:500]}"
        strict_ok = False
    on_cpu = sum(
        sum(result[p]["nodes_by_provider"].get("CPUExecutionProvider", {}).values())
        for p in ("text", "fusion")
    )
    result["nodes_on_cpu"] = on_cpu
    result["wholly_on_cuda"] = strict_ok and on_cpu == 0
    return result


def io_binding_report(forecaster: Any) -> dict:
    """Whether the graphs' outputs are bound to the runtime's torch buffers (no copies): the
    OrtValues ORT wrote to sit at the torch tensors' addresses, on the expected device."""
    bound = forecaster._engine._buffers  # the torch vision path's engine
    report = {"batches_bound": len(bound), "device": forecaster.placement.ort_device}
    same, devices = True, set()
    for buffers in bound.values():
        pairs = [
            (buffers.text_binding, list(buffers.text.values())),
            (buffers.fusion_binding, [buffers.forecast]),
        ]
        for binding, tensors in pairs:
            values = binding.get_outputs()
            same &= [v.data_ptr() for v in values] == [t.data_ptr() for t in tensors]
            devices |= {v.device_name().lower() for v in values}
    report["outputs_are_torch_buffers"] = bool(same and bound)
    report["ort_value_devices"] = sorted(devices)
    return report


# ------------------------------------------------------------------------------ report
def markdown(result: dict) -> str:
    """The printed summary: one table per section."""
    lines = [f"## bench_gpu: {result['machine']['device']} ({result['config']['name']})", ""]
    lines += ["| check | value | ok |", "|---|---|---|"]
    raster = result["rasteriser_parity"]
    if isinstance(raster, str):
        lines.append(f"| CUDA rasteriser vs CPU kernel | {raster} | |")
    else:
        for row in raster:
            lines.append(
                f"| rasteriser {row['image_size']} px, max per pixel | {row['max']:.1e} | "
                f"{row['ok']} |"
            )
    for preset, rows in result["runtime_parity"].items():
        for row in rows if isinstance(rows, list) else []:
            fp32 = row["vision_dtype"] == "float32"
            key = "max_abs_diff_vs_darts" if fp32 else "max_abs_diff_vs_fp32"
            what = "vs Darts" if fp32 else "vs fp32"
            lines.append(
                f"| {preset} runtime {row['placement']} ({row['mode']}), {row['vision_dtype']} "
                f"{what}, {row['windows']} windows | {row[key]:.1e} | {row['ok']} |"
            )
    for preset, info in result["ort_placement"].items():
        if isinstance(info, dict):
            lines.append(f"| {preset} graphs wholly on CUDA | {info['wholly_on_cuda']} | |")
    for preset, info in result["io_binding"].items():
        if isinstance(info, dict):
            lines.append(
                f"| {preset} I/O binding to torch buffers ({info['device']}) | "
                f"{info['outputs_are_torch_buffers']} | |"
            )
    speed = [row for rows in result["speed"].values() if isinstance(rows, list) for row in rows]
    if speed:
        lines += [
            "",
            "| preset | batch | mode | Darts fp32 w/s | runtime fp32 w/s | x "
            "| runtime bf16 w/s | x | vision onnx w/s | x |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in speed:
            lines.append(
                f"| {r['preset']} | {r['batch_size']} | {r['mode']} | "
                f"{r['darts_fp32_windows_per_s']:.0f} | {r['runtime_float32_windows_per_s']:.0f} | "
                f"{r['runtime_float32_vs_darts']:.2f} | {r['runtime_bfloat16_windows_per_s']:.0f} "
                f"| {r['runtime_bfloat16_vs_darts']:.2f} "
                f"| {r['runtime_onnx_float32_windows_per_s']:.0f} "
                f"| {r['runtime_onnx_float32_vs_darts']:.2f} |"
            )
    for preset, vit in result["vit"].items():
        if isinstance(vit, dict):
            lines.append(
                f"\nViT ({preset}, {vit['image_size']} px): fp32 {vit['float32_images_per_s']:.0f}"
                f" images/s, bf16 {vit['bfloat16_images_per_s']:.0f} images/s; vision.opt.onnx "
                f"on {vit['onnx_provider']} {vit['onnx_float32_images_per_s']:.0f} images/s "
                f"(max |diff| vs torch fp32 {vit['onnx_max_abs_diff']:.1e})"
            )
    for preset, stats in result["streaming"].items():
        if isinstance(stats, dict):
            lines.append(
                f"\nstreaming update ({preset}): p50 {stats['p50_ms']:.2f} ms, p99 "
                f"{stats['p99_ms']:.2f} ms over {stats['n']} updates"
            )
    training = [row for row in result["training"].values() if isinstance(row, dict)]
    if training:
        lines += [
            "",
            "| training | cache | windows/s per epoch | peak GPU MiB | cache bytes after fit |",
            "|---|---|---|---|---:|",
        ]
        for row in training:
            for label, run in row["runs"].items():
                speeds = ", ".join(f"{w:.0f}" for w in run["windows_per_s"])
                peak = run["peak_gpu_mib"]
                peak = ", ".join(f"{m:.0f}" for m in peak) if isinstance(peak, list) else peak
                lines.append(
                    f"| {row['preset']} | {label} | {speeds} | {peak} | "
                    f"{run['cache_bytes_after_fit']} |"
                )
            lines.append(
                f"| {row['preset']} | forecasts equal | {row['forecasts_equal']} "
                f"(max diff {row['max_forecast_difference']:.1e}) | | |"
            )
    if result["skipped"]:
        lines += ["", "skipped: " + "; ".join(result["skipped"])]
    return "\n".join(lines)


class BackgroundExport:
    """``timesclip-darts export`` of a saved model in a child process on half the cores, so the
    CPU-bound export (minutes for ``base``) overlaps the GPU work of other presets."""

    def __init__(self, model_path: Path, bundle: Path) -> None:
        self.bundle = bundle
        self.log = bundle.parent / "export.log"
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // 2)))
        command = [sys.executable, "-m", "timesclip_cli.main", "export", str(model_path)]
        self.started = time.perf_counter()
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [*command, str(bundle), "--no-scaler"], stdout=log, stderr=log, env=env, cwd=ROOT
            )
        self.seconds: float | None = None

    def wait(self) -> Path:
        """The bundle, once written (``RuntimeError`` with the log's end if the export failed)."""
        code = self.process.wait()
        self.seconds = self.seconds or time.perf_counter() - self.started
        if code != 0:
            raise RuntimeError(f"export failed ({code}): {self.log.read_text()[-2000:]}")
        return self.bundle

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def runtime_sections(
    result: dict,
    preset: str,
    bundle: Path,
    model_path: Path,
    splits,
    args: argparse.Namespace,
    device: str,
    budget: Budget,
    full_split: bool,
    scratch: Path,
) -> None:
    """Parity, placement, I/O binding, speed, ViT and streaming of one preset's bundle
    (``scratch``: a folder for ORT's profiles)."""
    from timesclip_export.runtime.forecaster import RollingForecaster

    model = darts_model(model_path, device)
    horizon = model.output_chunk_length
    available = len(splits.test) - INPUT - horizon + 1
    # Parity on the whole test split for the first preset; for later ones (base: slow on any
    # path) on one batch of the largest size.
    n = min(args.windows if args.smoke else max(args.batch_sizes), available)
    n = available if full_split else n
    test = splits.test[: INPUT + horizon + n - 1]
    values = test.values().astype(np.float32)[: INPUT + n - 1]
    runtime_device = "auto" if device == "cuda" else "cpu"
    with clock(result, f"{preset} parity"):
        _, reference = darts_forecasts(model, test, max(args.batch_sizes))
        result["runtime_parity"][preset] = runtime_parity(
            bundle, values, reference, device, max(args.batch_sizes)
        )
    with clock(result, f"{preset} placement and I/O binding"):
        own = RollingForecaster(bundle, vision="torch", device=runtime_device, apply_scaler=False)
        probe = values[: INPUT + min(n, 64) - 1]
        result["ort_placement"][preset] = ort_placement(own, probe, scratch)
        own.rolling(probe)
        result["io_binding"][preset] = io_binding_report(own)
    if budget.exhausted():
        for section in ("speed", "vit", "streaming"):
            _skip(result, section, preset, NO_TIME)
        return
    n_speed = min(args.windows, available)
    test_speed = splits.test[: INPUT + horizon + n_speed - 1]
    values_speed = test_speed.values().astype(np.float32)[: INPUT + n_speed - 1]
    with clock(result, f"{preset} speed"):
        result["speed"][preset] = bench_speed(
            bundle, model, test_speed, values_speed, args, device, preset
        )
    if preset == "base" or args.smoke:
        with clock(result, f"{preset} ViT"):
            result["vit"][preset] = vit_images_per_s(bundle, device, args.vit_images, args.repeats)
    with clock(result, f"{preset} streaming"):
        times = test.time_index.values
        updates = min(args.stream_updates, n)
        result["streaming"][preset] = streaming(
            bundle, values, times, updates, runtime_device, None, "torch"
        )
        result["streaming"][f"{preset}, vision onnx"] = streaming(
            bundle, values, times, updates, "auto", None, "onnx"
        )


def _skip(result: dict, section: str, preset: str, reason: str) -> None:
    result[section][preset] = reason
    result["skipped"].append(f"{section} {preset}: {reason}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    budget = Budget(args.budget_s)
    import onnxruntime as ort
    import torch
    from timesclip_export.bundle.format import library_versions

    from timesclip_darts.data import ett_splits, load_darts_dataset

    device = resolve_device(args.device, torch.cuda.is_available())
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    name = args.name or re.sub(r"[^a-z0-9]+", "-", (gpu or "cpu").lower()).strip("-")
    name += "-smoke" if args.smoke and not args.name else ""
    splits = ett_splits(load_darts_dataset("ETTh1", args.data_dir), "ETTh1", INPUT)
    result: dict[str, Any] = {
        "config": {
            "name": name,
            "device": device,
            "smoke": args.smoke,
            "presets": args.presets,
            "batch_sizes": args.batch_sizes,
            "windows": args.windows,
            "train_windows": args.train_windows,
            "train_epochs": args.train_epochs,
            "repeats": args.repeats,
            "budget_s": args.budget_s,
            "backbones": "random-weight presets, NOT pretrained CLIP",
        },
        "machine": {
            "device": gpu or f"CPU ({os.cpu_count()} cores)",
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "onnxruntime_providers": ort.get_available_providers(),
        },
        "versions": library_versions(),
        "tolerances": {
            "pixel": PIXEL_TOLERANCE,
            "parity_fp32": PARITY_TOLERANCE,
            "half_vs_fp32": HALF_TOLERANCE,
        },
        "rasteriser_parity": None,
        "training": {},
        "models": {},
        "export_s": {},
        "runtime_parity": {},
        "ort_placement": {},
        "io_binding": {},
        "speed": {},
        "vit": {},
        "streaming": {},
        "skipped": [],
        "section_s": {},
    }
    sizes = sorted({bench_preset_size(p) for p in args.presets})
    result["rasteriser_parity"] = rasteriser_parity(splits.test.values(), sizes, device)
    if isinstance(result["rasteriser_parity"], str):
        result["skipped"].append(f"rasteriser parity: {NO_CUDA}")
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as scratch:
        # Phase 1 (GPU): train every preset; each export starts in the background (CPU) as soon
        # as its model is saved, so the slow export of `base` overlaps the GPU work of the rest.
        exports: dict[str, BackgroundExport | Path] = {}
        for i, preset in enumerate(args.presets):
            folder = Path(scratch) / preset
            folder.mkdir()
            if budget.exhausted():
                for section in ("training", "runtime_parity", "speed", "vit", "streaming"):
                    _skip(result, section, preset, NO_TIME)
                continue
            windows = args.train_windows // (2 if preset == "base" else 1)
            with clock(result, f"{preset} training"):
                row, model_path = bench_training(
                    preset, splits, windows, args.train_epochs, device, folder
                )
            result["training"][preset] = row
            if i == 0 and args.model:
                model_path = Path(args.model)
            if i == 0 and args.bundle:
                exports[preset] = Path(args.bundle)
            else:
                exports[preset] = BackgroundExport(model_path, folder / "bundle")
            result["models"][preset] = str(model_path)
        # Phase 2: the runtime sections, preset by preset, once its bundle is there.
        try:
            for i, preset in enumerate(exports):
                if budget.exhausted():
                    for section in ("runtime_parity", "speed", "vit", "streaming"):
                        _skip(result, section, preset, NO_TIME)
                    continue
                job = exports[preset]
                with clock(result, f"{preset} waiting for its export"):
                    bundle = job if isinstance(job, Path) else job.wait()
                if isinstance(job, BackgroundExport):
                    result["export_s"][preset] = job.seconds
                model_path = Path(result["models"][preset])
                full = i == 0 and not args.smoke  # parity on the whole test split: first preset
                where = Path(scratch) / preset
                runtime_sections(
                    result, preset, bundle, model_path, splits, args, device, budget, full, where
                )
        finally:
            for job in exports.values():
                if isinstance(job, BackgroundExport):
                    job.stop()
    result["seconds"] = budget.used()
    result["checks"] = summary_checks(result)
    print(markdown(result))
    out = Path(args.out) if args.out else RESULTS / f"gpu_{name}.json"
    from timesclip_darts.atomic_files import write_text_atomic

    write_text_atomic(out, json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out} ({result['seconds']:.0f} s)")
    return result


def bench_preset_size(preset: str) -> int:
    """The preset's ViT image size (``timesclip_darts.backbones.PRESETS``)."""
    from timesclip_darts.backbones import PRESETS

    return int(PRESETS[preset]["vision"]["image_size"])


def summary_checks(result: dict) -> dict[str, bool | str]:
    """One pass/fail per kind of check over everything that ran (skips stay strings)."""

    def ran(section: str) -> list:
        return [v for v in result[section].values() if not isinstance(v, str)]

    raster = result["rasteriser_parity"]
    parity = [row for rows in ran("runtime_parity") for row in rows]
    on_cuda = [p["wholly_on_cuda"] for p in ran("ort_placement")]
    fp32 = [r["ok"] for r in parity if r["vision_dtype"] == "float32"]
    return {
        "rasteriser_parity": raster if isinstance(raster, str) else all(r["ok"] for r in raster),
        "runtime_parity_fp32": all(fp32),
        "half_precision_within_1e-3": all(
            r["ok"] for r in parity if r["vision_dtype"] != "float32"
        ),
        "graphs_wholly_on_cuda": NO_CUDA if NO_CUDA in on_cuda else all(on_cuda),
        "io_binding_to_torch_buffers": all(
            b["outputs_are_torch_buffers"] for b in ran("io_binding")
        ),
        "cache_forecasts_equal": all(r["forecasts_equal"] for r in ran("training")),
    }


if __name__ == "__main__":
    main()
