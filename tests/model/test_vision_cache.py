"""The frozen-ViT feature cache: bounded, exact, and used from the second epoch on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import etth1_series, tiny_core, tiny_timesclip
from timesclip_darts import TimesCLIPModel
from timesclip_darts.vision_module import FeatureCache, gather_features


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
    model = tiny_core(vision_cache_mb=16)
    x_norm = torch.randn(6, 48, 3)
    assert not model.vision.cache_enabled  # off unless training asks for it
    model.vision.use_cache(True)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_keys_work_for_every_floating_dtype_and_tell_dtypes_apart(dtype) -> None:
    x = torch.randn(3, 16, 2)
    keys = FeatureCache.keys(x.to(dtype))  # .numpy() on bfloat16 raised before
    assert len(set(keys)) == 3
    other = torch.float64 if dtype == torch.float32 else torch.float32
    assert set(keys).isdisjoint(FeatureCache.keys(x.to(other)))


def test_rows_are_copied_into_one_host_slab_that_the_budget_bounds() -> None:
    """One small tensor per row fragmented the C heap (RSS +40 MB per batch while the cache
    held 5 MB); rows now share one slab, which is what ``used_bytes`` counts."""
    batch = torch.randn(256, 7, 128)  # one batch of features; rows used to be views into it
    row_bytes = 7 * 128 * 4
    cache = FeatureCache(max_bytes=3000 * row_bytes)
    for i in range(1500):  # past the first slab of 1024 rows: it doubles once
        cache.put(i.to_bytes(2, "big"), batch[i % 256])
    first, last = cache.get((0).to_bytes(2, "big")), cache.get((1499).to_bytes(2, "big"))
    assert first.device.type == "cpu" and len(cache) == 1500
    assert first.untyped_storage().data_ptr() == last.untyped_storage().data_ptr()
    assert cache.used_bytes == 2048 * row_bytes == first.untyped_storage().nbytes()
    expected = batch[0].clone()
    batch.zero_()  # the cache owns its rows: nothing it holds changes with the batch
    torch.testing.assert_close(cache.get((0).to_bytes(2, "big")), expected, rtol=0, atol=0)
    for i in range(1500, 4000):  # the budget caps the slab at 3000 rows, then LRU evicts
        cache.put(i.to_bytes(2, "big"), torch.full((7, 128), float(i)))
    assert len(cache) == 3000 and cache.used_bytes == 3000 * row_bytes
    assert cache.get((1000).to_bytes(2, "big")) is None
    assert cache.get((3999).to_bytes(2, "big"))[0, 0] == 3999.0
    cache.put(b"other shape", torch.zeros(3, 5))  # another shape starts a new slab
    assert len(cache) == 1 and cache.used_bytes == 1024 * 3 * 5 * 4
    cache.clear()
    assert len(cache) == 0 and cache.used_bytes == 0


def test_cached_and_fresh_rows_are_gathered_on_the_inputs_device_and_dtype() -> None:
    """After training on a GPU, cached rows (host) meet fresh rows (the device): the result
    must be on the device of the fresh rows. A meta tensor stands in for the GPU here."""
    host = [torch.randn(7, 16), torch.randn(7, 16)]
    fresh = torch.empty(1, 7, 16, device="meta", dtype=torch.bfloat16)
    out = gather_features([host[0], fresh[0], host[1]], fresh)
    assert out.device.type == "meta" and out.dtype == torch.bfloat16 and out.shape == (3, 7, 16)
    with pytest.raises(RuntimeError):
        torch.stack([host[0], fresh[0]])  # what the cache did before: mixed devices fail


def test_fit_leaves_no_cache_memory_and_prediction_never_fills_it() -> None:
    model = tiny_timesclip(48, 12, n_epochs=2, vision_cache_mb=64)
    series = etth1_series(0, 200)
    model.fit(series, max_samples_per_ts=20)
    cache = model.model.core.vision.cache
    assert cache.hits == 20 and len(cache) == 0 and cache.used_bytes == 0
    model.predict(12)
    model.historical_forecasts(series, forecast_horizon=12, retrain=False, verbose=False)
    assert len(cache) == 0 and cache.hits == 20
