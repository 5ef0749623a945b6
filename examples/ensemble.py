"""Ensembles: TimesCLIP beside Darts' own global models, averaged or combined by regression.

Run: python examples/ensemble.py [--quick]
"""

from __future__ import annotations

import argparse

from _common import HORIZON, INPUT, etth1_splits, small_timesclip
from darts.metrics import mse
from darts.models import (
    DLinearModel,
    GlobalNaiveSeasonal,
    NaiveEnsembleModel,
    RegressionEnsembleModel,
)


def main(preset: str = "small", max_train_windows: int = 1000):
    splits = etth1_splits()
    train = splits.train[-(max_train_windows + INPUT + 2 * HORIZON) :]
    truth = splits.val[INPUT : INPUT + HORIZON]
    dlinear = dict(n_epochs=1, random_state=0)
    averaged = NaiveEnsembleModel(
        [small_timesclip(preset), DLinearModel(INPUT, HORIZON, **dlinear)]
    )
    averaged.fit(train)
    regressed = RegressionEnsembleModel(
        [
            small_timesclip(preset),
            GlobalNaiveSeasonal(input_chunk_length=24, output_chunk_length=HORIZON),
        ],
        regression_train_n_points=HORIZON,
    )
    regressed.fit(train)
    history = splits.val[:INPUT]
    results = {}
    for name, model in (("naive ensemble", averaged), ("regression ensemble", regressed)):
        forecast = model.predict(HORIZON, series=history)
        results[name] = mse(truth, forecast)
        print(f"{name}: MSE {results[name]:.4f} on the first val window")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few windows")
    quick = parser.parse_args().quick
    main("tiny", 64) if quick else main()
