"""The long-term forecasting protocol, shared by the demo and the benchmarks.

Training (:class:`TrainingProtocol`): every training window each epoch (a random sample only
when asked, and then said), at most 10 epochs, early stopping on the validation loss with
patience 3, and the weights of the best validation epoch restored before testing. Test
(:func:`score_on_test`): every stride-1 window of the test split, MSE and MAE on scaled values.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from darts import TimeSeries

CHECKPOINT_NAME = "protocol"


@dataclass
class TestScore:
    forecasts: list[TimeSeries]  # one per window, in order
    mse: float
    mae: float
    seconds: float  # wall time of historical_forecasts

    @property
    def forecasts_per_second(self) -> float:
        return len(self.forecasts) / self.seconds if self.seconds > 0 else float("inf")


def n_test_windows(test: TimeSeries, input_chunk_length: int, horizon: int) -> int:
    return len(test) - input_chunk_length - horizon + 1


def score_on_test(
    model: Any,
    test: TimeSeries,
    input_chunk_length: int,
    horizon: int,
    predict_kwargs: dict | None = None,
) -> TestScore:
    """Forecast every stride-1 window of ``test`` with ``historical_forecasts(retrain=False,
    last_points_only=False)`` and score them.

    Every model starts at the first full input window (``test.time_index[input_chunk_length]``),
    so models with shorter inputs (the naive baseline) score exactly the same windows; the
    window count is checked.
    """
    from darts.metrics import mae, mse

    started = time.perf_counter()
    forecasts = model.historical_forecasts(
        test,
        start=test.time_index[input_chunk_length],
        forecast_horizon=horizon,
        stride=1,
        retrain=False,
        last_points_only=False,
        verbose=False,
        **({"predict_kwargs": predict_kwargs} if predict_kwargs else {}),
    )
    seconds = time.perf_counter() - started
    expected = n_test_windows(test, input_chunk_length, horizon)
    if len(forecasts) != expected:
        raise RuntimeError(
            f"{type(model).__name__} produced {len(forecasts)} test windows, not {expected}"
        )
    errors = model.backtest(test, historical_forecasts=forecasts, metric=[mse, mae])
    return TestScore(forecasts, float(errors[0]), float(errors[1]), seconds)


# ----------------------------------------------------------------------------- training protocol
def random_windows(
    series: TimeSeries, n: int, input_length: int, horizon: int, seed: int
) -> list[TimeSeries]:
    """A fixed random sample of ``n`` training windows of ``series`` (drawn once from
    ``seed``), each as its own ``input_length + horizon`` series: Darts' ``fit`` on the list
    trains on exactly these windows, through every model's own ``fit``. Darts'
    ``max_samples_per_ts`` keeps the *latest* windows instead: the last weeks of the split,
    which is not a sample."""
    length = input_length + horizon
    total = len(series) - length + 1
    if total < 1:
        raise ValueError(f"a series of {len(series)} steps holds no {length}-step window")
    starts = np.sort(np.random.default_rng(seed).choice(total, min(n, total), replace=False))
    return [series[int(s) : int(s) + length] for s in starts]


@dataclass(frozen=True)
class TrainingProtocol:
    """How every trained model of a comparison is fitted: the same for all of them.

    ``train_windows=None`` trains on every window each epoch (the literature's protocol); a
    number draws that many windows at random once per seed. ``val_windows=None`` validates on
    every validation window, a number on the last ones.
    """

    max_epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    train_windows: int | None = None
    val_windows: int | None = None

    def describe(self) -> str:
        windows = (
            "every training window"
            if self.train_windows is None
            else f"a random sample of {self.train_windows} training windows (fixed per seed)"
        )
        val = (
            "every validation window"
            if self.val_windows is None
            else f"the last {self.val_windows} validation windows"
        )
        return (
            f"at most {self.max_epochs} epochs over {windows}, batch {self.batch_size}, early "
            f"stopping on the loss over {val} (patience {self.patience}), best validation "
            "epoch restored"
        )

    def model_kwargs(self, seed: int, work_dir: str | Path, **trainer: Any) -> dict[str, Any]:
        """Darts ``TorchForecastingModel`` arguments: epochs, batch, seed, the best-epoch
        checkpoint in ``work_dir`` and Lightning's ``EarlyStopping`` (plus ``trainer``'s own
        ``pl_trainer_kwargs`` entries)."""
        from pytorch_lightning.callbacks import EarlyStopping

        stopping = EarlyStopping("val_loss", patience=self.patience, mode="min")
        callbacks = [stopping, *trainer.pop("callbacks", [])]
        return dict(
            n_epochs=self.max_epochs,
            batch_size=self.batch_size,
            random_state=seed,
            save_checkpoints=True,
            work_dir=str(work_dir),
            model_name=CHECKPOINT_NAME,
            force_reset=True,
            pl_trainer_kwargs={
                "enable_model_summary": False,
                **trainer,
                "callbacks": callbacks,
            },
        )

    def validation_series(self, val: TimeSeries, input_length: int, horizon: int) -> TimeSeries:
        if self.val_windows is None:
            return val
        return val[-(input_length + horizon + self.val_windows - 1) :]

    def fit(
        self,
        model: Any,
        train: TimeSeries,
        val: TimeSeries,
        seed: int,
        work_dir: str | Path,
        dataloader_kwargs: dict | None = None,
    ) -> tuple[Any, FitReport]:
        """Fit ``model`` (built with :meth:`model_kwargs` and this ``work_dir``) and return the
        model of its best validation epoch, loaded from Darts' checkpoint, with a report."""
        icl, ocl = model.input_chunk_length, model.output_chunk_length
        val = self.validation_series(val, icl, ocl)
        started = time.perf_counter()
        if self.train_windows is not None:
            train = random_windows(train, self.train_windows, icl, ocl, seed)
        model.fit(train, val_series=val, dataloader_kwargs=dataloader_kwargs)
        seconds = time.perf_counter() - started
        epochs_run = int(model.epochs_trained)
        best = _best_epoch(Path(work_dir))
        best_val_loss = float(model.trainer.checkpoint_callback.best_model_score)
        model = type(model).load_from_checkpoint(CHECKPOINT_NAME, work_dir=str(work_dir), best=True)
        return model, FitReport(epochs_run, best, seconds, best_val_loss)


@dataclass
class FitReport:
    epochs_run: int  # what early stopping let run
    best_epoch: int  # 1-based: the epoch whose weights were restored
    seconds: float
    best_val_loss: float  # the restored epoch's validation loss (what model choices may use)


def _best_epoch(work_dir: Path) -> int:
    """The 1-based epoch of Darts' best checkpoint (named ``best-epoch=<0-based>-...``)."""
    (path,) = (work_dir / CHECKPOINT_NAME / "checkpoints").glob("best-epoch=*")
    return int(path.name.split("=")[1].split("-")[0]) + 1


def protocol_work_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder for one fit's checkpoints."""
    return tempfile.TemporaryDirectory(prefix="timesclip-protocol-")
