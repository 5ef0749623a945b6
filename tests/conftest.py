"""Shared fixtures: the real ETT data beside the repo and small CLIP backbones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from darts import TimeSeries

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TIMESCLIP_DATA_DIR", ROOT.parent / "shared" / "data" / "ETT"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def etth1() -> pd.DataFrame:
    path = DATA_DIR / "ETTh1.csv"
    if not path.is_file():
        pytest.fail(f"real ETT data not found at {path}; set TIMESCLIP_DATA_DIR")
    return pd.read_csv(path, parse_dates=["date"])


@pytest.fixture(scope="session")
def etth1_train_values(etth1: pd.DataFrame) -> torch.Tensor:
    """Standard-scaled ETTh1 train rows [0, 8640) as float32 ``[rows, 7]``."""
    train = etth1.iloc[:8640, 1:].to_numpy()
    scaled = (train - train.mean(0)) / train.std(0)
    return torch.tensor(scaled, dtype=torch.float32)


def etth1_series(start: int, stop: int) -> TimeSeries:
    """Raw ETTh1 rows ``[start, stop)`` as a float32 Darts series."""
    frame = pd.read_csv(DATA_DIR / "ETTh1.csv", parse_dates=["date"]).iloc[start:stop]
    return TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)


def tiny_timesclip(icl: int, ocl: int, **overrides):
    """A quiet tiny-preset TimesCLIPModel for tests: one epoch, d_model 32, 4 heads."""
    from timesclip_darts import TimesCLIPModel

    config = dict(
        clip_model_name="tiny",
        d_model=32,
        n_heads=4,
        n_epochs=1,
        random_state=0,
        pl_trainer_kwargs={"enable_progress_bar": False, "enable_model_summary": False},
    )
    config.update(overrides)
    return TimesCLIPModel(icl, ocl, **config)


def windows(values: torch.Tensor, starts: list[int], length: int) -> torch.Tensor:
    """Stack windows ``values[s : s + length]`` -> ``[len(starts), length, N]``."""
    return torch.stack([values[s : s + length] for s in starts])
