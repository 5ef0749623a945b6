"""Export and runtime for a probabilistic model with past covariates: OT forecast from itself and
six load covariates with QuantileRegression. The runtime's parameters equal Darts'
``predict_likelihood_parameters=True`` backtest; its point forecast is the median."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from darts.utils.likelihood_models import QuantileRegression
from timesclip_export.errors import InputError
from timesclip_export.exporter.writer import export_bundle
from timesclip_export.runtime.forecaster import RollingForecaster

from tests.conftest import DATA_DIR, tiny_timesclip
from timesclip_darts import TimesCLIPModel
from timesclip_darts.data import ett_splits, load_darts_dataset

ICL, OCL, WINDOWS = 96, 24, 300
TARGET = ["OT"]
COVARIATES = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]
QUANTILES = [0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def splits():
    return ett_splits(load_darts_dataset("ETTh1", DATA_DIR), "ETTh1", ICL)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory) -> Path:
    model = tiny_timesclip(
        ICL,
        OCL,
        batch_size=64,
        random_state=1,
        likelihood=QuantileRegression(QUANTILES),
    )
    model.fit(
        splits.train[TARGET],
        past_covariates=splits.train[COVARIATES],
        max_samples_per_ts=256,
    )
    path = tmp_path_factory.mktemp("quantile") / "model.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def forecaster(trained: Path, tmp_path_factory) -> RollingForecaster:
    bundle = tmp_path_factory.mktemp("bundles") / "quantile"
    export_bundle(trained, bundle)  # no scaler file beside this model: none in the bundle
    return RollingForecaster(bundle)


def test_manifest_lists_targets_then_covariates_and_the_quantiles(
    forecaster: RollingForecaster,
) -> None:
    model = forecaster.manifest["model"]
    assert model["targets"] == TARGET and model["past_covariates"] == COVARIATES
    assert forecaster.inputs == TARGET + COVARIATES
    assert forecaster.parameter_names == ["q0.100", "q0.500", "q0.900"]
    assert model["likelihood"]["point_index"] == 1
    assert forecaster.manifest["scaler"] is None and not forecaster.apply_scaler


def test_quantiles_equal_darts_likelihood_parameters(
    forecaster: RollingForecaster, trained: Path, splits
) -> None:
    test = splits.test[: ICL + OCL + WINDOWS - 1]
    darts = TimesCLIPModel.load(str(trained)).historical_forecasts(
        test[TARGET],
        past_covariates=test[COVARIATES],
        forecast_horizon=OCL,
        retrain=False,
        last_points_only=False,
        predict_likelihood_parameters=True,
        verbose=False,
    )
    expected = np.stack([f.values() for f in darts])  # [W, OCL, 1 target x 3 quantiles]
    assert list(darts[0].components) == ["OT_q0.100", "OT_q0.500", "OT_q0.900"]
    values = test[TARGET + COVARIATES].values()[: ICL + WINDOWS - 1]
    parameters = forecaster.rolling(values, parameters=True)
    assert parameters.shape == (WINDOWS, OCL, 1, 3)
    assert np.abs(parameters.reshape(WINDOWS, OCL, 3) - expected).max() < 1e-4
    point = forecaster.rolling(values)
    assert point.shape == (WINDOWS, OCL, 1)
    np.testing.assert_array_equal(point[..., 0], parameters[..., 0, 1])


def test_covariates_must_follow_the_targets_by_name(forecaster: RollingForecaster, splits) -> None:
    frame = pd.DataFrame(
        splits.test.values()[: ICL + 5], columns=list(splits.test.components)
    )  # ETTh1's own order puts OT last
    with pytest.raises(InputError, match=r"wrong order: expected \['OT', 'HUFL'"):
        forecaster.rolling(frame)
    reordered = forecaster.rolling(frame[TARGET + COVARIATES])
    assert reordered.shape == (6, OCL, 1) and np.isfinite(reordered).all()
