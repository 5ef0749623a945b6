"""The frozen-ViT feature cache: bounded, exact, and used from the second epoch on."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import etth1_series
from timesclip_darts import TimesCLIP, TimesCLIPModel
from timesclip_darts.vision_module import FeatureCache


def test_cache_is_bounded_in_bytes_and_evicts_least_recently_used() -> None:
    cache = FeatureCache(max_bytes=3 * 4 * 10)  # room for three [10] float32 tensors
    for key in (b"a", b"b", b"c"):
        cache.put(key, torch.zeros(10))
    assert cache.get(b"a") is not None  # "a" is now the most recently used
    cache.put(b"d", torch.zeros(10))
    assert cache.get(b"b") is None and cache.get(b"a") is not None
    assert len(cache) == 3 and cache.used_bytes == 120
    cache.put(b"huge", torch.zeros(100))  # larger than the whole budget: not kept
    assert cache.get(b"huge") is None


def test_keys_follow_window_content() -> None:
    x = torch.randn(3, 16, 2)
    same = FeatureCache.keys(x.clone())
    assert FeatureCache.keys(x) == same and len(set(same)) == 3
    x[1, 0, 0] += 1e-6
    assert FeatureCache.keys(x)[1] != same[1]


def test_cached_features_equal_computed_ones_and_skip_the_vit() -> None:
    torch.manual_seed(0)
    model = TimesCLIP(
        time_steps=48,
        n_variates=3,
        prediction_steps=8,
        d_model=32,
        n_heads=4,
        clip_model_name="tiny",
        vision_cache_mb=16,
    )
    x_norm = torch.randn(6, 48, 3)
    fresh = model.vision.encode(x_norm[:4])
    calls = []
    original = model.vision._encode
    model.vision._encode = lambda x: calls.append(len(x)) or original(x)
    mixed = model.vision.encode(x_norm)  # windows 0-3 cached, 4-5 new
    assert calls == [2]
    torch.testing.assert_close(mixed[:4], fresh)
    torch.testing.assert_close(mixed, original(x_norm), atol=1e-5, rtol=0)


def test_training_with_the_cache_changes_no_forecast() -> None:
    series = etth1_series(0, 300)
    forecasts, caches = [], []
    for cache_mb in (0.0, 64.0):
        model = TimesCLIPModel(
            48,
            12,
            clip_model_name="tiny",
            d_model=32,
            n_heads=4,
            n_epochs=2,
            random_state=0,
            vision_cache_mb=cache_mb,
            pl_trainer_kwargs={"enable_progress_bar": False},
        )
        model.fit(series, dataloader_kwargs={"shuffle": False})
        forecasts.append(model.predict(12).values())
        caches.append(model.model.core.vision.cache)
    assert caches[0] is None
    windows = len(series) - 48 - 12 + 1
    assert caches[1].hits >= windows  # every window of epoch 2 came from the cache
    np.testing.assert_allclose(forecasts[1], forecasts[0], rtol=0, atol=1e-4)
