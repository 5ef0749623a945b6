"""Every example runs (cut down), so none of them can rot."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_core_model_example(capsys) -> None:
    runpy.run_path(str(EXAMPLES / "core_model.py"))["main"]("tiny")
    assert "forecast: (32, 7, 96)" in capsys.readouterr().out
