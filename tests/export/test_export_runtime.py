"""The export step and the deployment runtime on a trained tiny TimesCLIP: parity with Darts'
``historical_forecasts`` on the whole ETTh1 test split, streaming, the scaler, the commands,
errors for bad input and damaged bundles, atomic writing, light imports, the benchmark."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from timesclip_export.bundle.format import check_program_safe, sha256_file
from timesclip_export.errors import (
    BundleError,
    BundleVersionError,
    DeviceError,
    ExportError,
    InputError,
    TimestampError,
)
from timesclip_export.exporter import graphs
from timesclip_export.exporter.writer import export_bundle
from timesclip_export.runtime.forecaster import RollingForecaster

from tests.conftest import ROOT
from timesclip_cli.main import main
from timesclip_darts import TimesCLIPModel
from timesclip_darts.atomic_files import staged_folder

ICL, OCL = 96, 24
COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
TEST_START = 11520 - ICL  # first row of the standard test split (it starts ICL rows early)


@pytest.fixture(scope="module")
def splits(etth1_splits):
    return etth1_splits


@pytest.fixture(scope="module")
def trained(tiny_model_path: Path) -> Path:
    """A tiny TimesCLIP, one epoch on 256 windows, saved with its scaler as `train` does."""
    return tiny_model_path


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Path:
    """Its bundle, exported with `timesclip-darts export --sign` (conftest)."""
    return tiny_bundle


@pytest.fixture(scope="module")
def darts_forecasts(trained: Path, splits) -> np.ndarray:
    """Darts' stride-1 backtest of the whole (scaled) test split, ``[windows, OCL, 7]``."""
    model = TimesCLIPModel.load(str(trained))
    forecasts = model.historical_forecasts(
        splits.test, forecast_horizon=OCL, retrain=False, last_points_only=False, verbose=False
    )
    return np.stack([f.values() for f in forecasts])


@pytest.fixture(scope="module")
def scaled(bundle: Path) -> RollingForecaster:
    """The runtime fed scaled values, as Darts is."""
    return RollingForecaster(bundle, apply_scaler=False)


def raw_rows(etth1: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    """Raw ETTh1 rows as a DataFrame indexed by time."""
    return etth1.iloc[start:stop].set_index("date")[COLUMNS].astype(np.float32)


# ------------------------------------------------------------------------------ the bundle
def test_manifest_describes_the_model_files_and_graphs(bundle: Path, splits) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = manifest["model"]
    assert (model["input_chunk_length"], model["output_chunk_length"]) == (ICL, OCL)
    assert model["inputs"] == model["targets"] == COLUMNS and model["past_covariates"] == []
    assert model["likelihood"]["parameters"] == ["value"]
    assert manifest["time"] == {
        "index": "datetime",
        "freq": "h",
        "step_ns": 3600 * 10**9,
        "step": None,
    }
    fitted = splits.scaler._fitted_params[0]
    assert manifest["scaler"]["components"] == COLUMNS
    np.testing.assert_allclose(manifest["scaler"]["mean"], fitted.mean_, rtol=1e-12)
    np.testing.assert_allclose(manifest["scaler"]["scale"], fitted.scale_, rtol=1e-12)
    assert manifest["dtypes"]["input"] == "float32" and manifest["onnx"]["opset"] == 18
    # vision.pt2 and vision.onnx are the ViT alone; the runtime draws 32-px images with 1-px
    # lines (tiny preset).
    renderer = manifest["vision"]["renderer"]
    assert renderer["module"] == "timesclip_darts.line_raster" and renderer["version"] == 1
    assert (renderer["image_size"], renderer["line_width"]) == (32, 1.0)
    graphs = ("vision", "text", "fusion")
    files = {"vision.pt2"} | {f"{g}.onnx" for g in graphs} | {f"{g}.opt.onnx" for g in graphs}
    assert set(manifest["files"]) == files
    assert {p.name for p in bundle.iterdir()} == files | {"manifest.json", "manifest.sig"}
    assert manifest["signature"]["file"] == "manifest.sig"  # exported with --sign (conftest)
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundle / name)
    # Two text-encoder layers, run twice (patches and variate tokens): 4 fused attentions.
    text_ops = manifest["onnx"]["optimized"]["text"]["fused_operators"]
    assert text_ops["Attention"] == 4 and text_ops["QuickGelu"] == 4
    assert text_ops["SkipLayerNormalization"] >= 4
    # Two ViT layers: 2 fused attentions; every exported piece within the export tolerance.
    vision_ops = manifest["onnx"]["optimized"]["vision"]["fused_operators"]
    assert vision_ops["Attention"] == 2 and vision_ops["QuickGelu"] == 2
    assert all(error <= 1e-4 for error in manifest["export_max_abs_error"].values())
    assert set(manifest["export_max_abs_error"]) == files
    assert "SkipLayerNormalization" in manifest["onnx"]["optimized"]["fusion"]["fused_operators"]
    assert max(manifest["export_max_abs_error"].values()) < 1e-4
    versions = manifest["versions"]
    assert versions["torch"] == torch.__version__
    assert all(versions[name] for name in ("onnx", "onnxruntime", "transformers", "darts"))


# ------------------------------------------------------------------------------ parity
def test_rolling_equals_darts_historical_forecasts_on_the_test_split(
    scaled: RollingForecaster, splits, darts_forecasts: np.ndarray
) -> None:
    values = splits.test.values()
    out = scaled.rolling(values)
    n = len(darts_forecasts)
    assert n == len(splits.test) - ICL - OCL + 1 == 2857
    assert out.shape == (len(values) - ICL + 1, OCL, 7)  # and the windows past Darts' end
    assert np.abs(out[:n] - darts_forecasts).max() < 1e-4


def test_plain_graphs_equal_the_optimised_ones(
    bundle: Path, scaled: RollingForecaster, splits, darts_forecasts: np.ndarray
) -> None:
    plain = RollingForecaster(bundle, optimized=False, apply_scaler=False)
    assert "plain ONNX graphs" in plain.describe()
    values = splits.test.values()[: ICL + 499]
    optimised = scaled.rolling(values)
    assert np.abs(plain.rolling(values) - optimised).max() < 1e-5
    assert np.abs(optimised - darts_forecasts[:500]).max() < 1e-4


def test_rolling_with_a_stride_takes_every_nth_window(scaled: RollingForecaster, splits) -> None:
    values = splits.test.values()[:300]
    every = scaled.rolling(values)
    strided = scaled.rolling(values, stride=7)
    np.testing.assert_allclose(strided, every[::7], atol=1e-5)


def test_bundle_scaler_takes_raw_values_and_returns_raw_forecasts(
    bundle: Path, etth1: pd.DataFrame, splits, darts_forecasts: np.ndarray
) -> None:
    forecaster = RollingForecaster(bundle)
    assert "scaler applied" in forecaster.describe()
    rows = raw_rows(etth1, TEST_START, TEST_START + ICL + 199)
    out = forecaster.rolling(rows)
    fitted = splits.scaler._fitted_params[0]
    expected = darts_forecasts[:200] * fitted.scale_ + fitted.mean_
    assert np.abs(out - expected).max() < 1e-4


def test_forecast_of_one_window_is_the_last_rolling_forecast(
    scaled: RollingForecaster, splits
) -> None:
    values = splits.test.values()[: ICL + 20]
    one = scaled.forecast(values)  # a longer history: its last ICL rows are the window
    assert one.shape == (OCL, 7)
    np.testing.assert_allclose(one, scaled.rolling(values)[-1], atol=1e-5)


# ------------------------------------------------------------------------------ streaming
def test_update_in_uneven_chunks_equals_rolling(scaled: RollingForecaster, splits) -> None:
    values = splits.test.values()[:400]
    times = splits.test.time_index[:400]
    expected = scaled.rolling(values)
    scaled.reset()
    pieces, start = [], 0
    for size in (1, 50, 44, 1, 1, 3, 100, 200):
        out = scaled.update(values[start : start + size], timestamps=times[start : start + size])
        counts = max(0, start + size - ICL + 1) - max(0, start - ICL + 1)
        assert len(out) == counts  # one forecast per new row that ends a full window
        pieces.append(out)
        start += size
    assert scaled.rows_seen == 400
    np.testing.assert_allclose(np.concatenate(pieces), expected, atol=1e-5)


def test_update_refuses_bad_timestamps_and_keeps_its_state(
    scaled: RollingForecaster, splits
) -> None:
    values = splits.test.values()[: ICL + 2]
    times = splits.test.time_index[: ICL + 2]
    expected = scaled.rolling(values)
    scaled.reset()
    scaled.update(values[:ICL], timestamps=times[:ICL])
    bad = {
        "gap in timestamps": times[ICL] + pd.Timedelta(hours=3),
        "duplicate timestamp": times[ICL - 1],
        "out-of-order timestamp": times[ICL - 2],
    }
    for message, stamp in bad.items():
        with pytest.raises(TimestampError, match=message):
            scaled.update(values[ICL : ICL + 1], timestamps=[stamp])
    with pytest.raises(TimestampError, match="3 missing step"):
        scaled.update(values[ICL : ICL + 1], timestamps=[times[ICL] + pd.Timedelta(hours=3)])
    with pytest.raises(TimestampError, match="pass timestamps for these rows too"):
        scaled.update(values[ICL : ICL + 1])
    assert scaled.rows_seen == ICL  # nothing was appended
    out = scaled.update(values[ICL:], timestamps=times[ICL:])
    np.testing.assert_allclose(out, expected[1:], atol=1e-5)


def test_dataframe_rows_with_a_time_index_are_checked(bundle: Path, etth1: pd.DataFrame) -> None:
    forecaster = RollingForecaster(bundle)
    rows = raw_rows(etth1, TEST_START, TEST_START + ICL + 10)
    gappy = rows.drop(rows.index[50])
    gap = "gap in timestamps: 2017-10-22 01:00:00 -> 2017-10-22 03:00:00 at row 50"
    with pytest.raises(TimestampError, match=gap):
        forecaster.rolling(gappy)
    shuffled = rows.iloc[[1, 0, *range(2, len(rows))]]
    with pytest.raises(TimestampError, match="out-of-order"):
        forecaster.rolling(shuffled)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda v: v[:, :6], r"expected 7 variates \['HUFL'.*got 6 columns"),
        (lambda v: v.astype(np.int64), "floating-point.*int64"),
        (lambda v: v[:50], "got 50 rows; a window needs 96"),
        (lambda v: v[None], "2-D array"),
        (lambda v: np.where(np.arange(len(v))[:, None] == 10, np.nan, v), "row 10.*'HUFL'"),
        (lambda v: np.where(np.arange(len(v))[:, None] == 7, 1e30, v), r"row 7.*beyond ±1e\+18"),
    ],
)
def test_bad_arrays_are_refused_with_the_reason(scaled: RollingForecaster, make, message) -> None:
    values = np.random.default_rng(0).normal(size=(120, 7)).astype(np.float32)
    with pytest.raises(InputError, match=message):
        scaled.rolling(make(values))


def test_variates_are_checked_by_name(scaled: RollingForecaster, etth1: pd.DataFrame) -> None:
    rows = raw_rows(etth1, 0, 120)
    with pytest.raises(InputError, match="wrong order"):
        scaled.rolling(rows[COLUMNS[::-1]])
    with pytest.raises(InputError, match=r"missing \['OT'\], unexpected \['oil'\]"):
        scaled.rolling(rows.rename(columns={"OT": "oil"}))
    with pytest.raises(InputError, match=r"row 3 \(2016-07-01 03:00:00\), variate 'OT': value inf"):
        scaled.rolling(rows.assign(OT=np.where(np.arange(120) == 3, np.inf, rows["OT"])))


def test_half_precision_vision_stays_close_to_float32(
    bundle: Path, scaled: RollingForecaster, splits
) -> None:
    values = splits.test.values()[: ICL + 199]
    half = RollingForecaster(bundle, vision_dtype="float16", apply_scaler=False)
    assert "vision in float16" in half.describe()
    difference = np.abs(half.rolling(values) - scaled.rolling(values)).max()
    assert 0 < difference < 5e-3  # autocast is on (not bit-equal), and harmless (3e-4 measured)


def test_cuda_is_refused_clearly_where_there_is_none(bundle: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        RollingForecaster(bundle, vision="torch", device="cuda")
    with pytest.raises(DeviceError, match="onnxruntime has no CUDAExecutionProvider"):
        RollingForecaster(bundle, vision="onnx", device="cuda")
    for vision, reason in (("torch", "torch sees no CUDA device"), ("onnx", "onnxruntime has no")):
        forecaster = RollingForecaster(bundle, vision=vision, device="auto")
        assert forecaster.placement.vision_device == forecaster.placement.graph_device == "cpu"
        assert f"CUDA not used: {reason}" in forecaster.describe()


# ------------------------------------------------------------------------------ damaged bundles
def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda d: (d / "text.opt.onnx").unlink(), BundleError, r"missing file\(s\) \['text.opt"),
        (lambda d: (d / "notes.txt").write_text("hi"), BundleError, r"\['notes.txt'\]"),
        (
            lambda d: (d / "fusion.onnx").write_bytes((d / "fusion.onnx").read_bytes()[:-1] + b"!"),
            BundleError,
            "checksum mismatch for fusion.onnx",
        ),
        (lambda d: (d / "manifest.json").unlink(), BundleError, "no manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{"), BundleError, "not valid JSON"),
        (
            lambda d: _edit_manifest(d, lambda m: m.update(format_version=99)),
            BundleVersionError,
            "bundle format version 99",
        ),
        (  # format 1 held the rasteriser inside vision.pt2; this runtime draws itself
            lambda d: _edit_manifest(d, lambda m: m.update(format_version=1)),
            BundleVersionError,
            "bundle format version 1 .* re-export",
        ),
        (
            lambda d: _edit_manifest(d, lambda m: m["vision"]["renderer"].update(version=0)),
            BundleVersionError,
            "images of rasteriser version 0",
        ),
        (
            lambda d: _edit_manifest(d, lambda m: m["versions"].update(torch="1.13.1")),
            BundleVersionError,
            "written by torch 1.13.1",
        ),
        (
            lambda d: _edit_manifest(d, lambda m: m["versions"].update(onnxruntime="9.0.0")),
            BundleVersionError,
            "operators of onnxruntime 9.0.0",
        ),
    ],
)
def test_damaged_bundles_are_refused(bundle: Path, tmp_path: Path, damage, error, message) -> None:
    folder = _copy(bundle, tmp_path)
    damage(folder)
    with pytest.raises(error, match=message):
        RollingForecaster(folder, vision="torch")


def test_the_onnx_vision_path_needs_no_matching_torch(bundle: Path, tmp_path: Path) -> None:
    """vision.pt2 is bound to the exporter's torch release; the ONNX path never loads it."""
    folder = _copy(bundle, tmp_path)
    _edit_manifest(folder, lambda m: m["versions"].update(torch="1.13.1"))
    assert RollingForecaster(folder, vision="onnx").vision == "onnx"
    assert RollingForecaster(folder, device="cpu").vision == "onnx"  # auto on CPU


def test_version_mismatch_can_be_allowed_with_a_warning(bundle: Path, tmp_path: Path) -> None:
    folder = _copy(bundle, tmp_path)
    _edit_manifest(folder, lambda m: m["versions"].update(onnxruntime="9.0.0"))
    assert RollingForecaster(folder, optimized=False).optimized is False  # plain graphs: fine
    with pytest.warns(UserWarning, match="onnxruntime 9.0.0"):
        RollingForecaster(folder, allow_version_mismatch=True)


def test_a_program_that_would_unpickle_is_refused(bundle: Path, tmp_path: Path) -> None:
    source, target = bundle / "vision.pt2", tmp_path / "vision.pt2"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            new.writestr(item, data)
    check_program_safe(source)  # the real one passes
    with pytest.raises(BundleError, match="pickled objects"):
        check_program_safe(target)


# ------------------------------------------------------------------------------ atomic export
def test_a_failed_export_leaves_the_previous_bundle_intact(
    trained: Path, bundle: Path, tmp_path: Path, monkeypatch
) -> None:
    target = _copy(bundle, tmp_path)
    before = {p.name: sha256_file(p) for p in target.iterdir()}

    def disk_full(core, path: Path, example) -> None:
        path.write_bytes(b"half a program")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(graphs, "export_vision", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_bundle(trained, target, overwrite=True)
    assert {p.name: sha256_file(p) for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no temporary folder left behind
    with pytest.raises(OSError, match="No space left"):
        export_bundle(trained, tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no half bundle where none was


def test_replacing_a_bundle_swaps_whole_folders(tmp_path: Path, monkeypatch) -> None:
    """export_bundle's swap (timesclip_darts.atomic_files.staged_folder): the old folder is
    renamed aside, the new one renamed in; if that second rename fails the old one is put back."""
    old = tmp_path / "bundle"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    with staged_folder(old, overwrite=True) as new:
        (new / "manifest.json").write_text("new")
    assert (old / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]

    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr("timesclip_darts.atomic_files.os.replace", second_rename_fails)
    with pytest.raises(OSError, match="rename failed"):
        with staged_folder(old, overwrite=True) as new:
            (new / "manifest.json").write_text("newer")
    assert len(calls) == 3  # aside, in (failed), back
    assert (old / "manifest.json").read_text() == "new"  # the previous bundle is back
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # the staged folder is gone


def test_export_refuses_to_replace_what_is_not_asked_for(trained: Path, bundle: Path, tmp_path):
    with pytest.raises(ExportError, match="holds a bundle; pass --overwrite"):
        export_bundle(trained, bundle)
    other = tmp_path / "data"
    other.mkdir()
    (other / "precious.csv").write_text("1")
    with pytest.raises(ExportError, match="is not a bundle"):
        export_bundle(trained, other, overwrite=True)
    assert main(["export", str(trained), str(bundle)]) == 1


# ------------------------------------------------------------------------------ commands
@pytest.mark.integration
def test_stream_command_forecasts_each_row_piped_in(bundle: Path, etth1: pd.DataFrame) -> None:
    frame = etth1.iloc[TEST_START : TEST_START + ICL + 29]
    done = subprocess.run(
        [sys.executable, "-m", "timesclip_cli.main", "stream", str(bundle)],
        input=frame.to_csv(index=False),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "runtime: CPU" in done.stderr and "wrote 30 forecast(s)" in done.stderr
    out = pd.read_csv(io.StringIO(done.stdout))
    assert len(out) == 30 and out.columns[:3].tolist() == ["time", "HUFL+1", "HULL+1"]
    assert out["time"].tolist() == frame["date"].iloc[ICL - 1 :].astype(str).tolist()
    expected = RollingForecaster(bundle).rolling(raw_rows(etth1, TEST_START, TEST_START + ICL + 29))
    np.testing.assert_allclose(out.iloc[:, 1:].to_numpy().reshape(30, OCL, 7), expected, atol=1e-4)


def test_stream_command_reads_a_file_and_writes_json_lines(
    bundle: Path, etth1: pd.DataFrame, tmp_path: Path, capsys
) -> None:
    csv = tmp_path / "rows.csv"
    etth1.iloc[TEST_START : TEST_START + ICL + 9].to_csv(csv, index=False)
    out = tmp_path / "forecasts.jsonl"
    assert (
        main(
            ["stream", str(bundle), "--input", str(csv), "--format", "jsonl", "--output", str(out)]
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 10
    assert records[0]["time"] == "2017-10-23 23:00:00"
    assert records[0]["forecast_times"][:2] == ["2017-10-24 00:00:00", "2017-10-24 01:00:00"]
    assert len(records[0]["forecast_times"]) == OCL and list(records[0]["forecast"]) == COLUMNS
    got = np.stack([np.array([r["forecast"][c] for c in COLUMNS]).T for r in records])
    expected = RollingForecaster(bundle).rolling(raw_rows(etth1, TEST_START, TEST_START + ICL + 9))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(f.index[100]), r"line 102: .*gap in timestamps.*1 missing step"),
        (
            lambda f: f.assign(OT=f["OT"].astype(object).where(f.index != f.index[5], "x")),
            "line 7: column 'OT'",
        ),
        (lambda f: f[["date", *COLUMNS[::-1]]], "the model needs"),
    ],
)
def test_stream_command_names_the_bad_line(
    bundle: Path, etth1: pd.DataFrame, tmp_path: Path, capsys, edit, message
) -> None:
    csv = tmp_path / "rows.csv"
    edit(etth1.iloc[TEST_START : TEST_START + ICL + 9]).to_csv(csv, index=False)
    assert main(["stream", str(bundle), "--input", str(csv)]) == 1
    assert re.search(message, capsys.readouterr().err)


def test_missing_bundle_is_one_error_line(tmp_path: Path, capsys) -> None:
    assert main(["stream", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.strip().endswith("does not exist")


# ------------------------------------------------------------------------------ light runtime
RUNTIME_ONLY = """
import sys
import numpy as np
from timesclip_export.runtime.forecaster import RollingForecaster
forecaster = RollingForecaster(sys.argv[1])
values = np.random.default_rng(0).normal(10, 3, size=(100, 7)).astype(np.float32)
out = forecaster.rolling(values)
forecaster.update(values[:97])
heavy = ["darts", "lightning", "pytorch_lightning", "transformers", "matplotlib", "sklearn"]
print(out.shape, sorted(m for m in heavy if m in sys.modules))
print(sorted(m for m in sys.modules if m.startswith("timesclip_darts")))
"""


@pytest.mark.integration
def test_the_runtime_imports_no_darts_lightning_transformers_or_matplotlib(bundle: Path) -> None:
    """The runtime draws with the library's rasteriser, and loads nothing else of it."""
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME_ONLY, str(bundle)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    shapes, light = done.stdout.strip().splitlines()
    assert shapes == f"(5, {OCL}, 7) []"
    light_modules = [
        "timesclip_darts",
        "timesclip_darts.checks",
        "timesclip_darts.line_raster",
        "timesclip_darts.scaling",
    ]
    assert light == str(light_modules)  # the ONNX vision path (auto on CPU): no torch module


# ------------------------------------------------------------------------------ benchmark
@pytest.mark.integration
def test_benchmark_smoke_run_writes_ratios_and_latencies(
    trained: Path, bundle: Path, tmp_path: Path, capsys
) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_runtime", ROOT / "benchmarks" / "bench_runtime.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    args = ["--smoke", "--model", str(trained), "--bundle", str(bundle), "--out", str(out)]
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    rows = {row["path"]: row for row in result["throughput"]}
    assert "Darts historical_forecasts" in rows  # speed itself is a benchmark figure, not a test
    for vision in ("onnx", "torch"):
        for kind in ("optimised", "plain"):
            row = rows[f"runtime, {kind} graphs, vision {vision}"]
            assert row["max_abs_diff_vs_darts"] < 1e-4
        stream = result["streaming"][f"cpu, vision {vision}"]
        assert 0 < stream["p50_ms"] <= stream["p99_ms"]
        assert stream["max_abs_diff_vs_rolling"] < 1e-5
    assert result["darts_streaming"]["cpu"]["p50_ms"] > 0
    (vit,) = result["vit"]  # the smoke run times the tiny ViT alone at one batch size
    assert vit["torch_images_per_s"] > 0 and vit["onnx_images_per_s"] > 0
    assert vit["max_abs_diff"] < 1e-4
    printed = capsys.readouterr().out
    assert "vs Darts" in printed and "streaming update, 1 row, cpu, vision onnx: p50" in printed
