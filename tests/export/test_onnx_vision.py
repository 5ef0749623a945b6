"""The ONNX vision path: a bundle forecasts without torch, and equals the torch path."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from timesclip_export.bundle.format import GRAPH_FILES, MANIFEST, OPTIMIZED_FILES
from timesclip_export.errors import BundleVersionError
from timesclip_export.runtime.csv_stream import stream_forecasts
from timesclip_export.runtime.forecaster import RollingForecaster

from tests.conftest import TINY_ICL

# Run in a fresh interpreter in which torch cannot be imported (as on a host without it:
# `None` in sys.modules makes `import torch` fail and `find_spec("torch")` answer None).
TORCH_FREE = r"""
import io, json, sys
sys.modules["torch"] = None
import numpy as np
from timesclip_export.runtime.csv_stream import stream_forecasts
from timesclip_export.runtime.forecaster import RollingForecaster
from timesclip_export.service.stream_pool import StreamPool

bundle, values_path, csv_path, out_path = sys.argv[1:5]
values = np.load(values_path)
forecaster = RollingForecaster(bundle)  # vision="auto": ONNX, the only path without torch
rolling = forecaster.rolling(values, parameters=True)
pool = StreamPool(RollingForecaster(bundle, vision="onnx"), batch_size=7)
update = pool.update({"a": values[:150], "b": values[50:200]})
pooled = {s: np.stack([f.values for f in update.forecasts if f.stream == s]) for s in "ab"}
sink = io.StringIO()
with open(csv_path, newline="") as source:
    written = stream_forecasts(RollingForecaster(bundle, vision="onnx"), source, sink)
np.savez(out_path, rolling=rolling, a=pooled["a"], b=pooled["b"])
heavy = sorted(
    name for name, module in sys.modules.items()
    if module is not None and name.split(".")[0] in ("torch", "darts", "transformers")
)
print(json.dumps({
    "describe": forecaster.describe(), "vision": forecaster.vision, "csv_rows": written,
    "csv": sink.getvalue(), "heavy_modules": heavy,
}))
"""


@pytest.fixture(scope="module")
def test_rows(etth1_splits) -> tuple[np.ndarray, pd.DataFrame]:
    series = etth1_splits.test[:220]
    frame = series.to_dataframe().reset_index()
    return series.values().astype(np.float32), frame


def test_onnx_and_torch_vision_paths_agree(tiny_bundle: Path, test_rows) -> None:
    values, _ = test_rows
    on_torch = RollingForecaster(tiny_bundle, vision="torch")
    on_onnx = RollingForecaster(tiny_bundle, vision="onnx")
    assert (on_torch.vision, on_onnx.vision) == ("torch", "onnx")
    assert RollingForecaster(tiny_bundle, device="cpu").vision == "onnx"  # auto on CPU
    expected = on_torch.rolling(values, parameters=True)
    np.testing.assert_allclose(
        on_onnx.rolling(values, parameters=True), expected, rtol=0, atol=1e-4
    )
    streamed = np.concatenate([on_onnx.update(values[i : i + 40]) for i in range(0, 220, 40)])
    np.testing.assert_array_equal(streamed, on_onnx.rolling(values))  # batch-independent


@pytest.mark.integration
def test_torch_free_subprocess_forecasts_as_the_torch_path(
    tiny_bundle: Path, test_rows, tmp_path: Path
) -> None:
    """RollingForecaster, StreamPool and the CSV stream with torch unimportable: forecasts
    within 1e-4 of the torch path, and no torch, Darts or transformers module loaded."""
    values, frame = test_rows
    np.save(tmp_path / "values.npy", values)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(tiny_bundle), str(tmp_path / "values.npy"),
         str(tmp_path / "rows.csv"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["vision"] == "onnx" and report["heavy_modules"] == []
    assert "vision in onnxruntime" in report["describe"]
    out = np.load(tmp_path / "out.npz")

    reference = RollingForecaster(tiny_bundle, vision="torch")
    expected = reference.rolling(values, parameters=True)
    np.testing.assert_allclose(out["rolling"], expected, rtol=0, atol=1e-4)
    point = expected[..., reference._point_index]
    np.testing.assert_allclose(out["a"], point[: 150 - TINY_ICL + 1], rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["b"], point[50 : 200 - TINY_ICL + 1], rtol=0, atol=1e-4)

    sink = io.StringIO()
    with open(tmp_path / "rows.csv", newline="") as source:
        assert stream_forecasts(reference, source, sink) == report["csv_rows"] == 220 - TINY_ICL + 1
    torch_csv, onnx_csv = (
        pd.read_csv(io.StringIO(text)) for text in (sink.getvalue(), report["csv"])
    )
    numbers = torch_csv.select_dtypes("number").columns
    assert list(onnx_csv.columns) == list(torch_csv.columns) and len(numbers)
    pd.testing.assert_frame_equal(onnx_csv.drop(columns=numbers), torch_csv.drop(columns=numbers))
    np.testing.assert_allclose(onnx_csv[numbers], torch_csv[numbers], rtol=0, atol=1e-4)


def test_format_2_bundles_run_on_the_torch_path_only(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bundle of the previous format (no vision.onnx) still loads for the torch path; the
    ONNX path refuses it with the fix."""
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((tiny_bundle / MANIFEST).read_text())
    manifest["format_version"] = 2
    del manifest["onnx"]["graphs"]["vision"]
    del manifest["onnx"]["optimized"]["vision"]
    for name in (GRAPH_FILES["vision"], OPTIMIZED_FILES["vision"]):
        del manifest["files"][name]
    for name in manifest["files"]:
        (old / name).write_bytes((tiny_bundle / name).read_bytes())
    (old / MANIFEST).write_text(json.dumps(manifest))
    assert RollingForecaster(old).vision == "torch"
    with pytest.raises(BundleVersionError, match="holds no vision.onnx: export the model again"):
        RollingForecaster(old, vision="onnx")
