"""Runtime parity beyond the default case: a location/scale likelihood, a shifted output chunk,
images drawn at a size other than the ViT's native one and one generator head per target, all
in one small model. The runtime's likelihood parameters must equal Darts'
``predict_likelihood_parameters=True`` backtest window for window, and its point forecast is the
location."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from darts.utils.likelihood_models import GaussianLikelihood
from timesclip_export.exporter.writer import export_bundle
from timesclip_export.runtime.forecaster import RollingForecaster

from tests.conftest import etth1_series, tiny_timesclip
from timesclip_darts import TimesCLIPModel

ICL, OCL, SHIFT, WINDOWS = 48, 12, 3, 40
IMAGE_SIZE = 48  # the tiny preset's ViT is native at 32 px: interpolated positions


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    model = tiny_timesclip(
        ICL,
        OCL,
        output_chunk_shift=SHIFT,
        image_size=IMAGE_SIZE,
        likelihood=GaussianLikelihood(),
        per_variate_head=True,
        random_state=2,
    )
    model.fit(etth1_series(0, 600)[["OT", "HUFL"]], max_samples_per_ts=32)
    path = tmp_path_factory.mktemp("gaussian") / "model.pt"
    model.save(str(path))
    return path


def test_gaussian_shifted_resized_runtime_equals_darts(trained: Path, tmp_path: Path) -> None:
    export_bundle(trained, tmp_path / "bundle")
    runtime = RollingForecaster(tmp_path / "bundle", device="cpu")
    spec = runtime.manifest["model"]
    assert (spec["image_size"], spec["output_chunk_shift"]) == (IMAGE_SIZE, SHIFT)
    assert runtime.parameter_names == ["mu", "sigma"]

    held_out = etth1_series(600, 600 + ICL + SHIFT + OCL + WINDOWS - 1)[["OT", "HUFL"]]
    loaded = TimesCLIPModel.load(str(trained))
    assert loaded.model.core.generator.head.weight.shape[0] == 2  # a head per target
    darts = loaded.historical_forecasts(
        held_out,
        forecast_horizon=OCL,
        retrain=False,
        last_points_only=False,
        predict_likelihood_parameters=True,
        verbose=False,
    )
    assert len(darts) == WINDOWS
    # Each Darts forecast starts SHIFT steps after its window's end, as the runtime's does.
    assert darts[0].start_time() == held_out.time_index[ICL + SHIFT]
    expected = np.stack([f.values() for f in darts]).reshape(WINDOWS, OCL, 2, 2)
    parameters = runtime.rolling(held_out.values()[: ICL + WINDOWS - 1], parameters=True)
    assert parameters.shape == (WINDOWS, OCL, 2, 2)
    assert (parameters[..., 1] > 0).all()  # sigma, not the raw pre-softplus output
    np.testing.assert_allclose(parameters, expected, rtol=0, atol=1e-4)
    point = runtime.rolling(held_out.values()[: ICL + WINDOWS - 1])
    np.testing.assert_array_equal(point, parameters[..., 0])
