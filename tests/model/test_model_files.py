"""Saved models: atomic saves that survive a kill, and clear errors for damaged files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from darts import TimeSeries
from darts.models import DLinearModel

from tests.conftest import DATA_DIR, etth1_series
from timesclip_darts import TimesCLIPModel
from timesclip_darts.darts_model import ModelFileError

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def series() -> TimeSeries:
    return etth1_series(0, 300)


@pytest.fixture(scope="module")
def saved(series: TimeSeries, tmp_path_factory) -> Path:
    model = TimesCLIPModel(
        48,
        12,
        clip_model_name="tiny",
        d_model=32,
        n_heads=4,
        n_epochs=1,
        random_state=0,
        pl_trainer_kwargs=QUIET,
    )
    model.fit(series)
    path = tmp_path_factory.mktemp("saved") / "model.pt"
    model.save(str(path))
    return path


KILL_MID_SAVE = """
import os, signal, sys
import numpy as np, pandas as pd
import pytorch_lightning as pl
from darts import TimeSeries
from timesclip_darts import TimesCLIPModel

frame = pd.read_csv(sys.argv[1], parse_dates=["date"]).iloc[:300]
series = TimeSeries.from_dataframe(frame, time_col="date").astype(np.float32)
model = TimesCLIPModel(48, 12, clip_model_name="tiny", d_model=32, n_heads=4, n_epochs=1,
                       random_state=1, pl_trainer_kwargs={"enable_progress_bar": False})
model.fit(series)

def write_half_then_die(self, filepath, weights_only=False):
    with open(filepath, "wb") as f:
        f.write(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
pl.Trainer.save_checkpoint = write_half_then_die
model.save(sys.argv[2])
"""


@pytest.mark.integration
def test_a_kill_mid_save_leaves_the_previous_model_intact(
    saved: Path, series: TimeSeries, tmp_path: Path
) -> None:
    target = tmp_path / "model.pt"
    for suffix in ("", ".ckpt"):
        Path(f"{target}{suffix}").write_bytes(Path(f"{saved}{suffix}").read_bytes())
    before = [Path(f"{target}{s}").read_bytes() for s in ("", ".ckpt")]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_MID_SAVE, str(DATA_DIR / "ETTh1.csv"), str(target)],
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [Path(f"{target}{s}").read_bytes() for s in ("", ".ckpt")] == before
    reloaded = TimesCLIPModel.load(str(target))
    expected = TimesCLIPModel.load(str(saved)).predict(12, series=series).values()
    np.testing.assert_array_equal(reloaded.predict(12, series=series).values(), expected)


def test_save_replaces_an_older_model(saved: Path, series: TimeSeries, tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    model = TimesCLIPModel.load(str(saved))
    model.save(str(target))
    model.save(str(target))  # over an existing model: replaced whole, no leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.ckpt"]


def _truncate(path: Path, suffix: str) -> None:
    file = Path(f"{path}{suffix}")
    file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _truncate(p, ""), "truncated, corrupt or of another kind"),
        (lambda p: _truncate(p, ".ckpt"), "truncated, corrupt or of another kind"),
        (lambda p: p.write_bytes(b"\x00garbage" * 100), "truncated, corrupt or of another kind"),
        (lambda p: Path(f"{p}.ckpt").unlink(), r"\.ckpt, the weights saved beside .* is missing"),
        (lambda p: p.unlink(), "does not exist"),
    ],
    ids=["truncated-model", "truncated-weights", "garbage", "missing-weights", "missing-model"],
)
def test_damaged_model_files_are_named(saved: Path, tmp_path: Path, damage, message: str) -> None:
    target = tmp_path / "model.pt"
    for suffix in ("", ".ckpt"):
        Path(f"{target}{suffix}").write_bytes(Path(f"{saved}{suffix}").read_bytes())
    damage(target)
    with pytest.raises(ModelFileError, match=message):
        TimesCLIPModel.load(str(target))


def test_another_models_file_is_refused(series: TimeSeries, tmp_path: Path) -> None:
    other = DLinearModel(48, 12, n_epochs=1, pl_trainer_kwargs=QUIET)
    other.fit(series)
    other.save(str(tmp_path / "dlinear.pt"))
    with pytest.raises(ModelFileError, match="DLinearModel, not a TimesCLIPModel"):
        TimesCLIPModel.load(str(tmp_path / "dlinear.pt"))
