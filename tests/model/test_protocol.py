"""The training protocol shared by the benchmark and the demo: a random window sample that is a
sample, early stopping, and the best validation epoch restored before testing."""

from __future__ import annotations

import numpy as np
import pytest
from darts.metrics import mse
from darts.models import DLinearModel
from darts.utils.serialization import safe_globals
from pytorch_lightning.callbacks import Callback

from tests.conftest import etth1_series
from timesclip_darts.evaluation import TrainingProtocol, protocol_work_dir, random_windows


def test_random_windows_are_a_fixed_sample_per_seed_not_the_latest_windows() -> None:
    series = etth1_series(0, 400)
    sample = random_windows(series, 20, 48, 12, seed=0)
    assert len(sample) == 20 and all(len(w) == 60 for w in sample)
    starts = [series.get_index_at_point(w.start_time()) for w in sample]
    assert starts == sorted(set(starts)) and max(starts) <= 400 - 60
    assert min(starts) < 200  # spread over the split, not its last weeks
    again = random_windows(series, 20, 48, 12, seed=0)
    assert [w.start_time() for w in again] == [w.start_time() for w in sample]
    np.testing.assert_array_equal(sample[3].values(), series[starts[3] : starts[3] + 60].values())
    other = random_windows(series, 20, 48, 12, seed=1)
    assert [w.start_time() for w in other] != [w.start_time() for w in sample]
    assert len(random_windows(series, 10_000, 48, 12, seed=0)) == 400 - 60 + 1
    with pytest.raises(ValueError, match="holds no 60-step window"):
        random_windows(series[:50], 5, 48, 12, seed=0)


class _Batches(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.count += 1


class _ValLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val_loss"]))


def test_the_best_validation_epoch_is_restored_not_the_last_one() -> None:
    """A channel-mixing DLinear at a high learning rate on 300 rows overfits after its first
    epochs: the protocol must hand back the weights of the lowest validation loss."""
    train, val = etth1_series(0, 300), etth1_series(300 - 48, 500)
    protocol = TrainingProtocol(max_epochs=8, patience=3, batch_size=16)
    losses = _ValLosses()
    with protocol_work_dir() as work_dir:
        kwargs = protocol.model_kwargs(0, work_dir, enable_progress_bar=False, callbacks=[losses])
        model = DLinearModel(48, 12, optimizer_kwargs={"lr": 3e-2}, **kwargs)
        with safe_globals([_ValLosses]):  # the best checkpoint holds the callback
            model, report = protocol.fit(model, train, val, 0, work_dir)
    best = int(np.argmin(losses.losses))
    assert report.epochs_run == len(losses.losses) and report.best_epoch == best + 1
    assert report.best_epoch < report.epochs_run  # the case where restoring matters
    assert report.epochs_run < 8 or best >= 8 - 3  # early stopping with patience 3
    assert report.best_val_loss == pytest.approx(losses.losses[best], rel=1e-6)
    forecasts = model.historical_forecasts(
        val,
        start=val.time_index[48],
        forecast_horizon=12,
        retrain=False,
        verbose=False,
        last_points_only=False,
    )
    restored = float(model.backtest(val, historical_forecasts=forecasts, metric=mse))
    assert restored == pytest.approx(losses.losses[best], rel=1e-4)
    assert restored < losses.losses[-1]


def test_a_random_sample_trains_on_exactly_those_windows() -> None:
    train, val = etth1_series(0, 400), etth1_series(400 - 48, 520)
    protocol = TrainingProtocol(max_epochs=1, patience=1, batch_size=8, train_windows=24)
    batches = _Batches()

    with protocol_work_dir() as work_dir:
        kwargs = protocol.model_kwargs(0, work_dir, enable_progress_bar=False, callbacks=[batches])
        model = DLinearModel(48, 12, **kwargs)
        with safe_globals([_Batches]):
            protocol.fit(model, train, val, 0, work_dir)
    assert batches.count == 3  # 24 windows in batches of 8, not 341
    assert "a random sample of 24 training windows" in protocol.describe()
