"""The benchmarks cut down for CI: the accuracy protocol (splits, every test window, best epoch),
runs known by what was fitted (resumption, a changed default, --rerun, tables, tuning taking an
accuracy row's fit), and the speed and GPU benchmarks' smoke runs. Those that run a benchmark
are marked ``integration``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import bench_accuracy as accuracy
from benchmarks import fits
from benchmarks import tune_timesclip as tune
from tests.conftest import DATA_DIR

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["--smoke", "--seeds", "0", "--jobs", "0"]
TINY = ["--epochs", "1", "--patience", "1", "--preset", "tiny", "--train-windows", "32"]
TINY += ["--val-windows", "16", "--jobs", "0"]


def tuning(out: Path) -> list[str]:
    """tune_timesclip's arguments for ETTh1 at the tiny budget, up to ``--variants``."""
    return [*TINY, "--datasets", "ETTh1", "--out", str(out), "--variants"]


def _repeat_last_mse_by_hand(windows: int) -> float:
    """The naive row, computed without Darts: ETTh1's test split scaled with train statistics."""
    values = pd.read_csv(DATA_DIR / "ETTh1.csv").iloc[:, 1:].to_numpy(np.float64)
    train = values[: 12 * 720]
    scaled = (values - train.mean(0)) / train.std(0)
    test = scaled[16 * 720 - 96 : 20 * 720]
    errors = [np.mean((test[w + 96 : w + 192] - test[w + 95]) ** 2) for w in range(windows)]
    return float(np.mean(errors))


@pytest.mark.integration
def test_accuracy_smoke_scores_every_row_on_the_same_windows(tmp_path: Path, capsys) -> None:
    report = accuracy.main([*SMOKE, "--out", str(tmp_path)])
    table = report["table"]["ETTh1"]
    assert set(table) == set(accuracy.ROWS)
    for row in table.values():
        assert np.isfinite(row["mse"]) and row["mse"] > 0 and row["mae"] > 0
    assert {r["test_windows"] for r in report["runs"]} == {64}
    for run in report["runs"]:  # the best validation epoch is the one tested
        if run["label"] != fits.NAIVE:
            assert 1 <= run["best_epoch"] <= run["epochs_run"] <= 2
            assert np.isfinite(run["best_val_loss"]) and run["best_val_loss"] > 0
    naive = table[fits.NAIVE]["mse"]
    assert naive == pytest.approx(_repeat_last_mse_by_hand(64), rel=1e-4)
    assert json.loads((tmp_path / "accuracy.json").read_text())["table"] == report["table"]
    assert "TimesCLIP ranks" in (tmp_path / "accuracy.md").read_text()
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"mse_by_model.png", "selection_attention_ETTh1.png"} <= plots
    assert any(name.startswith("forecasts_ETTh1_window") for name in plots)
    assert "TimesCLIP ranks" in capsys.readouterr().out


@pytest.mark.integration
def test_accuracy_rows_run_side_by_side_in_worker_processes(tmp_path: Path) -> None:
    rows = ["DLinear", fits.NAIVE]
    args = ["--smoke", "--seeds", "0", "1", "--jobs", "2", "--out", str(tmp_path)]
    report = accuracy.main([*args, "--rows", *rows, "--ablation-datasets"])
    table = report["table"]["ETTh1"]
    assert set(table) == set(rows) and all(table[r]["seeds"] == 2 for r in rows)
    # The naive forecast has no seed: no spread. Trained rows differ between seeds.
    assert table[fits.NAIVE]["mse_spread"] == 0 and table["DLinear"]["mse_spread"] > 0
    for run in report["runs"]:  # each row's own process: its own peak, its own wall time
        assert run["peak_rss_mib"] >= run["rss_after_fit_mib"] > 100 and run["wall_s"] > 0
        assert run["budget"] == report["budget"]


def test_every_label_is_one_fit_and_a_key_is_what_was_fitted() -> None:
    budget = fits.Budget(preset="tiny", d_model=32)
    catalogue = fits.Catalogue(fits.VARIANTS, budget, scored=False)
    built = list(catalogue.built.values())
    assert len({json.dumps(asdict(b), sort_keys=True) for b in built}) == len(built)
    key = catalogue.key(fits.TIMESCLIP, "ETTh1", 0)
    assert key == catalogue.fit(fits.TIMESCLIP, "ETTh1", 0)  # tuning keys are fit keys
    assert len({key, catalogue.key(fits.TIMESCLIP, "ETTh2", 0)}) == 2
    assert len({key, catalogue.key(fits.TIMESCLIP, "ETTh1", 1)}) == 2
    scored = fits.Catalogue([fits.TIMESCLIP], budget, scored=True)
    assert scored.fit(fits.TIMESCLIP, "ETTh1", 0) == key  # the same fit ...
    fewer = fits.Catalogue([fits.TIMESCLIP], replace(budget, test_windows=8), scored=True)
    assert fewer.fit(fits.TIMESCLIP, "ETTh1", 0) == key  # ... whatever it is scored on,
    assert fewer.key(fits.TIMESCLIP, "ETTh1", 0) != scored.key(fits.TIMESCLIP, "ETTh1", 0)
    longer = fits.Catalogue([fits.TIMESCLIP], replace(budget, epochs=3), scored=False)
    assert longer.key(fits.TIMESCLIP, "ETTh1", 0) != key  # but not whatever it is trained on


@pytest.mark.integration
def test_accuracy_resumes_by_key_and_never_overwrites_another_format(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    args = [*SMOKE, "--out", str(tmp_path), "--ablation-datasets", "--rows"]
    first = accuracy.main([*args, "DLinear", fits.NAIVE])
    assert "2 to run" in capsys.readouterr().out
    again = accuracy.main([*args, "DLinear", fits.NAIVE])  # every key is there: nothing runs
    assert "2 already in" in capsys.readouterr().out
    assert again["runs"] == json.loads(json.dumps(first["runs"]))  # as the file holds them
    grown = accuracy.main([*args, "DLinear", "NLinear"])
    assert "1 to run" in capsys.readouterr().out  # NLinear only
    assert set(grown["table"]["ETTh1"]) == {"DLinear", "NLinear", fits.NAIVE}
    rerun = accuracy.main([*args, "DLinear", "--rerun"])
    assert "1 to run" in capsys.readouterr().out and len(rerun["runs"]) == 3
    report = accuracy.main([*SMOKE, "--out", str(tmp_path), "--report-only"])
    assert "0 to run" in capsys.readouterr().out and report["table"] == rerun["table"]
    # A changed default builds another model: a new key, so a new run; the old one is kept
    # in the file, untabled, and tabled again under the label that builds it once more.
    dlinear = fits.VARIANTS["DLinear"]
    changed = fits.Variant(dlinear.model, {**dlinear.arguments, "kernel_size": 13})
    monkeypatch.setitem(fits.VARIANTS, "DLinear", changed)
    redone = accuracy.main([*args, "DLinear"])
    out = capsys.readouterr().out
    assert "1 to run" in out and "1 run(s) in" in out and len(redone["runs"]) == 4
    assert redone["table"]["ETTh1"]["DLinear"]["mse"] != rerun["table"]["ETTh1"]["DLinear"]["mse"]
    monkeypatch.setitem(fits.VARIANTS, "DLinear", dlinear)
    back = accuracy.main([*args, "DLinear"])
    assert "0 to run" in capsys.readouterr().out and back["table"] == rerun["table"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "accuracy.json").write_text(json.dumps({"format": 2, "runs": []}))
    with pytest.raises(fits.ResultsFileError, match="format 2, not 3"):
        accuracy.main([*SMOKE, "--out", str(legacy)])
    assert json.loads((legacy / "accuracy.json").read_text()) == {"format": 2, "runs": []}


@pytest.mark.integration
def test_tuning_takes_the_validation_loss_of_the_accuracy_row_with_its_fit(
    tmp_path: Path, capsys
) -> None:
    """bench_accuracy's TimesCLIP row and tune_timesclip's run of it are one fit, whatever the
    row was scored on: the same fit key and validation loss. So tuning takes the row's loss
    from accuracy.json instead of fitting it again."""
    import torch

    budget = fits.Budget(epochs=1, patience=1, train_windows=32, val_windows=16, preset="tiny")
    threads = torch.get_num_threads()
    scored = replace(budget, test_windows=8)
    row = accuracy.run_row("ETTh1", 0, fits.TIMESCLIP, scored, None, threads, False)
    run = tune.tune_row("ETTh1", 0, fits.TIMESCLIP, budget, None, threads)
    assert row.fit == run.key and row.best_val_loss == run.val_mse and np.isfinite(run.val_mse)
    stored = {"format": accuracy.FORMAT, "runs": [asdict(row)]}
    (tmp_path / "accuracy.json").write_text(json.dumps(stored))
    # The default's run comes from accuracy.json; another variant is fitted.
    report = tune.main([*tuning(tmp_path), fits.TIMESCLIP, "TimesCLIP, no vision"])
    out = capsys.readouterr().out
    assert "ETTh1 seed 0 TimesCLIP: validation from accuracy.json" in out and "1 runs to do" in out
    runs = {r["label"]: r for r in report["runs"]}
    assert runs[fits.TIMESCLIP]["source"] == "bench_accuracy"
    assert runs["TimesCLIP, no vision"]["source"] == "tune_timesclip"
    assert report["table"][fits.TIMESCLIP]["val_mse"] == {"ETTh1": row.best_val_loss}


@pytest.mark.integration
def test_tuning_judges_variants_by_validation_loss_against_the_default(
    tmp_path: Path, capsys
) -> None:
    """Variants are fitted like accuracy rows, each with its own arguments (same seed and
    windows, yet another validation loss), compared with the default run by run; resumable."""
    variant = "TimesCLIP, lr 1e-3"
    args = [*tuning(tmp_path), fits.TIMESCLIP, variant, "--references", "DLinear"]
    report = tune.main(args)
    runs = {r["label"]: r for r in report["runs"]}
    assert set(runs) == {fits.TIMESCLIP, variant, "DLinear"}
    assert runs[variant]["arguments"]["optimizer_kwargs"]["lr"] == 1e-3
    default, other = runs[fits.TIMESCLIP]["val_mse"], runs[variant]["val_mse"]
    assert np.isfinite(default) and np.isfinite(other) and default != other
    table = report["table"]
    change = 100 * (other / default - 1)
    assert table[fits.TIMESCLIP]["change_vs_default_pct"] == 0
    assert table[variant]["change_vs_default_pct"] == pytest.approx(change)
    assert table[variant]["change_vs_default_pct_by_dataset"] == {"ETTh1": pytest.approx(change)}
    written = (tmp_path / "tuning.md").read_text()
    assert "DLinear (reference)" in written and f"{other:.4f} ({change:+.1f} %)" in written
    again = tune.main(args)
    assert "0 runs to do" in capsys.readouterr().out and again["runs"] == report["runs"]
    assert tune.main([*TINY, "--out", str(tmp_path), "--report-only"])["table"] == table
    # The table spans invocations: a run on another dataset adds its column, in the ETT order.
    assert tune.tabled_datasets({"a": {"val_mse": {"ETTm1": 1, "ETTh2": 1}}}) == ["ETTh2", "ETTm1"]


@pytest.mark.integration
def test_speed_smoke_reports_ratios_and_the_cache_changes_no_forecast(tmp_path: Path) -> None:
    from benchmarks import bench_speed

    report = bench_speed.main(["--smoke", "--out", str(tmp_path)])
    for row in report["rasteriser"]:
        for backend in ("torch", "cpu-kernel"):
            assert row[f"{backend}_corr_mean"] >= 0.97
    training = report["training"]
    assert training["max_forecast_difference"] < 1e-5
    # The speed-up is a benchmark figure; what a test can hold is that the cache did the work:
    # every window of every epoch after the first came from it, and fit left nothing held.
    cached, uncached = training["runs"]["cache"], training["runs"]["no cache"]
    assert cached["cache_hits"] == training["windows"] * (training["epochs"] - 1)
    assert uncached["cache_hits"] is None
    assert cached["cache_bytes_after_fit"] == 0
    assert all(len(run["epoch_s"]) == 2 for run in training["runs"].values())
    assert all("error" not in row and row["peak_rss_mib"] > 0 for row in report["scaling"])
    assert (tmp_path / "speed.json").is_file()


def test_gpu_benchmark_runs_as_a_plain_file(tmp_path: Path) -> None:
    """A GPU machine's README runs ``python3 benchmarks/bench_gpu.py``: it needs no package
    beside the installed ones."""
    script = ROOT / "benchmarks" / "bench_gpu.py"
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, text=True)
    assert done.returncode == 0


@pytest.mark.integration
def test_gpu_benchmark_smoke_on_cpu_records_what_it_skips(
    tiny_model_path: Path, tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    """`bench_gpu.py --device cpu --smoke` on the session's tiny model and bundle: every section
    runs or says why not, the runtime (and the forced mixed data flow) matches Darts, and the
    graphs' outputs are the runtime's own torch buffers."""
    from benchmarks import bench_gpu

    out = tmp_path / "gpu_smoke.json"
    args = ["--device", "cpu", "--smoke", "--model", str(tiny_model_path)]
    result = bench_gpu.main([*args, "--bundle", str(tiny_bundle), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    no_cuda = "skipped: no CUDA"
    assert result["rasteriser_parity"] == no_cuda and result["config"]["device"] == "cpu"
    parity = {(r["placement"], r["vision_dtype"]): r for r in result["runtime_parity"]["tiny"]}
    assert set(parity) == {("cpu", d) for d in ("float32", "float16", "bfloat16")} | {
        ("mixed (forced)", "float32"),
        ("vision onnx", "float32"),
    }
    for placement in ("cpu", "mixed (forced)", "vision onnx"):
        assert parity[(placement, "float32")]["max_abs_diff_vs_darts"] < 1e-4
    assert parity[("mixed (forced)", "float32")]["mode"] == "mixed"
    assert 0 < parity[("cpu", "float16")]["max_abs_diff_vs_fp32"] < 5e-3  # autocast is on
    placement = result["ort_placement"]["tiny"]
    assert placement["wholly_on_cuda"] == no_cuda
    text_nodes = placement["text"]["nodes_by_provider"]
    assert list(text_nodes) == ["CPUExecutionProvider"]
    assert text_nodes["CPUExecutionProvider"]["Attention"] == 4  # optimised: 2 layers, run twice
    assert result["io_binding"]["tiny"]["outputs_are_torch_buffers"] is True
    (speed,) = result["speed"]["tiny"]
    assert speed["darts_fp32_windows_per_s"] > 0 and speed["runtime_float32_windows_per_s"] > 0
    assert speed["runtime_float32_max_abs_diff_vs_darts"] < 1e-4
    assert speed["runtime_onnx_float32_max_abs_diff_vs_darts"] < 1e-4
    vit = result["vit"]["tiny"]
    assert vit["bfloat16_images_per_s"] > 0 and vit["onnx_float32_images_per_s"] > 0
    assert vit["onnx_provider"] == "CPUExecutionProvider" and vit["onnx_max_abs_diff"] < 1e-4
    for key in ("tiny", "tiny, vision onnx"):
        stream = result["streaming"][key]
        assert 0 < stream["p50_ms"] <= stream["p99_ms"]
        assert stream["max_abs_diff_vs_rolling"] < 1e-5
    training = result["training"]["tiny"]
    assert training["forecasts_equal"] and set(training["runs"]) == {"no cache", "cache"}
    for run in training["runs"].values():
        assert run["windows_per_s"][0] > 0 and run["peak_gpu_mib"] == no_cuda
    assert training["runs"]["cache"]["cache_bytes_at_epoch_end"][0] > 0  # the cache was used
    checks = result["checks"]
    assert checks["graphs_wholly_on_cuda"] == no_cuda and checks["runtime_parity_fp32"] is True
    assert checks["io_binding_to_torch_buffers"] and checks["cache_forecasts_equal"]
    assert "| tiny | 8 | cpu |" in capsys.readouterr().out


def test_gpu_benchmark_counts_each_nodes_provider_once() -> None:
    """ORT's profile has several events per node (fences, kernel time) and only kernel events
    name a provider; a node is counted once, under the provider that ran it."""
    from benchmarks import bench_gpu

    def event(name: str, provider: str | None, op: str) -> dict:
        args = {"op_name": op} | ({"provider": provider} if provider else {})
        return {"cat": "Node", "name": name, "args": args}

    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        event("MatMul_1_fence_before", None, "MatMul"),
        event("MatMul_1_kernel_time", "CUDAExecutionProvider", "MatMul"),
        event("MatMul_1_kernel_time", "CUDAExecutionProvider", "MatMul"),  # a second run
        event("Attention_0_kernel_time", "CUDAExecutionProvider", "Attention"),
        event("Shape_3_kernel_time", "CPUExecutionProvider", "Shape"),
    ]
    assert bench_gpu.providers_by_node(events) == {
        "CUDAExecutionProvider": {"MatMul": 1, "Attention": 1},
        "CPUExecutionProvider": {"Shape": 1},
    }
