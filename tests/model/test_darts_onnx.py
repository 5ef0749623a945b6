"""Darts' own ONNX API on TimesCLIPModel, on real ETTh1 windows: ``to_onnx`` writes one graph (the
rasteriser and the ViT inside) and Darts' torch-free ``run_onnx_prediction`` gives ``predict``'s
forecasts. Each model is trained (one epoch) and exported once, for the whole file."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from darts import TimeSeries
from darts.utils.likelihood_models import GaussianLikelihood, QuantileRegression
from darts.utils.onnx import run_onnx_prediction
from darts.utils.onnx.inference import ONNX_SPEC_METADATA_KEY, OnnxModelSpec

from tests.conftest import tiny_timesclip
from timesclip_darts import TimesCLIPModel
from timesclip_darts.darts_model import OnnxExportError

ICL, OCL = 48, 12
TRAIN_END = 300
TOLERANCE = 1e-4  # absolute, on scaled float32 values
TARGET = "OT"
COVARIATES = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]


@dataclass
class Exported:
    model: TimesCLIPModel
    session: ort.InferenceSession
    path: Path
    chatter: list[str]  # what `to_onnx` printed, warned or logged (at WARNING and above)


@pytest.fixture(scope="module")
def series(etth1: pd.DataFrame) -> TimeSeries:
    """ETTh1's first 400 rows, scaled with the first 300's statistics, float32."""
    frame = etth1.iloc[:400].copy()
    values = frame.iloc[:, 1:]
    frame.iloc[:, 1:] = (values - values.iloc[:TRAIN_END].mean()) / values.iloc[:TRAIN_END].std()
    return TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)


def export(folder: Path, target: TimeSeries, past_covariates=None, **overrides) -> Exported:
    model = tiny_timesclip(ICL, OCL, batch_size=64, patch_length=16, stride=8, **overrides)
    model.fit(target[:TRAIN_END], past_covariates=past_covariates, max_samples_per_ts=64)
    path = folder / "model.onnx"
    printed, records = io.StringIO(), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as warned, contextlib.redirect_stdout(printed):
            warnings.simplefilter("always")
            model.to_onnx(str(path))
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    chatter = [printed.getvalue()] if printed.getvalue() else []
    chatter += [str(w.message) for w in warned] + [r.getMessage() for r in records]
    return Exported(model, ort.InferenceSession(str(path)), path, chatter)


@pytest.fixture(scope="module")
def point(series: TimeSeries, tmp_path_factory) -> Exported:
    return export(tmp_path_factory.mktemp("point"), series)


@pytest.fixture(scope="module")
def with_covariates(series: TimeSeries, tmp_path_factory) -> Exported:
    """Past covariates, and the parts that look hard to export: Darts' reversible instance norm
    (TimesCLIP pre-compensates the scale for it), a location/scale likelihood (Darts' raw graph
    output would hold the scale before its softplus) and a ViT that was trained too."""
    return export(
        tmp_path_factory.mktemp("covariates"),
        series[TARGET],
        past_covariates=series[COVARIATES][:TRAIN_END],
        use_reversible_instance_norm=True,
        likelihood=GaussianLikelihood(),
        freeze_vision=False,
    )


@pytest.fixture(scope="module")
def quantile(series: TimeSeries, tmp_path_factory) -> Exported:
    likelihood = QuantileRegression([0.1, 0.5, 0.9])
    return export(tmp_path_factory.mktemp("quantile"), series, likelihood=likelihood)


def assert_same_forecast(onnx_forecast: TimeSeries, torch_forecast: TimeSeries) -> float:
    assert list(onnx_forecast.components) == list(torch_forecast.components)
    assert onnx_forecast.time_index.equals(torch_forecast.time_index)
    difference = float(np.abs(onnx_forecast.values() - torch_forecast.values()).max())
    assert difference <= TOLERANCE
    return difference


# Windows: the training series' end, and 100 steps later (never seen in training).
@pytest.mark.parametrize("end", [TRAIN_END, 400])
@pytest.mark.parametrize("n", [OCL, 2 * OCL + 3])
def test_point_forecasts_match_predict(
    point: Exported, series: TimeSeries, end: int, n: int
) -> None:
    window = series[:end]
    onnx_forecast = run_onnx_prediction(n, point.session, series=window, verbose=False)
    assert_same_forecast(onnx_forecast, point.model.predict(n, series=window))


def test_the_graph_holds_the_whole_model_and_darts_spec(point: Exported) -> None:
    spec = OnnxModelSpec.from_session(point.session)
    assert ONNX_SPEC_METADATA_KEY in point.session.get_modelmeta().custom_metadata_map
    assert (spec.input_chunk_length, spec.output_chunk_length) == (ICL, OCL)
    assert spec.feature_input_names == ["past_target"] and spec.likelihood_parameter_names is None
    # Windows in, forecasts out: the images are drawn and seen inside (the ViT's patch Conv).
    assert [i.name for i in point.session.get_inputs()] == ["past_target"]
    assert "Conv" in {node.op_type for node in onnx.load(str(point.path)).graph.node}


def test_past_covariates_rin_gaussian_trainable_vit_parameters_match_predict(
    with_covariates: Exported, series: TimeSeries
) -> None:
    exported = with_covariates
    target, covariates = series[TARGET][:TRAIN_END], series[COVARIATES][:TRAIN_END]
    spec = OnnxModelSpec.from_session(exported.session)
    assert spec.feature_input_names == ["past_target", "past_covariates"]
    onnx_forecast = run_onnx_prediction(
        OCL, exported.session, series=target, past_covariates=covariates, verbose=False
    )
    torch_forecast = exported.model.predict(
        OCL, series=target, past_covariates=covariates, predict_likelihood_parameters=True
    )
    assert list(onnx_forecast.components) == [f"{TARGET}_mu", f"{TARGET}_sigma"]
    assert_same_forecast(onnx_forecast, torch_forecast)
    assert (onnx_forecast[f"{TARGET}_sigma"].values() > 0).all()  # the softplus is in the graph


def test_quantile_parameters_match_predict(quantile: Exported, series: TimeSeries) -> None:
    window = series[:TRAIN_END]
    onnx_forecast = run_onnx_prediction(OCL, quantile.session, series=window, verbose=False)
    torch_forecast = quantile.model.predict(OCL, series=window, predict_likelihood_parameters=True)
    assert onnx_forecast.width == 7 * 3 and "OT_q0.500" in onnx_forecast.components
    assert_same_forecast(onnx_forecast, torch_forecast)


def test_export_is_quiet(point: Exported, with_covariates: Exported) -> None:
    assert point.chatter == [] and with_covariates.chatter == []


def test_unfitted_model_gets_darts_own_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`fit\(\)` needs to be called"):
        tiny_timesclip(ICL, OCL).to_onnx(str(tmp_path / "model.onnx"))
    assert list(tmp_path.iterdir()) == []


def test_a_float64_model_is_refused_before_any_export(series: TimeSeries, tmp_path: Path) -> None:
    """Its graph would not load in ONNX Runtime's CPU provider (no float64 Conv)."""
    model = tiny_timesclip(ICL, OCL, batch_size=8, patch_length=16, stride=8)
    model.fit(series[:TRAIN_END].astype(np.float64)["OT"], max_samples_per_ts=8)
    with pytest.raises(OnnxExportError, match="needs a float32 model.*astype"):
        model.to_onnx(str(tmp_path / "model.onnx"))
    assert list(tmp_path.iterdir()) == []
