"""Quickstart: fit TimesCLIPModel on ETTh1 and forecast the 96 hours after the training data.

Run: python examples/quickstart.py [--quick]
"""

from __future__ import annotations

import argparse

from _common import HORIZON, etth1_splits, small_timesclip


def main(preset: str = "small", max_train_windows: int = 1000, epochs: int = 1):
    splits = etth1_splits()
    model = small_timesclip(preset, epochs)
    model.fit(splits.train, max_samples_per_ts=max_train_windows)
    print("backbone:", model.core.backbone_info.describe())
    forecast = model.predict(HORIZON)  # continues the training series
    print(
        f"forecast {forecast.start_time()} .. {forecast.end_time()}, "
        f"components {list(forecast.components)}"
    )
    # Back to the original units (degrees, kW) with the scaler fitted on train.
    print(splits.scaler.inverse_transform(forecast)["OT"].to_dataframe().head())
    return forecast


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few windows")
    quick = parser.parse_args().quick
    main("tiny", 64) if quick else main()
