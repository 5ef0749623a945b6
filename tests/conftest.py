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
# Under pytest-xdist each worker gets its share of the cores: torch's and Lightning's default of
# every core per process would oversubscribe them (Lightning resets torch's threads at fit unless
# OMP_NUM_THREADS is set).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test``: ``--dist loadgroup``) a module's tests run on one
    worker, so a module's fixtures (a tracking server, trained models) are built once; the
    service tests share one worker, so the session runs one real server."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # only workers collect under xdist
        return
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        group = "service" if module.startswith("tests/service/") else module
        item.add_marker(pytest.mark.xdist_group(group))
        groups.setdefault(group, []).append(item)
    # Groups are handed out in this order: those holding integration tests (servers, process
    # fleets, benchmarks: the long ones) first, so that none of them is left running alone at
    # the end.
    ordered = sorted(
        groups.values(), key=lambda g: not any(i.get_closest_marker("integration") for i in g)
    )
    items[:] = [item for group in ordered for item in group]


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


def tiny_core(**overrides):
    """A tiny-preset core TimesCLIP: 48 steps, 3 variates, horizon 8, d_model 32, 4 heads."""
    from timesclip_darts import TimesCLIP

    config = dict(
        time_steps=48,
        n_variates=3,
        prediction_steps=8,
        d_model=32,
        n_heads=4,
        clip_model_name="tiny",
    )
    config.update(overrides)
    return TimesCLIP(**config)


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


# ------------------------------------------------------------------ a tiny model and its bundle
# Trained and exported once per test session: the export, runtime and benchmark tests share them.
TINY_ICL, TINY_OCL = 96, 24
ETTH1_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


@pytest.fixture(scope="session")
def etth1_splits():
    """ETTh1's standard train/val/test split (scaled), input length 96."""
    from timesclip_darts.data import ett_splits, load_darts_dataset

    return ett_splits(load_darts_dataset("ETTh1", DATA_DIR), "ETTh1", TINY_ICL)


@pytest.fixture(scope="session")
def tiny_model_path(etth1_splits, tmp_path_factory) -> Path:
    """A tiny TimesCLIP, one epoch on 256 windows, saved with its scaler as `train` does."""
    from timesclip_darts.data import save_scaler_json

    model = tiny_timesclip(TINY_ICL, TINY_OCL, batch_size=64)
    model.fit(etth1_splits.train, max_samples_per_ts=256)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    model.save(str(path))
    save_scaler_json(etth1_splits.scaler, ETTH1_COLUMNS, f"{path}.scaler.json")
    return path


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory) -> tuple[Path, Path]:
    """An Ed25519 key pair (private, public) made by `timesclip-darts keygen`."""
    from timesclip_cli.main import main

    folder = tmp_path_factory.mktemp("keys")
    private, public = folder / "bundle.key", folder / "bundle.pub"
    assert main(["keygen", str(private), str(public)]) == 0
    return private, public


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_path: Path, signing_keys, tmp_path_factory) -> Path:
    """The tiny model exported by `timesclip-darts export ... --sign` (with its scaler)."""
    from timesclip_cli.main import main

    out = tmp_path_factory.mktemp("bundles") / "bundle"
    assert main(["export", str(tiny_model_path), str(out), "--sign", str(signing_keys[0])]) == 0
    return out
