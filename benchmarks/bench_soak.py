"""Soak: stream many rows through RollingForecaster.update, one row per call, as a live source
would. Reports resident memory at start and end, per-update latency p50/p99 in the first and
last tenth of the run (drift), and checks sampled streamed forecasts against the batch path.

    python -m benchmarks.bench_soak                       # 104,520 rows (ETTh1 values x 6)
    python -m benchmarks.bench_soak --rows 2000 --smoke   # seconds; what CI runs

Without --bundle it trains a tiny-preset model for one short epoch and exports it, so the
figures measure the runtime, not forecast quality. Writes JSON (default
benchmarks/results/soak.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.process_memory import rss_mib

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 100


def make_bundle(folder: Path, data_dir: Path) -> Path:
    from darts import TimeSeries
    from timesclip_export.exporter.writer import export_bundle

    from timesclip_darts import TimesCLIPModel

    frame = pd.read_csv(data_dir / "ETTh1.csv", parse_dates=["date"]).iloc[:1000]
    series = TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)
    model = TimesCLIPModel(
        96,
        24,
        clip_model_name="tiny",
        d_model=32,
        n_heads=4,
        n_epochs=1,
        random_state=0,
        pl_trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False},
    )
    model.fit(series, max_samples_per_ts=128)
    model.save(str(folder / "model.pt"))
    export_bundle(folder / "model.pt", folder / "bundle")
    return folder / "bundle"


def soak_rows(data_dir: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """ETTh1's values repeated to ``rows`` rows, on a regular hourly clock."""
    values = pd.read_csv(data_dir / "ETTh1.csv").iloc[:, 1:].to_numpy(np.float32)
    values = np.tile(values, (rows // len(values) + 1, 1))[:rows]
    times = pd.date_range("2016-07-01", periods=rows, freq="h").to_numpy()
    return values, times


def percentiles(latencies: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
    }


def run(bundle: Path, values: np.ndarray, times: np.ndarray, checks: int) -> dict:
    from timesclip_export.runtime.forecaster import RollingForecaster

    forecaster = RollingForecaster(bundle)
    icl = forecaster.input_chunk_length
    rng = np.random.default_rng(0)
    check_at = set(rng.choice(np.arange(icl - 1, len(values)), size=checks, replace=False))
    rss_start = rss_mib()
    rss_marks = {}  # row -> RSS, ten times over the run
    mark_every = max(1, len(values) // 10)
    latencies = np.empty(len(values))
    max_error = 0.0
    for i in range(len(values)):
        started = time.perf_counter()
        out = forecaster.update(values[i : i + 1], timestamps=times[i : i + 1])
        latencies[i] = time.perf_counter() - started
        if i in check_at:
            batch = forecaster.forecast(values[i - icl + 1 : i + 1])
            max_error = max(max_error, float(np.abs(out[0] - batch).max()))
        if i == icl - 1 + WARMUP:
            rss_start = rss_mib()  # buffers and sessions are warm
        if (i + 1) % mark_every == 0:
            rss_marks[i + 1] = rss_mib()
    rss_end = rss_mib()
    # Rows that produced a forecast, after a warm-up of WARMUP forecasts (first runs of the
    # graphs, first buffer allocations): drift is measured on the steady state.
    streamed = latencies[icl - 1 + WARMUP :]
    tenth = max(1, len(streamed) // 10)
    first, last = percentiles(streamed[:tenth]), percentiles(streamed[-tenth:])
    # Every tenth, to tell a trend (a leak, a growing buffer) from a noisy spell of the machine.
    tenths = [percentiles(part) for part in np.array_split(streamed, 10)]
    return {
        "rows": len(values),
        "forecasts": len(values) - icl + 1,
        "warmup_forecasts_excluded": WARMUP,
        "device": forecaster.describe(),
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_end,
        "rss_growth_mib": rss_end - rss_start,
        "first_tenth": first,
        "last_tenth": last,
        "p99_drift_ratio": last["p99_ms"] / first["p99_ms"],
        "tenths": tenths,
        "rss_mib_by_row": rss_marks,
        "sampled_windows": checks,
        "max_abs_diff_vs_batch": max_error,
        "python": platform.python_version(),
    }


def print_table(result: dict) -> None:
    print(
        f"soak: {result['rows']:,} rows, {result['forecasts']:,} forecasts, one row per update "
        f"(latency after {result['warmup_forecasts_excluded']} warm-up forecasts)"
    )
    print(f"runtime: {result['device']}")
    print(f"{'':<14}{'p50 ms':>10}{'p99 ms':>10}")
    for part in ("first_tenth", "last_tenth"):
        print(f"{part:<14}{result[part]['p50_ms']:>10.2f}{result[part]['p99_ms']:>10.2f}")
    print(f"p99 drift (last/first tenth): {result['p99_drift_ratio']:.2f}x")
    print(
        "p50/p99 ms by tenth: "
        + "  ".join(f"{t['p50_ms']:.1f}/{t['p99_ms']:.1f}" for t in result["tenths"])
    )
    print("RSS MiB by tenth: " + "  ".join(f"{v:.0f}" for v in result["rss_mib_by_row"].values()))
    print(
        f"RSS: {result['rss_start_mib']:.1f} MiB after warm-up -> {result['rss_end_mib']:.1f} "
        f"MiB at the end ({result['rss_growth_mib']:+.1f} MiB)"
    )
    print(
        f"{result['sampled_windows']} sampled forecasts vs the batch path: max |diff| "
        f"{result['max_abs_diff_vs_batch']:.2e}"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, help="an exported bundle (default: train one)")
    parser.add_argument("--rows", type=int, default=104_520)
    parser.add_argument("--checks", type=int, default=50, help="windows compared with batch")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "ETT")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    parser.add_argument("--smoke", action="store_true", help="no JSON file, fewer checks")
    args = parser.parse_args(argv)
    values, times = soak_rows(args.data_dir, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or make_bundle(Path(tmp), args.data_dir)
        result = run(bundle, values, times, min(args.checks, 5) if args.smoke else args.checks)
    print_table(result)
    if not args.smoke:
        from timesclip_darts.atomic_files import write_text_atomic

        write_text_atomic(args.out, json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
