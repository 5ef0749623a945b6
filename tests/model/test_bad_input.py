"""Bad input to the core model gets a ValueError that names the problem."""

from __future__ import annotations

import pytest
import torch

from timesclip_darts import TimesCLIP


@pytest.fixture(scope="module")
def model() -> TimesCLIP:
    return TimesCLIP(
        time_steps=48,
        n_variates=3,
        prediction_steps=12,
        patch_length=16,
        stride=8,
        d_model=32,
        n_heads=4,
        clip_model_name="tiny",
    )


def _with_nan() -> torch.Tensor:
    x = torch.randn(2, 48, 3)
    x[1, 5, 2] = float("nan")
    return x


def _with_inf() -> torch.Tensor:
    x = torch.randn(2, 48, 3)
    x[0, 0, 0] = float("inf")
    return x


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(48, 3), "3-D tensor"),
        (torch.randn(1, 2, 48, 3), "3-D tensor"),
        (torch.randn(2, 48, 4), "expected 3 variates"),
        (torch.randn(2, 8, 3), "shorter than one patch"),
        (torch.randn(2, 40, 3), "expected windows of 48 time steps"),
        (_with_nan(), "NaN or inf.*batch 1, step 5, variate 2"),
        (_with_inf(), "NaN or inf"),
        (torch.ones(2, 48, 3, dtype=torch.int64), "floating-point"),
        ([[1.0, 2.0]], r"torch.Tensor \[batch, time, variates\], got list"),
    ],
)
def test_bad_windows_raise_value_error(model: TimesCLIP, x, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(x)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(time_steps=8, patch_length=16, stride=8), "shorter than one patch"),
        (dict(time_steps=1), "at least 2"),
        (dict(patch_length=8), "both patch_length and stride"),
        (dict(d_model=30), "divisible by n_heads"),
        (dict(temperature=0.0), "temperature"),
        (dict(n_targets=5), "n_targets"),
        (dict(stride=0), "stride"),
        (dict(clip_model_name="no-such-preset"), "neither a preset"),
    ],
)
def test_bad_configuration_fails_at_construction(overrides: dict, message: str) -> None:
    config = dict(
        time_steps=48,
        n_variates=3,
        prediction_steps=12,
        d_model=32,
        n_heads=4,
        clip_model_name="tiny",
    )
    config.update(overrides)
    with pytest.raises(ValueError, match=message):
        TimesCLIP(**config)
