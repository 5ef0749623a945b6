"""The accuracy and speed benchmarks, cut down for CI: they run end to end, score the protocol
correctly, and write their JSON and plots."""

from __future__ import annotations

import importlib
import json
import runpy
import sys
from collections.abc import Iterator
from dataclasses import asdict
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
    report = accuracy["main"](["--smoke", "--seeds", "0", "--jobs", "0", "--out", str(tmp_path)])
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
    assert "TimesCLIP ranks" in (tmp_path / "accuracy.md").read_text()
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"mse_by_model.png", "selection_attention_ETTh1.png"} <= plots
    assert any(name.startswith("forecasts_ETTh1_window") for name in plots)
    assert "TimesCLIP ranks" in capsys.readouterr().out


def test_a_run_whose_row_moved_takes_the_name_that_builds_its_arguments(accuracy: dict) -> None:
    """When a default changes, the runs measured under it are relabelled by what they measured:
    to the one row that builds their arguments today, never onto a row that has its own run of
    that dataset and seed, never when two rows fit, never across budgets."""
    from dataclasses import asdict
    from types import SimpleNamespace

    budget = accuracy["Budget"]()

    def run(dataset, model, lr, seed=0, budget=None):
        recorded = budget or asdict(accuracy["Budget"]())
        return SimpleNamespace(
            dataset=dataset, seed=seed, model=model, arguments={"lr": lr}, budget=recorded
        )

    today = {
        "TimesCLIP": {"lr": 3},
        "TimesCLIP, paper's": {"lr": 1},
        "A": {"lr": 5},
        "B": {"lr": 5},
    }
    runs = [
        run("ETTh1", "TimesCLIP", 1),  # measured before the default moved: the paper's now
        run("ETTh1", "TimesCLIP", 3, seed=1),  # current: stays
        run("ETTh2", "TimesCLIP", 2),  # nothing builds it today: stays (stale)
        run("ETTm1", "TimesCLIP", 1),  # the paper's row of ETTm1 exists already: stays
        run("ETTm1", "TimesCLIP, paper's", 1),
        run("ETTm2", "TimesCLIP", 5),  # two rows build it: stays
        run("ETTh1", "TimesCLIP", 1, seed=2, budget={"epochs": 1}),  # another budget: stays
    ]
    moved = accuracy["relabel_by_arguments"](runs, budget, today, "model", "arguments")
    assert moved == ["ETTh1 seed 0: TimesCLIP -> TimesCLIP, paper's"]
    assert [r.model for r in runs] == [
        "TimesCLIP, paper's",
        "TimesCLIP",
        "TimesCLIP",
        "TimesCLIP",
        "TimesCLIP, paper's",
        "TimesCLIP",
        "TimesCLIP",
    ]


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
    for run in report["runs"]:  # each row's own process: its own peak, its own wall time
        assert run["peak_rss_mib"] >= run["rss_after_fit_mib"] > 100 and run["wall_s"] > 0
        assert run["budget"] == report["budget"]
        if run["model"] != accuracy["NAIVE"]:
            assert 1 <= run["best_epoch"] <= run["epochs_run"] <= 2
            assert np.isfinite(run["best_val_loss"]) and run["best_val_loss"] > 0
        else:
            assert run["best_val_loss"] is None  # nothing trained, nothing validated
    assert report["timesclip_rank"]["ETTh1"]["of"] == 3


def test_accuracy_resumes_from_its_json_and_never_overwrites_an_older_one(
    accuracy: dict, tmp_path: Path, capsys
) -> None:
    args = ["--smoke", "--seeds", "0", "--jobs", "0", "--out", str(tmp_path)]
    rows = ["--rows", "DLinear", accuracy["NAIVE"], "--ablation-datasets"]
    first = accuracy["main"]([*args, *rows])
    assert "2 to run" in capsys.readouterr().out
    again = accuracy["main"]([*args, *rows])  # everything is there: nothing runs
    assert "2 already in" in capsys.readouterr().out
    assert again["runs"] == json.loads(json.dumps(first["runs"]))  # as the file holds them
    grown = accuracy["main"]([*args, "--rows", "DLinear", "NLinear", "--ablation-datasets"])
    assert "1 to run" in capsys.readouterr().out  # NLinear only
    assert set(grown["table"]["ETTh1"]) == {"DLinear", "NLinear", accuracy["NAIVE"]}
    rerun = accuracy["main"]([*args, "--rows", "DLinear", "--ablation-datasets", "--rerun"])
    assert "1 to run" in capsys.readouterr().out and len(rerun["runs"]) == 3
    report = accuracy["main"]([*args, "--report-only"])  # tables and plots, no runs
    assert "0 to run" in capsys.readouterr().out and report["table"] == rerun["table"]
    # A row measured with other arguments than its row gets today (a default changed since) is
    # kept in the file, left out of the table and measured again.
    stored = json.loads((tmp_path / "accuracy.json").read_text())
    stale = next(r for r in stored["runs"] if r["model"] == "DLinear")
    stale["arguments"]["kernel_size"], stale["mse"] = 13, 99.0
    (tmp_path / "accuracy.json").write_text(json.dumps(stored))
    redone = accuracy["main"]([*args, *rows])
    out = capsys.readouterr().out
    assert "1 row(s) in" in out and "1 to run" in out
    assert [r["mse"] for r in redone["runs"] if r["model"] == "DLinear"][0] == 99.0
    assert len(redone["runs"]) == 4 and redone["table"]["ETTh1"]["DLinear"]["mse"] != 99.0
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "accuracy.json").write_text(json.dumps({"budget": {}, "runs": []}))
    with pytest.raises(accuracy["ResultsFileError"], match="older bench_accuracy.py"):
        accuracy["main"](["--smoke", "--seeds", "0", "--jobs", "0", "--out", str(legacy)])
    assert json.loads((legacy / "accuracy.json").read_text()) == {"budget": {}, "runs": []}


def test_tuning_takes_the_default_from_the_accuracy_row_it_equals(
    accuracy: dict, tmp_path: Path, capsys
) -> None:
    """bench_accuracy's TimesCLIP row and tune_timesclip's default run are one fit: the same
    validation loss and arguments. So tuning takes the default's validation from accuracy.json
    instead of fitting it again, unless the row's arguments are not today's; an ablation row
    likewise gives the variant that builds exactly its arguments."""
    import torch

    tune = importlib.import_module("tune_timesclip")
    windows = dict(epochs=1, patience=1, train_windows=32, val_windows=16, preset="tiny")
    scored = accuracy["Budget"](**windows, test_windows=8)
    threads = torch.get_num_threads()
    row = accuracy["run_row"]("ETTh1", 0, accuracy["TIMESCLIP"], scored, None, threads, False)
    run = tune.tune_row("ETTh1", 0, tune.DEFAULT, scored, None, threads)
    assert np.isfinite(run.val_mse) and row.best_val_loss == run.val_mse
    assert row.arguments == run.model_arguments and row.best_epoch == run.best_epoch

    args = ["--datasets", "ETTh1", "--epochs", "1", "--patience", "1", "--preset", "tiny"]
    args += ["--train-windows", "32", "--val-windows", "16", "--jobs", "0", "--out", str(tmp_path)]
    stored = {**asdict(row), "budget": asdict(accuracy["Budget"](**windows))}  # tuning's budget
    rows = tmp_path / "accuracy.json"
    rows.write_text(json.dumps({"format": accuracy["FORMAT"], "runs": [stored]}))
    report = tune.main([*args, "--variants", tune.DEFAULT])
    assert "0 runs to do" in capsys.readouterr().out
    (taken,) = report["runs"]
    assert taken["source"] == "bench_accuracy" and taken["val_mse"] == row.best_val_loss
    assert report["table"][tune.DEFAULT]["val_mse"] == {"ETTh1": row.best_val_loss}
    # An ablation row is the variant that builds its arguments (seed 1: a run tuning lacks).
    (tmp_path / "tuning.json").unlink()
    ablation, variant = "TimesCLIP, trainable ViT", "trainable ViT, default rates"
    built = accuracy["current_arguments"]([ablation], accuracy["Budget"](**windows))[ablation]
    assert built["freeze_vision"] is False and built != row.arguments
    trainable = {**stored, "model": ablation, "seed": 1, "arguments": built, "best_val_loss": 0.5}
    rows.write_text(json.dumps({"format": accuracy["FORMAT"], "runs": [stored, trainable]}))
    report = tune.main([*args, "--seeds", "0", "1", "--variants", tune.DEFAULT, variant])
    out = capsys.readouterr().out
    assert f"ETTh1 seed 1 {variant}: validation from accuracy.json" in out
    # Seed 1's default is fitted (no row holds it); seed 0's variant too.
    assert "2 runs to do" in out
    taken = {(r["seed"], r["variant"]): r for r in report["runs"]}
    assert taken[(1, variant)]["source"] == "bench_accuracy"
    assert taken[(1, variant)]["val_mse"] == 0.5 and taken[(1, variant)]["model_arguments"] == built
    assert taken[(0, variant)]["source"] == "tune_timesclip"
    # A row whose arguments are not today's default is not taken: the default is fitted.
    (tmp_path / "tuning.json").unlink()
    stale = {**stored, "arguments": {**stored["arguments"], "dropout": 0.2}}
    rows.write_text(json.dumps({"format": accuracy["FORMAT"], "runs": [stale]}))
    report = tune.main([*args, "--variants", tune.DEFAULT])
    assert "1 runs to do" in capsys.readouterr().out
    assert [r["source"] for r in report["runs"]] == ["tune_timesclip"]


def test_a_row_recorded_before_an_argument_existed_is_current_at_its_old_value(
    accuracy: dict,
) -> None:
    """Adding a TimesCLIPModel argument must not retire every recorded row: one recorded
    without the key measured the model built with the key's old-behaviour value, and only
    that; a row built with any other value is not current."""
    budget = accuracy["Budget"](preset="tiny")
    name = accuracy["TIMESCLIP"]
    today = accuracy["current_arguments"]([name], budget)[name]
    assert today["per_variate_head"] is False
    before = {k: v for k, v in today.items() if k != "per_variate_head"}
    measured = accuracy["measured_as_today"]
    assert measured(asdict(budget), before, today, budget)
    per_variate = {**today, "per_variate_head": True}
    assert not measured(asdict(budget), before, per_variate, budget)
    assert measured(asdict(budget), per_variate, per_variate, budget)
    # Anything else missing or different still retires the row.
    assert not measured(asdict(budget), {**before, "dropout": 0.2}, today, budget)
    assert not measured(
        asdict(budget), {k: v for k, v in before.items() if k != "dropout"}, today, budget
    )


def test_tuning_judges_variants_by_validation_loss_against_the_default(
    accuracy: dict, tmp_path: Path, capsys
) -> None:
    """Variants are fitted like accuracy rows, each with its own arguments (same seed and
    windows, yet another validation loss), compared with the default run by run; resumable."""
    tune = importlib.import_module("tune_timesclip")
    regularised = "dropout 0.3, weight decay 0.1"
    args = ["--datasets", "ETTh1", "--epochs", "2", "--patience", "1", "--preset", "tiny"]
    args += ["--train-windows", "64", "--val-windows", "16", "--jobs", "0", "--out", str(tmp_path)]
    report = tune.main([*args, "--variants", tune.DEFAULT, regularised, "--references", "DLinear"])
    runs = {r["variant"]: r for r in report["runs"]}
    assert set(runs) == {tune.DEFAULT, regularised, "DLinear"}
    assert runs["DLinear"]["arguments"] == {} and np.isfinite(runs["DLinear"]["val_mse"])
    assert runs[regularised]["arguments"]["dropout"] == 0.3
    default, other = runs[tune.DEFAULT]["val_mse"], runs[regularised]["val_mse"]
    assert np.isfinite(default) and np.isfinite(other) and default != other
    table = report["table"]
    assert table[tune.DEFAULT]["change_vs_default_pct"] == 0
    change = 100 * (other / default - 1)
    assert table[regularised]["change_vs_default_pct"] == pytest.approx(change)
    by_dataset = table[regularised]["change_vs_default_pct_by_dataset"]
    assert by_dataset == {"ETTh1": pytest.approx(change)}
    written = (tmp_path / "tuning.md").read_text()
    assert "DLinear (reference)" in written and f"{other:.4f} ({change:+.1f} %)" in written
    again = tune.main([*args, "--variants", regularised])
    assert "0 runs to do" in capsys.readouterr().out and again["runs"] == report["runs"]
    # Had the default's dropout changed since, its run would be stale: kept, not tabled, redone.
    stored = json.loads((tmp_path / "tuning.json").read_text())
    default_run = next(r for r in stored["runs"] if r["variant"] == tune.DEFAULT)
    assert default_run["model_arguments"]["dropout"] == 0.3
    default_run["model_arguments"]["dropout"] = 0.2
    (tmp_path / "tuning.json").write_text(json.dumps(stored))
    redone = tune.main([*args, "--variants", tune.DEFAULT])
    assert "1 runs to do" in capsys.readouterr().out and len(redone["runs"]) == 4
    assert redone["table"][tune.DEFAULT]["val_mse"]["ETTh1"] == pytest.approx(default)
    # A run stored under a name whose arguments moved takes the variant that builds them today.
    stored = json.loads((tmp_path / "tuning.json").read_text())
    for r in stored["runs"]:
        r["variant"] = "lr 3e-4" if r["variant"] == regularised else r["variant"]
    (tmp_path / "tuning.json").write_text(json.dumps(stored))
    moved = tune.main([*args, "--variants", regularised])
    assert f"ETTh1 seed 0: lr 3e-4 -> {regularised}" in capsys.readouterr().out
    assert moved["table"][regularised]["val_mse"]["ETTh1"] == pytest.approx(other)
    # The table spans invocations: a run on another dataset adds its column, in the ETT order.
    assert tune.tabled_datasets({"a": {"val_mse": {"ETTm1": 1, "ETTh2": 1}}}) == ["ETTh2", "ETTm1"]


def test_speed_smoke_reports_ratios_and_the_cache_changes_no_forecast(tmp_path: Path) -> None:
    bench = runpy.run_path(str(BENCHMARKS / "bench_speed.py"))
    report = bench["main"](["--smoke", "--out", str(tmp_path)])
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


def test_gpu_benchmark_smoke_on_cpu_records_what_it_skips(
    tiny_model_path: Path, tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    """`bench_gpu.py --device cpu --smoke` on the session's tiny model and bundle: every section
    runs or says why not, the runtime (and the forced mixed data flow) matches Darts, and the
    graphs' outputs are the runtime's own torch buffers."""
    bench = runpy.run_path(str(BENCHMARKS / "bench_gpu.py"))
    out = tmp_path / "gpu_smoke.json"
    args = ["--device", "cpu", "--smoke", "--model", str(tiny_model_path)]
    result = bench["main"]([*args, "--bundle", str(tiny_bundle), "--out", str(out)])
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
    bench = runpy.run_path(str(BENCHMARKS / "bench_gpu.py"))

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
    assert bench["providers_by_node"](events) == {
        "CUDAExecutionProvider": {"MatMul": 1, "Attention": 1},
        "CPUExecutionProvider": {"Shape": 1},
    }
