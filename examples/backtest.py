"""Backtest: stride-1 historical forecasts on ETTh1's test split, MSE/MAE on scaled values.

Run: python examples/backtest.py [--quick]
"""

from __future__ import annotations

import argparse

from _common import HORIZON, INPUT, etth1_splits, small_timesclip
from darts.metrics import mae, mse


def main(preset: str = "small", max_train_windows: int = 1000, test_windows: int | None = None):
    splits = etth1_splits()
    model = small_timesclip(preset)
    model.fit(splits.train, max_samples_per_ts=max_train_windows)
    test = splits.test
    if test_windows is not None:
        test = test[: INPUT + HORIZON + test_windows - 1]
    forecasts = model.historical_forecasts(
        test,
        forecast_horizon=HORIZON,
        stride=1,
        retrain=False,
        last_points_only=False,
        verbose=False,
    )
    errors = model.backtest(test, historical_forecasts=forecasts, metric=[mse, mae])
    print(f"{len(forecasts)} windows: MSE {errors[0]:.4f}  MAE {errors[1]:.4f}")
    return errors


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few windows")
    quick = parser.parse_args().quick
    main("tiny", 64, 10) if quick else main()
