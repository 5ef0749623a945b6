"""The literature's figures that the demo and ``benchmarks/bench_accuracy.py`` print beside
their own measured rows (never mixed with them): one table, so the two cannot drift apart.

All in the long-term forecasting setting both use: ETT, all 7 variates in and out, input 96,
horizon 96, MSE and MAE on values scaled with a StandardScaler fitted on the train split.
TimesCLIP's ETTm1 row is its paper's (Dong et al., 2025, "Teaching Time Series to See and
Speak": the pretrained CLIP ViT-B/16, trained on GPU), not something this package reproduces
on CPU. The others are the published tables at input 96: TimeMixer (Wang et al., ICLR 2024),
and iTransformer, PatchTST, TimesNet and DLinear as reported at input 96 in the iTransformer
(Liu et al., ICLR 2024) and TimeMixer papers. DLinear's own paper (Zeng et al., 2023) used
input 336, which is why the demo says "input 96" (``benchmarks/README.md``, "The demo" and
"Accuracy").

No imports beyond the standard library: the demo and the benchmark read it at import time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedFigure:
    """One published row: ``model`` on ``dataset`` at ``input_length`` -> ``horizon``."""

    dataset: str
    model: str
    source: str  # what the label says in brackets: "published", or the paper's own setting
    mse: float
    mae: float
    input_length: int = 96
    horizon: int = 96

    @property
    def label(self) -> str:
        """The benchmark's label: ``"DLinear (published)"``."""
        return f"{self.model} ({self.source})"

    @property
    def label_with_input(self) -> str:
        """The demo's label: ``"DLinear (published, input 96)"``."""
        return f"{self.model} ({self.source}, input {self.input_length})"


PUBLISHED = "published"

FIGURES: tuple[PublishedFigure, ...] = (
    PublishedFigure("ETTm1", "TimesCLIP", "paper: pretrained ViT-B/16, GPU", 0.319, 0.358),
    PublishedFigure("ETTm1", "TimeMixer", PUBLISHED, 0.320, 0.357),
    PublishedFigure("ETTm1", "PatchTST", PUBLISHED, 0.329, 0.367),
    PublishedFigure("ETTm1", "iTransformer", PUBLISHED, 0.334, 0.368),
    PublishedFigure("ETTm1", "DLinear", PUBLISHED, 0.345, 0.372),
    PublishedFigure("ETTh1", "TimeMixer", PUBLISHED, 0.375, 0.400),
    PublishedFigure("ETTh1", "TimesNet", PUBLISHED, 0.384, 0.402),
    PublishedFigure("ETTh1", "DLinear", PUBLISHED, 0.386, 0.400),
    PublishedFigure("ETTh1", "iTransformer", PUBLISHED, 0.386, 0.405),
)


def figures(
    dataset: str | None = None, models: tuple[str, ...] | None = None
) -> list[PublishedFigure]:
    """The rows of ``dataset`` (all when ``None``) for ``models`` (all when ``None``), in the
    table's order."""
    return [
        f
        for f in FIGURES
        if (dataset is None or f.dataset == dataset) and (models is None or f.model in models)
    ]
