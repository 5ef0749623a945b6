"""TimesCLIPModel used the way Darts users use every Darts model, on real ETTh1 data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from darts import TimeSeries, concatenate
from darts.models import (
    DLinearModel,
    GlobalNaiveSeasonal,
    NaiveEnsembleModel,
    RegressionEnsembleModel,
)
from darts.utils.likelihood_models import GaussianLikelihood, QuantileRegression
from pytorch_lightning.callbacks import EarlyStopping

from timesclip_darts import TimesCLIPModel

ICL, OCL = 48, 12


def small_model(**overrides) -> TimesCLIPModel:
    config = dict(
        input_chunk_length=ICL,
        output_chunk_length=OCL,
        clip_model_name="tiny",
        d_model=32,
        n_heads=4,
        patch_length=16,
        stride=8,
        batch_size=64,
        n_epochs=1,
        random_state=0,
        pl_trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False},
    )
    config.update(overrides)
    return TimesCLIPModel(**config)


@pytest.fixture(scope="module")
def series(etth1: pd.DataFrame) -> TimeSeries:
    """ETTh1's first 1200 rows, scaled with train statistics, float32."""
    frame = etth1.iloc[:1200].copy()
    values = frame.iloc[:, 1:]
    frame.iloc[:, 1:] = (values - values.iloc[:900].mean()) / values.iloc[:900].std()
    return TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)


@pytest.fixture(scope="module")
def fitted(series: TimeSeries) -> TimesCLIPModel:
    model = small_model()
    model.fit(series[:900])
    return model


@pytest.mark.parametrize("n", [5, OCL, 2 * OCL + 3])
def test_predict_index_shape_and_components(
    fitted: TimesCLIPModel, series: TimeSeries, n: int
) -> None:
    forecast = fitted.predict(n, series=series[:900])
    assert len(forecast) == n and forecast.width == 7
    assert forecast.start_time() == series.time_index[900]
    assert forecast.freq == series.freq
    assert list(forecast.components) == list(series.components)
    assert np.isfinite(forecast.values()).all()


def test_fit_and_predict_on_a_list_of_series(series: TimeSeries) -> None:
    first, second = series[:600], series[600:1200]
    model = small_model()
    model.fit([first, second])
    forecasts = model.predict(OCL, series=[first, second])
    assert [f.start_time() for f in forecasts] == [
        series.time_index[600],
        second.end_time() + second.freq,
    ]
    assert all(f.width == 7 and len(f) == OCL for f in forecasts)


def test_past_covariates_are_inputs_and_only_targets_are_forecast(series: TimeSeries) -> None:
    target, covariates = series["OT"], series[["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL"]]
    model = small_model()
    model.fit(target[:900], past_covariates=covariates[:900])
    assert model.core.n_variates == 7 and model.core.n_targets == 1
    forecast = model.predict(OCL, series=target[:900], past_covariates=covariates[:900])
    assert forecast.components.tolist() == ["OT"]
    shuffled = covariates[:900].with_values(covariates[:900].values()[::-1].copy())
    other = model.predict(OCL, series=target[:900], past_covariates=shuffled)
    assert np.abs(other.values() - forecast.values()).max() > 1e-4


def test_training_adds_the_alignment_loss_and_logs_both_parts(series: TimeSeries) -> None:
    model = small_model()
    model.fit(series[:900], val_series=series[900 - ICL :])
    metrics = model.trainer.callback_metrics
    forecast, alignment = metrics["train_forecast_loss"], metrics["train_alignment_loss"]
    assert alignment > 0 and "val_loss" in metrics
    # The logged epoch means obey the same sum as each step's loss.
    torch.testing.assert_close(
        metrics["train_loss"], forecast + 0.1 * alignment, rtol=1e-4, atol=1e-5
    )
    without = small_model(lambda_align=0.0)
    without.fit(series[:900])
    assert "train_alignment_loss" not in without.trainer.callback_metrics


def test_default_optimiser_is_the_papers_at_the_rates_chosen_on_validation(
    fitted: TimesCLIPModel,
) -> None:
    optimizers, scheduler = fitted.model.configure_optimizers()
    optimizer = optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"vision_projection": 3e-4, "text_encoder": 3e-5, "other": 3e-4})
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.1}
    assert fitted.model_params["dropout"] == 0.3
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)


def test_user_optimiser_settings_win(series: TimeSeries) -> None:
    model = small_model(
        optimizer_cls=torch.optim.SGD,
        optimizer_kwargs={"lr": 0.01},
        lr_scheduler_cls=torch.optim.lr_scheduler.StepLR,
        lr_scheduler_kwargs={"step_size": 1},
        text_encoder_lr=0.005,
    )
    model.fit(series[:300])
    optimizers, scheduler = model.model.configure_optimizers()
    assert isinstance(optimizers[0], torch.optim.SGD)
    lrs = {g["name"]: g["lr"] for g in optimizers[0].param_groups}
    assert lrs == {"vision_projection": 0.01, "text_encoder": 0.005, "other": 0.01}
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.StepLR)


@pytest.mark.parametrize(
    "likelihood",
    [QuantileRegression([0.05, 0.5, 0.95]), GaussianLikelihood()],
    ids=["quantile", "gaussian"],
)
def test_probabilistic_forecasts_are_calibrated_looking(series: TimeSeries, likelihood) -> None:
    model = small_model(likelihood=likelihood, n_epochs=3, optimizer_kwargs={"lr": 3e-3})
    model.fit(series[:900])
    starts = list(range(900, 1200 - OCL, OCL))
    inside, total, widths = 0, 0, []
    forecasts = model.predict(OCL, series=[series[:start] for start in starts], num_samples=200)
    for start, forecast in zip(starts, forecasts, strict=True):
        assert forecast.n_samples == 200
        low, median, high = (forecast.quantile(q).values() for q in (0.05, 0.5, 0.95))
        assert (low <= median + 1e-6).all() and (median <= high + 1e-6).all()
        truth = series[start : start + OCL].values()
        inside += ((truth >= low) & (truth <= high)).sum()
        total += truth.size
        widths.append(float(np.mean(high - low)))
    coverage, width = inside / total, float(np.mean(widths))
    # Nominal 0.9 (measured 0.91 quantile, 0.94 Gaussian). An interval that ignores the data
    # (too wide: coverage ~1; too narrow or mis-scaled) fails one of these: on series of unit
    # std, the interval of N(0, 1) itself is 3.3 wide.
    assert 0.8 <= coverage <= 0.98, coverage
    assert 0.5 < width < 3.0, width


def test_historical_forecasts_and_backtest(fitted: TimesCLIPModel, series: TimeSeries) -> None:
    start = 1100
    forecasts = fitted.historical_forecasts(
        series,
        start=series.time_index[start],
        forecast_horizon=OCL,
        stride=1,
        retrain=False,
        last_points_only=False,
        verbose=False,
    )
    assert len(forecasts) == 1200 - start - OCL + 1
    assert forecasts[0].start_time() == series.time_index[start]
    assert forecasts[-1].end_time() == series.end_time()
    # The same forecast as predict() from the same window.
    direct = fitted.predict(OCL, series=series[:start])
    np.testing.assert_allclose(forecasts[0].values(), direct.values(), rtol=1e-5, atol=1e-5)
    error = fitted.backtest(series, historical_forecasts=forecasts)
    assert np.isfinite(error) and error > 0


def test_historical_forecasts_with_retraining(series: TimeSeries) -> None:
    model = small_model()
    forecasts = model.historical_forecasts(
        series[:700],
        start=series.time_index[700 - 2 * OCL],
        forecast_horizon=OCL,
        stride=OCL,
        retrain=True,
        last_points_only=False,
        verbose=False,
    )
    assert len(forecasts) == 2
    assert forecasts[1].end_time() == series.time_index[699]


def test_ensembles_with_darts_global_models(fitted: TimesCLIPModel, series: TimeSeries) -> None:
    naive = NaiveEnsembleModel(
        [
            small_model(),
            DLinearModel(
                ICL,
                OCL,
                n_epochs=1,
                random_state=0,
                pl_trainer_kwargs={"enable_progress_bar": False},
            ),
        ],
    )
    naive.fit(series[:900])
    assert naive.predict(OCL).width == 7
    regression = RegressionEnsembleModel(
        [small_model(), GlobalNaiveSeasonal(input_chunk_length=24, output_chunk_length=OCL)],
        regression_train_n_points=OCL * 2,
    )
    regression.fit(series[:900])
    forecast = regression.predict(OCL)
    assert forecast.start_time() == series.time_index[900] and forecast.width == 7


def test_early_stopping_on_validation_forecasting_loss(series: TimeSeries) -> None:
    stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
    model = small_model(
        n_epochs=10,
        pl_trainer_kwargs={
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [stopper],
        },
    )
    model.fit(series[:900], val_series=series[900 - ICL :])
    assert model.epochs_trained < 10  # a min_delta of 10 is never met: stops after patience
    val_loss = float(model.trainer.callback_metrics["val_loss"])
    # The validation loss is the forecasting loss alone (no alignment term).
    validation = series[900 - ICL :]
    forecasts = model.historical_forecasts(
        validation,
        forecast_horizon=OCL,
        stride=1,
        retrain=False,
        last_points_only=False,
        verbose=False,
    )
    mse = np.mean(
        [np.mean((f.values() - validation[f.time_index].values()) ** 2) for f in forecasts]
    )
    assert val_loss == pytest.approx(mse, rel=0.05)


def test_save_load_and_load_weights_give_identical_forecasts(
    fitted: TimesCLIPModel, series: TimeSeries, tmp_path: Path
) -> None:
    expected = fitted.predict(OCL, series=series[:900])
    path = tmp_path / "timesclip.pt"
    fitted.save(str(path))
    loaded = TimesCLIPModel.load(str(path))  # safe loading: no trusted=True needed
    np.testing.assert_array_equal(
        loaded.predict(OCL, series=series[:900]).values(), expected.values()
    )
    fresh = small_model()
    fresh.load_weights(str(path))
    np.testing.assert_array_equal(
        fresh.predict(OCL, series=series[:900]).values(), expected.values()
    )


def test_same_random_state_gives_identical_forecasts(series: TimeSeries) -> None:
    forecasts = []
    for _ in range(2):
        model = small_model(random_state=7)
        model.fit(series[:400])
        forecasts.append(model.predict(OCL).values())
    np.testing.assert_array_equal(forecasts[0], forecasts[1])


QUIET_SCRIPT = """
import numpy as np, pandas as pd, sys
from darts import TimeSeries
from timesclip_darts import TimesCLIPModel
frame = pd.read_csv(sys.argv[1], parse_dates=["date"]).iloc[:300]
series = TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)
model = TimesCLIPModel(48, 12, clip_model_name="tiny", d_model=32, n_heads=4, n_epochs=1)
model.fit(series)
model.predict(12)
from darts.utils.data import SequentialTorchTrainingDataset
dataset = SequentialTorchTrainingDataset(series, input_chunk_length=48, output_chunk_length=12)
model.fit_from_dataset(dataset)
"""


@pytest.mark.integration
def test_quiet_by_default_and_writes_nothing(tmp_path: Path) -> None:
    """Darts' defaults (progress bar, summary), in a fresh process as a user would run it;
    `fit` and `fit_from_dataset` alike."""
    import subprocess
    import sys

    from tests.conftest import DATA_DIR

    result = subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT, str(DATA_DIR / "ETTh1.csv")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    for chatter in (
        "GPU available",
        "TPU available",
        "Tip:",
        "pin_memory",
        "at the start of training",
        "Warning",
    ):
        assert chatter not in text, text
    assert "Epoch 0" in text  # the one progress bar users want
    assert list(tmp_path.iterdir()) == []


def test_unsupported_likelihood_is_refused() -> None:
    from darts.utils.likelihood_models import PoissonLikelihood

    with pytest.raises(ValueError, match="Supported likelihoods"):
        small_model(likelihood=PoissonLikelihood())


def test_constructor_arguments_are_deep_copyable() -> None:
    import copy

    model = small_model(likelihood=QuantileRegression([0.1, 0.5, 0.9]))
    copied = copy.deepcopy(model.model_params)
    assert copied["clip_model_name"] == "tiny"
    assert model.untrained_model().model_params.keys() == model.model_params.keys()


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda s: s[:900].drop_columns(["OT"]), "7"),
        (lambda s: s[:30], "too short|at least"),
    ],
    ids=["wrong-variate-count", "too-short"],
)
def test_bad_predict_input_is_named(
    fitted: TimesCLIPModel, series: TimeSeries, make_input, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fitted.predict(OCL, series=make_input(series))


def test_nan_gaps_are_reported_with_their_place(series: TimeSeries) -> None:
    values = series[:300].values().copy()
    values[100:103, 2] = np.nan
    broken = series[:300].with_values(values)
    with pytest.raises(ValueError, match="missing values.*2016-07-05 04:00"):
        small_model().fit(broken)


def test_mismatched_frequency_is_named(fitted: TimesCLIPModel, series: TimeSeries) -> None:
    daily = TimeSeries.from_times_and_values(
        pd.date_range("2020-01-01", periods=100, freq="D"),
        series[:100].values(),
        columns=series.components,
    )
    with pytest.raises(ValueError, match="frequency"):
        fitted.predict(OCL, series=daily)


def test_concatenated_forecasts_keep_the_series_index(
    fitted: TimesCLIPModel, series: TimeSeries
) -> None:
    forecast = fitted.predict(OCL, series=series[:900])
    joined = concatenate([series[:900], forecast])
    assert len(joined) == 900 + OCL and joined.freq == series.freq
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


@pytest.mark.parametrize(
    "switch", [dict(use_vision=False), dict(use_variate_selection=False), dict(freeze_vision=False)]
)
def test_ablation_variants_train_predict_and_only_the_full_model_exports(
    series: TimeSeries, switch: dict, tmp_path: Path
) -> None:
    from timesclip_export import ExportError, export_bundle

    model = small_model(**switch)
    model.fit(series[:300])
    forecast = model.predict(n=OCL, series=series[:300])
    assert forecast.time_index[0] == series.time_index[300]
    assert np.isfinite(forecast.values()).all()
    if model.core.is_ablated:
        with pytest.raises(ExportError, match="ablation"):
            export_bundle(model, tmp_path / "bundle")
        assert not (tmp_path / "bundle").exists()
