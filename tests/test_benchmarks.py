"""The accuracy and speed benchmarks, cut down for CI: they run end to end, score the protocol
correctly, and write their JSON and plots."""

from __future__ import annotations

import importlib
import json
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import DATA_DIR

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def accuracy() -> Iterator[dict]:
    """The benchmark as an importable module: its worker processes import it by name."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield vars(importlib.import_module("bench_accuracy"))
    finally:
        sys.path.remove(str(BENCHMARKS))


def _repeat_last_mse_by_hand(windows: int) -> float:
    """The naive row, computed without Darts: ETTh1's test split scaled with train statistics."""
    values = pd.read_csv(DATA_DIR / "ETTh1.csv").iloc[:, 1:].to_numpy(np.float64)
    train = values[: 12 * 720]
    scaled = (values - train.mean(0)) / train.std(0)
    test = scaled[16 * 720 - 96 : 20 * 720]
    errors = [np.mean((test[w + 96 : w + 192] - test[w + 95]) ** 2) for w in range(windows)]
    return float(np.mean(errors))


def test_accuracy_smoke_scores_every_row_on_the_same_windows(
    accuracy: dict, tmp_path: Path, capsys
) -> None:
    report = accuracy["main"](["--smoke", "--seeds", "0", "--jobs", "1", "--out", str(tmp_path)])
    table = report["table"]["ETTh1"]
    expected = {accuracy["TIMESCLIP"], *accuracy["BASELINES"], *accuracy["ABLATIONS"]}
    assert set(table) == expected
    for row in table.values():
        assert np.isfinite(row["mse"]) and row["mse"] > 0 and row["mae"] > 0
    runs = report["runs"]
    assert {r["test_windows"] for r in runs} == {64}
    naive = table[accuracy["NAIVE"]]["mse"]
    assert naive == pytest.approx(_repeat_last_mse_by_hand(64), rel=1e-4)
    assert json.loads((tmp_path / "accuracy.json").read_text())["table"] == report["table"]
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"mse_by_model.png", "selection_attention_ETTh1.png"} <= plots
    assert any(name.startswith("forecasts_ETTh1_window") for name in plots)
    assert "TimesCLIP ranks" in capsys.readouterr().out


def test_accuracy_rows_run_side_by_side_in_worker_processes(accuracy: dict, tmp_path: Path) -> None:
    rows = [accuracy["TIMESCLIP"], "DLinear", accuracy["NAIVE"]]
    args = ["--smoke", "--seeds", "0", "1", "--jobs", "2", "--out", str(tmp_path)]
    report = accuracy["main"]([*args, "--rows", *rows, "--ablation-datasets"])
    table = report["table"]["ETTh1"]
    assert set(table) == set(rows)
    assert all(table[r]["seeds"] == 2 for r in rows)
    # The naive forecast has no seed: no spread. Trained rows differ between seeds.
    assert table[accuracy["NAIVE"]]["mse_spread"] == 0
    assert table["DLinear"]["mse_spread"] > 0


def test_speed_smoke_reports_ratios_and_the_cache_changes_no_forecast(tmp_path: Path) -> None:
    bench = runpy.run_path(str(BENCHMARKS / "bench_speed.py"))
    report = bench["main"](["--smoke", "--out", str(tmp_path)])
    for row in report["rasteriser"]:
        for backend in ("torch", "cpu-kernel"):
            assert row[f"{backend}_vs_matplotlib"] > 0
            assert row[f"{backend}_corr_mean"] >= 0.97
    training = report["training"]
    assert training["max_forecast_difference"] < 1e-5
    assert training["epoch2_speedup"] > 0
    assert all(len(run["epoch_s"]) == 2 for run in training["runs"].values())
    assert all("error" not in row and row["peak_rss_mib"] > 0 for row in report["scaling"])
    assert (tmp_path / "speed.json").is_file()
