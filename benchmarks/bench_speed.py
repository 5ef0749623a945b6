"""Speed and memory of TimesCLIP on CPU: the rasteriser against matplotlib, training with and
without the frozen-ViT feature cache, and how training grows with variates and input length.

    python -m benchmarks.bench_speed           # everything (about 10 min on 2 cores)
    python -m benchmarks.bench_speed --smoke   # what CI runs: seconds

Every comparison runs side by side in one process and is reported as a ratio; absolute times
are this machine's (CPU) and only indicative. Forecast speed of ``historical_forecasts`` for
TimesCLIP and the Darts models is in ``bench_accuracy``'s table (forecasts/s column).
Writes ``speed.json`` (``--out``, default ``benchmarks/results/``) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.process_memory import rss_mib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class PeakRss:
    """Highest resident memory seen while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRss:
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def _interleaved_best(contenders: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each callable over ``repeats`` rounds that run them in turn, so that a
    slow spell of a shared machine hits all of them alike."""
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, fn in contenders.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


# --------------------------------------------------------------------------------- rasteriser
def bench_rasteriser(sizes: list[int], batches: list[int], repeats: int, data) -> list[dict]:
    """Images/s of each backend against matplotlib (one figure reused), same windows, timed in
    interleaved rounds (best of ``repeats``), and each backend's pixel correlation with
    matplotlib."""
    import torch

    from timesclip_darts.preprocessor import instance_normalize
    from timesclip_darts.rendering import MatplotlibRenderer, render_windows

    rows = []
    for size in sizes:
        reference = MatplotlibRenderer(size)
        for batch in batches:
            # `batch` images: windows of one variate, starts spread over the train split.
            starts = np.linspace(0, len(data) - 97, batch).astype(int)
            x = torch.stack([torch.as_tensor(data[s : s + 96, :1]) for s in starts])
            x_norm, _ = instance_normalize(x.float())
            render_windows(x_norm[:1], size, backend="cpu-kernel")  # compile outside the clock
            contenders = {
                "matplotlib": lambda r=reference, x=x_norm: r.render_windows(x),
                **{
                    b: lambda b=b, x=x_norm, s=size: render_windows(x, s, backend=b)
                    for b in ("torch", "cpu-kernel")
                },
            }
            seconds = _interleaved_best(contenders, repeats)
            ref_images = reference.render_windows(x_norm)
            row = {
                "image_size": size,
                "batch": batch,
                "matplotlib_img_s": batch / seconds["matplotlib"],
            }
            for backend in ("torch", "cpu-kernel"):
                images = render_windows(x_norm, size, backend=backend).numpy()
                ink, ink_ref = 1 - images.reshape(batch, -1), 1 - ref_images.reshape(batch, -1)
                per_image = [np.corrcoef(a, b)[0, 1] for a, b in zip(ink, ink_ref, strict=True)]
                row[f"{backend}_img_s"] = batch / seconds[backend]
                row[f"{backend}_vs_matplotlib"] = seconds["matplotlib"] / seconds[backend]
                row[f"{backend}_corr_mean"] = float(np.mean(per_image))
                row[f"{backend}_corr_min"] = float(np.min(per_image))
            rows.append(row)
    print("\nrasteriser, one variate per image, images/s (speed-up over matplotlib; pixel corr.)")
    print(f"{'size':>5} {'batch':>6} {'matplotlib':>11} {'torch':>22} {'cpu-kernel':>22}")
    for r in rows:
        cells = [
            f"{r[f'{b}_img_s']:>8.0f} ({r[f'{b}_vs_matplotlib']:>5.1f}x; {r[f'{b}_corr_mean']:.3f})"
            for b in ("torch", "cpu-kernel")
        ]
        print(
            f"{r['image_size']:>5} {r['batch']:>6} {r['matplotlib_img_s']:>11.0f} "
            + " ".join(cells)
        )
    return rows


# ----------------------------------------------------------------------------------- training
def training_model(
    preset: str, epochs: int, cache_mb: float, icl: int = 96, seed: int = 0, callbacks=()
):
    from timesclip_darts import TimesCLIPModel

    return TimesCLIPModel(
        icl,
        96,
        clip_model_name=preset,
        d_model=128 if preset == "small" else 32,
        n_heads=4,
        n_epochs=epochs,
        batch_size=32,
        random_state=seed,
        vision_cache_mb=cache_mb,
        pl_trainer_kwargs={
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": list(callbacks),
        },
    )


def _epoch_clock():
    """A Lightning callback that records wall time and peak RSS of every training epoch."""
    from pytorch_lightning.callbacks import Callback

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.peak_mib: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._peak = PeakRss().__enter__()
            self._started = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.seconds.append(time.perf_counter() - self._started)
            self._peak.__exit__()
            self.peak_mib.append(self._peak.peak)

    return EpochClock()


def bench_training(preset: str, windows: int, epochs: int, data_dir: str | None) -> dict:
    """Windows/s and peak RSS per epoch with and without the vision-feature cache, same seed;
    the forecasts of both trained models must be equal."""
    import torch

    from timesclip_darts.data import ett_splits, load_darts_dataset

    splits = ett_splits(load_darts_dataset("ETTh1", data_dir), "ETTh1", 96)
    loader = {"pin_memory": torch.cuda.is_available()}
    runs, forecasts = {}, {}
    for label, cache_mb in (("no cache", 0.0), ("cache", 1024.0)):
        clock = _epoch_clock()
        model = training_model(preset, epochs, cache_mb, callbacks=[clock])
        model.fit(splits.train, max_samples_per_ts=windows, dataloader_kwargs=loader)
        forecasts[label] = model.predict(
            96, series=splits.val[:96], dataloader_kwargs=loader
        ).values()
        cache = model.model.core.vision.cache
        runs[label] = {
            "epoch_s": clock.seconds,
            "windows_per_s": [windows / s for s in clock.seconds],
            "peak_rss_mib": clock.peak_mib,
            # Windows served from the cache, and the bytes it still holds after fit (must be 0).
            "cache_hits": None if cache is None else cache.hits,
            "cache_bytes_after_fit": 0 if cache is None else cache.used_bytes,
        }
    difference = float(np.abs(forecasts["cache"] - forecasts["no cache"]).max())
    ratio = runs["no cache"]["epoch_s"][1] / runs["cache"]["epoch_s"][1]
    print(f"\ntraining, preset {preset}, {windows} windows x {epochs} epochs, batch 32")
    print(f"{'':>10} " + " ".join(f"{'epoch ' + str(i + 1):>18}" for i in range(epochs)))
    for label, run in runs.items():
        cells = [
            f"{w:>7.1f} w/s {m:>5.0f} MiB"
            for w, m in zip(run["windows_per_s"], run["peak_rss_mib"], strict=True)
        ]
        print(f"{label:>10} " + " ".join(cells))
    print(
        f"epoch-2 speed-up from the cache: {ratio:.2f}x; max forecast difference {difference:.2e}"
    )
    return {
        "preset": preset,
        "windows": windows,
        "epochs": epochs,
        "runs": runs,
        "epoch2_speedup": ratio,
        "max_forecast_difference": difference,
    }


# ------------------------------------------------------------------------------------ scaling
_SCALING_CHILD = """
import json, resource, time
import numpy as np, torch
from benchmarks.bench_speed import training_model
from darts import TimeSeries
n_variates, icl, windows, preset = {n_variates}, {icl}, {windows}, {preset!r}
values = np.random.default_rng(0).standard_normal((icl + 96 + windows - 1, n_variates)).cumsum(0)
series = TimeSeries.from_values(values.astype(np.float32))
model = training_model(preset, 1, 1024.0, icl=icl)
started = time.perf_counter()
model.fit(series, dataloader_kwargs={{"pin_memory": False}})
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"train_s": seconds, "peak_rss_mib": peak}}))
"""


def bench_scaling(preset: str, windows: int, configs: list[tuple[int, int]]) -> list[dict]:
    """One training epoch per (variates, input length), each in a fresh process so that its
    peak RSS is its own."""
    rows = []
    for n_variates, icl in configs:
        code = _SCALING_CHILD.format(n_variates=n_variates, icl=icl, windows=windows, preset=preset)
        # From the repository root, the child imports benchmarks.bench_speed as this one does.
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
        )
        if done.returncode != 0:
            rows.append({"variates": n_variates, "input": icl, "error": done.stderr.strip()[-300:]})
            continue
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "variates": n_variates,
                "input": icl,
                "windows": windows,
                **measured,
                "windows_per_s": windows / measured["train_s"],
            }
        )
    print(
        f"\nscaling, preset {preset}, one epoch of {windows} windows (first epoch: no cache hits)"
    )
    print(f"{'variates':>8} {'input':>6} {'train s':>8} {'windows/s':>10} {'peak RSS MiB':>13}")
    for r in rows:
        if "error" in r:
            print(f"{r['variates']:>8} {r['input']:>6} failed: {r['error']}")
        else:
            print(
                f"{r['variates']:>8} {r['input']:>6} {r['train_s']:>8.1f} "
                f"{r['windows_per_s']:>10.1f} {r['peak_rss_mib']:>13.0f}"
            )
    return rows


# --------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=["rasteriser", "training", "scaling"], default=None
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="seconds; what CI runs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sections = set(args.only or ["rasteriser", "training", "scaling"])
    from timesclip_darts.data import load_darts_dataset

    etth1 = load_darts_dataset("ETTh1", args.data_dir)[: 12 * 720].values()
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "torch_threads": __import__("torch").get_num_threads(),
        "backbone": f"preset '{'tiny' if args.smoke else args.preset}' (random weights)",
    }
    preset = "tiny" if args.smoke else args.preset
    if "rasteriser" in sections:
        report["rasteriser"] = bench_rasteriser(
            [32] if args.smoke else [64, 224],
            [1, 8] if args.smoke else [1, 256],
            2 if args.smoke else 5,
            etth1,
        )
    if "training" in sections:
        report["training"] = bench_training(
            preset, 64 if args.smoke else 1024, 2 if args.smoke else 3, args.data_dir
        )
    if "scaling" in sections:
        configs = (
            [(3, 32), (6, 32)] if args.smoke else [(7, 96), (21, 96), (100, 96), (7, 336), (7, 512)]
        )
        report["scaling"] = bench_scaling(preset, 32 if args.smoke else 256, configs)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench_speed_")) if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    from timesclip_darts.atomic_files import write_text_atomic

    write_text_atomic(out / "speed.json", json.dumps(report, indent=2))
    print(f"\nwrote {out / 'speed.json'}")
    return report


if __name__ == "__main__":
    main()
