"""Shared set-up for the examples: ETTh1 with the standard split, and a small TimesCLIPModel."""

from __future__ import annotations

from timesclip_darts import TimesCLIPModel
from timesclip_darts.data import Splits, ett_splits, load_darts_dataset

INPUT, HORIZON = 96, 96


def etth1_splits() -> Splits:
    """ETTh1 through Darts' loader (offline: from ../shared/data/ETT), scaled on train."""
    return ett_splits(load_darts_dataset("ETTh1"), "ETTh1", INPUT)


def small_timesclip(preset: str = "small", epochs: int = 1, **kwargs) -> TimesCLIPModel:
    """A CPU-sized TimesCLIP; presets are random-weight CLIP towers, not pretrained CLIP."""
    config = dict(
        clip_model_name=preset,
        d_model=128 if preset == "small" else 32,
        n_heads=4,
        n_epochs=epochs,
        batch_size=32,
        random_state=0,
    )
    config.update(kwargs)
    return TimesCLIPModel(INPUT, HORIZON, **config)
