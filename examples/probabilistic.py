"""Probabilistic forecasts: quantile regression, 200 samples, and the 90 % interval's coverage.

Run: python examples/probabilistic.py [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import HORIZON, INPUT, etth1_splits, small_timesclip
from darts.utils.likelihood_models import QuantileRegression


def main(preset: str = "small", max_train_windows: int = 1000, epochs: int = 2):
    splits = etth1_splits()
    model = small_timesclip(preset, epochs, likelihood=QuantileRegression([0.05, 0.5, 0.95]))
    model.fit(splits.train, max_samples_per_ts=max_train_windows)
    history, truth = splits.test[:INPUT], splits.test[INPUT : INPUT + HORIZON]
    forecast = model.predict(HORIZON, series=history, num_samples=200)
    low, high = forecast.quantile(0.05).values(), forecast.quantile(0.95).values()
    coverage = float(np.mean((truth.values() >= low) & (truth.values() <= high)))
    print(f"{forecast.n_samples} samples; 90 % interval covers {coverage:.0%} of the truth")
    return forecast, coverage


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few windows")
    quick = parser.parse_args().quick
    main("tiny", 64, 1) if quick else main()
