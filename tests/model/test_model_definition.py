"""One model definition: the config object, self-contained model files, provenance per tower,
and the Darts behaviours TimesCLIPModel must share with TiDE/TSMixer (reversible instance norm
with likelihoods, MC dropout, learning-rate schedules, process-wide state, same results,
short windows)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from darts import TimeSeries
from darts.utils.likelihood_models import (
    CauchyLikelihood,
    GaussianLikelihood,
    GumbelLikelihood,
    LaplaceLikelihood,
    QuantileRegression,
)
from pytorch_lightning.callbacks import Callback
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from tests.conftest import ROOT, etth1_series, tiny_core, tiny_timesclip
from timesclip_darts import BackboneUnavailableError, TimesCLIP, TimesCLIPModel
from timesclip_darts.backbones import PRESETS, load_clip_towers
from timesclip_darts.config import ConfigError, TimesCLIPConfig, default_patching
from timesclip_darts.likelihoods import LIKELIHOODS, likelihood_spec


def _save_tiny_clip(folder: Path) -> CLIPModel:
    spec = PRESETS["tiny"]
    torch.manual_seed(3)
    clip = CLIPModel(
        CLIPConfig(text_config=spec["text"], vision_config=spec["vision"], projection_dim=16)
    )
    clip.save_pretrained(folder)
    return clip


@pytest.fixture(scope="module")
def short_series() -> TimeSeries:
    return etth1_series(0, 160)


# ------------------------------------------------------------------------ one definition
# Config fields the Darts model derives from the data and its own Darts arguments; every other
# field is one of its constructor's arguments.
DERIVED_BY_THE_DARTS_MODEL = {
    "time_steps",
    "prediction_steps",
    "n_variates",
    "n_targets",
    "n_params",
    "normalize_targets",
    "vision_config",
    "text_config",
    "backbone",
}
OTHER_THAN_DEFAULT = dict(
    patch_length=8,
    stride=4,
    d_model=64,
    n_heads=2,
    temperature=0.1,
    image_size=48,
    line_width=2.0,
    dropout=0.2,
    vision_cache_mb=0.0,
    use_variate_selection=False,
    freeze_vision=False,
    per_variate_head=True,
)


@pytest.mark.parametrize("keywords", [{}, OTHER_THAN_DEFAULT], ids=["defaults", "given"])
def test_the_core_and_the_darts_model_build_the_same_config(keywords: dict) -> None:
    core = TimesCLIP(
        time_steps=48, n_variates=3, prediction_steps=8, clip_model_name="tiny", **keywords
    )
    model = TimesCLIPModel(48, 8, clip_model_name="tiny", **keywords)
    towers = load_clip_towers("tiny")
    assert model.core_config(n_targets=3, n_covariates=0, towers=towers) == core.config
    if not keywords:
        assert core.config.dropout == 0.3 and core.config.vision_cache_mb == 1024.0


def test_every_core_argument_of_the_darts_model_is_a_config_field_with_its_default() -> None:
    fields = TimesCLIPConfig.__dataclass_fields__
    assert set(OTHER_THAN_DEFAULT) == set(fields) - DERIVED_BY_THE_DARTS_MODEL - {"use_vision"}
    for cls in (TimesCLIP, TimesCLIPModel):
        parameters = inspect.signature(cls.__init__).parameters
        shared = set(parameters) & set(fields)
        if cls is TimesCLIPModel:
            assert shared == set(fields) - DERIVED_BY_THE_DARTS_MODEL
        for name in shared - {"backbone"}:
            if fields[name].default is not dataclasses.MISSING:  # required: the window sizes
                assert parameters[name].default == fields[name].default, (cls.__name__, name)


def test_the_model_refuses_a_core_argument_that_cannot_work_at_construction() -> None:
    with pytest.raises(ConfigError, match="dropout"):
        TimesCLIPModel(48, 8, clip_model_name="tiny", dropout=1.5)
    with pytest.raises(ConfigError, match="divisible"):
        TimesCLIPModel(48, 8, clip_model_name="tiny", d_model=30, n_heads=4)


@pytest.mark.parametrize("row", list(LIKELIHOODS.values()), ids=list(LIKELIHOODS))
def test_every_registered_likelihood_matches_darts_and_builds_from_the_command_line(row) -> None:
    likelihood = row.build()
    assert type(likelihood).__name__ == row.darts_class
    spec = likelihood_spec(likelihood)
    assert len(spec["kinds"]) == len(likelihood.parameter_names) == likelihood.num_parameters
    if row.kinds is not None:
        assert tuple(spec["kinds"]) == row.kinds
        z = [row.standard_quantile(q) for q in (0.1, 0.5, 0.9)]
        assert z == sorted(z) and z[0] < z[2]  # an inverse CDF rises


# --------------------------------------------------------------------- config and files
def test_config_round_trips_through_json_and_rebuilds_the_same_model(tmp_path: Path) -> None:
    model = tiny_core().eval()
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["model_type"] == "timesclip" and saved["vision_config"]["hidden_size"] == 32
    assert TimesCLIPConfig.from_dict(saved).to_dict() == model.config.to_dict()
    loaded = TimesCLIP.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(4, 48, 3)
    assert torch.equal(loaded(x), model(x))
    assert loaded.backbone_info == model.backbone_info  # provenance survives the round trip
    assert not loaded.backbone_info.pretrained


def test_from_pretrained_refuses_a_folder_whose_weights_do_not_match(tmp_path: Path) -> None:
    tiny_core().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["d_model"] = 64  # the weights are for 32
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model.safetensors"):
        TimesCLIP.from_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="not a folder written by save_pretrained"):
        TimesCLIP.from_pretrained(tmp_path / "nothing")


def test_a_model_trained_from_a_local_clip_folder_loads_and_exports_after_the_folder_is_gone(
    tmp_path: Path, short_series: TimeSeries
) -> None:
    from timesclip_export import RollingForecaster, export_bundle

    _save_tiny_clip(tmp_path / "clip")
    model = tiny_timesclip(24, 6, clip_model_name=str(tmp_path / "clip"))
    model.fit(short_series)
    expected = model.predict(6).values()
    model.save(str(tmp_path / "model.pt"))
    shutil.rmtree(tmp_path / "clip")

    loaded = TimesCLIPModel.load(str(tmp_path / "model.pt"))
    np.testing.assert_array_equal(loaded.predict(6, series=short_series).values(), expected)
    assert loaded.core.backbone_info.pretrained  # provenance, not re-read from the folder
    export_bundle(str(tmp_path / "model.pt"), tmp_path / "bundle", scaler=False)
    runtime = RollingForecaster(tmp_path / "bundle", device="cpu")
    window = short_series.values()[-24:]
    np.testing.assert_allclose(runtime.forecast(window), expected, rtol=0, atol=1e-4)


def test_real_corruption_keeps_its_error_text(tmp_path: Path, short_series: TimeSeries) -> None:
    from timesclip_darts.darts_model import ModelFileError

    model = tiny_timesclip(24, 6)
    model.fit(short_series)
    model.save(str(tmp_path / "model.pt"))
    ckpt = tmp_path / "model.pt.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated, corrupt"):
        TimesCLIPModel.load(str(tmp_path / "model.pt"))


# --------------------------------------------------------------------- provenance per tower
def test_a_vision_only_source_is_refused_unless_a_random_text_tower_is_allowed(
    tmp_path: Path,
) -> None:
    clip = _save_tiny_clip(tmp_path / "full")
    CLIPVisionModel.from_pretrained(tmp_path / "full").save_pretrained(tmp_path / "vision")
    with pytest.raises(BackboneUnavailableError, match="only the CLIP vision tower"):
        load_clip_towers(str(tmp_path / "vision"))
    with pytest.raises(BackboneUnavailableError, match="allow_random_towers"):
        TimesCLIPModel(24, 6, clip_model_name=str(tmp_path / "vision")).fit(etth1_series(0, 80))
    towers = load_clip_towers(str(tmp_path / "vision"), allow_random_towers=True)
    info = towers.info
    assert (info.vision_pretrained, info.text_pretrained, info.pretrained) == (True, False, False)
    assert "text tower random (NOT pretrained)" in info.describe()
    torch.testing.assert_close(
        towers.vision.post_layernorm.weight, clip.vision_model.post_layernorm.weight
    )


# --------------------------------------------------------------------- reversible instance norm
LIKELIHOODS = {
    "gaussian": GaussianLikelihood,
    "laplace": LaplaceLikelihood,
    "cauchy": CauchyLikelihood,
    "gumbel": GumbelLikelihood,
    "quantile": lambda: QuantileRegression([0.1, 0.5, 0.9]),
}


def _spread(model: TimesCLIPModel, series: TimeSeries, name: str) -> np.ndarray:
    params = model.predict(6, series=series, predict_likelihood_parameters=True).values()
    params = params.reshape(6, series.width, -1)
    if name == "quantile":  # after a few steps the quantiles may still cross: their distance
        return np.abs(params[..., 2] - params[..., 0])
    return params[..., 1]


@pytest.mark.parametrize("rin", [False, True], ids=["no-rin", "rin"])
@pytest.mark.parametrize("name", list(LIKELIHOODS))
def test_the_spread_follows_the_data_with_and_without_rin(
    name: str, rin: bool, short_series: TimeSeries
) -> None:
    series = short_series[["OT", "HUFL"]]
    model = tiny_timesclip(24, 6, likelihood=LIKELIHOODS[name](), use_reversible_instance_norm=rin)
    model.fit(series, max_samples_per_ts=32)
    if rin:  # a trained affine RINorm: weight and bias away from the identity
        with torch.no_grad():
            model.model.rin.affine_weight.copy_(torch.tensor([1.7, 0.6]))
            model.model.rin.affine_bias.copy_(torch.tensor([0.3, -0.2]))
    base = _spread(model, series, name)
    assert (base > 0).all()
    np.testing.assert_allclose(_spread(model, series * 10, name), 10 * base, rtol=2e-3)
    np.testing.assert_allclose(_spread(model, series + 100, name), base, rtol=2e-3)


def test_rin_replaces_the_cores_target_normalisation(short_series: TimeSeries) -> None:
    """With RIN the core sees RINorm's output, so its affine weights change the forecast."""
    model = tiny_timesclip(24, 6, use_reversible_instance_norm=True)
    model.fit(short_series, max_samples_per_ts=32)
    assert model.model.core.config.normalize_targets is False
    before = model.predict(6, series=short_series).values()
    with torch.no_grad():
        model.model.rin.affine_bias.add_(0.5)
    assert not np.allclose(model.predict(6, series=short_series).values(), before, atol=1e-3)


# --------------------------------------------------------------------- Darts behaviours
def test_mc_dropout_gives_distinct_samples_like_darts_models(short_series: TimeSeries) -> None:
    model = tiny_timesclip(24, 6, dropout=0.3)
    model.fit(short_series, max_samples_per_ts=32)
    samples = model.predict(6, num_samples=5, mc_dropout=True).all_values()
    assert samples.shape == (6, 7, 5)
    assert np.abs(samples[..., 0] - samples[..., 1]).max() > 1e-4
    plain = model.predict(6).values()
    np.testing.assert_array_equal(model.predict(6).values(), plain)  # dropout off otherwise


class _LearningRates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[-1]["lr"])


def _rates(series: TimeSeries, epochs: int | None = None, **kwargs) -> list[float]:
    record = _LearningRates()
    trainer = {"enable_progress_bar": False, "enable_model_summary": False, "callbacks": [record]}
    model = tiny_timesclip(24, 6, n_epochs=2, pl_trainer_kwargs=trainer, **kwargs)
    model.fit(series, max_samples_per_ts=16, epochs=epochs or 0)
    return record.rates


def test_the_default_cosine_spans_the_epochs_of_each_fit(short_series: TimeSeries) -> None:
    rates = _rates(short_series, epochs=4)  # n_epochs=2, but this fit runs 4
    assert len(rates) == 4
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False)), rates  # never rises
    assert _rates(short_series, lr_scheduler_cls=None) == [3e-4, 3e-4]


@pytest.mark.integration
def test_importing_and_fitting_leave_process_wide_logging_and_warnings_alone() -> None:
    """The model quiets Lightning and its expected warnings inside its own calls only: after
    import and fit, the same warning raised by the user's code is still shown, and Lightning's
    logger keeps the user's level."""
    script = """
import logging, warnings
logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
import timesclip_darts.darts_model
from tests.conftest import etth1_series, tiny_timesclip
levels = [logger.level]
tiny_timesclip(24, 6).fit(etth1_series(0, 80), max_samples_per_ts=8)
levels.append(logger.level)
with warnings.catch_warnings(record=True) as seen:
    warnings.warn("Found 3 module(s) in eval mode at the start of training")
    warnings.warn("Total length of `list` across ranks is zero")
print(levels, len(seen))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[0, 0] 2", result.stdout


def test_forecasts_are_a_pure_function_of_the_inputs(short_series: TimeSeries) -> None:
    """Darts' same-result contract: repeated calls and n_jobs give identical numbers, whatever
    the feature cache held; predictions and backtests leave the cache empty."""
    series = short_series.astype(np.float64)
    model = tiny_timesclip(24, 6, n_epochs=2, vision_cache_mb=64)
    model.fit(series, max_samples_per_ts=40)
    vision = model.model.core.vision
    assert vision.cache.hits > 0 and len(vision.cache) == 0  # used in fit, emptied after
    first = model.predict(36, series=[series] * 10)
    second = model.predict(36, series=[series] * 10)
    parallel = model.predict(36, series=[series] * 10, n_jobs=2)
    for a, b, c in zip(first, second, parallel, strict=True):
        np.testing.assert_array_equal(a.values(), b.values())
        np.testing.assert_array_equal(a.values(), c.values())
    model.historical_forecasts(series, forecast_horizon=6, retrain=False, verbose=False)
    assert len(vision.cache) == 0 and vision.cache.used_bytes == 0


@pytest.mark.parametrize("icl", [8, 10])
def test_short_windows_get_a_patching_that_fits(icl: int, short_series: TimeSeries) -> None:
    model = tiny_timesclip(icl, 4)
    model.fit(short_series, max_samples_per_ts=16)
    assert (model.core.patch_length, model.core.stride) == default_patching(icl)
    assert model.predict(4).values().shape == (4, 7)


def test_patching_rule_and_explicit_choices_that_cannot_fit() -> None:
    assert default_patching(96) == (16, 8) and default_patching(32) == (16, 8)
    assert default_patching(10) == (5, 2) and default_patching(8) == (4, 2)
    assert default_patching(2) == (2, 1)
    with pytest.raises(ValueError, match=r"shorter than one patch \(patch_length=16\)"):
        TimesCLIPModel(10, 4, patch_length=16, stride=8)
    with pytest.raises(ValueError, match="both patch_length and stride, or neither"):
        TimesCLIPModel(48, 4, patch_length=8)


def test_base_preset_has_vit_b16_shapes_and_runs_one_window() -> None:
    """The paper-scale path without a download: 224 px, ViT-B/16, a 12 x 512 text tower."""
    towers = load_clip_towers("base")
    vision, text = towers.vision.config, towers.text.config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (768, 12, 16)
    assert (vision.image_size, text.hidden_size, text.num_hidden_layers) == (224, 512, 12)
    assert not towers.info.pretrained and "NOT pretrained" in towers.info.describe()
    model = TimesCLIP(
        time_steps=32, n_variates=1, prediction_steps=8, d_model=64, n_heads=4, backbone=towers
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 32, 1)).shape == (1, 1, 8)


def test_base_preset_through_darts_fit_and_predict() -> None:
    series = etth1_series(0, 60)["OT"]
    model = tiny_timesclip(32, 8, clip_model_name="base", d_model=64, batch_size=1)
    model.fit(series, max_samples_per_ts=1)
    forecast = model.predict(8)
    assert forecast.start_time() == series.end_time() + series.freq
    assert np.isfinite(forecast.values()).all()


def test_day_frequency_series_fit_predict_and_backtest() -> None:
    """Darts 0.48.1 with pandas 3.1 raises `Timedelta // Day` in some day-frequency paths;
    this model's own paths (fit, predict past the output chunk, backtests) do not hit it."""
    index = pd.date_range("2020-01-01", periods=120, freq="D")
    values = np.random.default_rng(0).normal(size=(120, 2)).astype(np.float32)
    series = TimeSeries.from_times_and_values(index, values)
    model = tiny_timesclip(24, 6)
    model.fit(series, max_samples_per_ts=8)
    forecast = model.predict(8)
    assert forecast.start_time() == pd.Timestamp("2020-04-30") and forecast.freq_str == "D"
    backtest = model.historical_forecasts(
        series, forecast_horizon=6, retrain=False, last_points_only=False, verbose=False
    )
    assert len(backtest) == 120 - 24 - 6 + 1
