"""Every example runs (cut down), so none of them can rot."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # examples import their shared `_common`
    sys.modules.pop("_common", None)


def run(name: str):
    return runpy.run_path(str(EXAMPLES / name))["main"]


def test_core_model_example(capsys) -> None:
    run("core_model.py")("tiny")
    assert "forecast: (32, 7, 96)" in capsys.readouterr().out


def test_quickstart(capsys) -> None:
    forecast = run("quickstart.py")("tiny", 64)
    assert len(forecast) == 96 and forecast.width == 7
    assert str(forecast.start_time()) == "2017-06-26 00:00:00"  # right after train
    assert "NOT pretrained" in capsys.readouterr().out


def test_backtest() -> None:
    errors = run("backtest.py")("tiny", 64, 5)
    assert all(np.isfinite(e) and e > 0 for e in errors)


def test_ensemble() -> None:
    results = run("ensemble.py")("tiny", 64)
    assert set(results) == {"naive ensemble", "regression ensemble"}
    assert all(np.isfinite(v) for v in results.values())


def test_probabilistic() -> None:
    forecast, coverage = run("probabilistic.py")("tiny", 64, 1)
    assert forecast.n_samples == 200
    low, high = forecast.quantile(0.05).values(), forecast.quantile(0.95).values()
    assert (high >= low).all() and (high - low).mean() > 0  # an interval, not a point
    # The reported coverage is that of this forecast's own interval (recomputed here).
    sys.path.insert(0, str(EXAMPLES))
    from _common import HORIZON, INPUT, etth1_splits

    truth = etth1_splits().test[INPUT : INPUT + HORIZON].values()
    assert coverage == pytest.approx(float(np.mean((truth >= low) & (truth <= high))))
