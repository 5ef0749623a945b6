"""The long-term forecasting test protocol, shared by the demo and the benchmarks: every stride-1
window of the test split, scored with MSE and MAE on scaled values."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from darts import TimeSeries


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
