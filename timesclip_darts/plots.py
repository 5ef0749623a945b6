"""Pictures people look at: forecasts against truth, what the vision encoder saw, and which
variates each forecast drew on. matplotlib (Agg), written to PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from darts import TimeSeries  # noqa: E402

from timesclip_darts.preprocessor import instance_normalize  # noqa: E402
from timesclip_darts.rendering import render_windows  # noqa: E402


def plot_forecasts(
    history: TimeSeries,
    forecasts: dict[str, TimeSeries],
    truth: TimeSeries,
    path: str | Path,
    components: list[str] | None = None,
    title: str = "",
) -> Path:
    """One panel per component: the input window, the truth and each labelled forecast
    (probabilistic ones as median and 90 % band)."""
    components = components or list(truth.components)
    fig, axes = plt.subplots(
        len(components), 1, figsize=(9, 2.2 * len(components)), sharex=True, squeeze=False
    )
    for ax, name in zip(axes[:, 0], components, strict=True):
        ax.plot(history.time_index, history[name].values()[:, 0], color="0.5", lw=1, label="input")
        ax.plot(truth.time_index, truth[name].values()[:, 0], color="black", lw=1.2, label="truth")
        for label, forecast in forecasts.items():
            if forecast.is_stochastic:
                low, high = forecast[name].quantile(0.05), forecast[name].quantile(0.95)
                ax.fill_between(
                    forecast.time_index,
                    low.values()[:, 0],
                    high.values()[:, 0],
                    alpha=0.25,
                    label=f"{label} 90%",
                )
                values = forecast[name].quantile(0.5).values()[:, 0]
            else:
                values = forecast[name].values()[:, 0]
            ax.plot(forecast.time_index, values, lw=1.2, label=label)
        ax.set_ylabel(name)
    axes[0, 0].legend(loc="upper left", fontsize=7, ncol=4)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_vision_inputs(
    window: np.ndarray,
    components: list[str],
    image_size: int,
    path: str | Path,
    line_width: float | None = None,
) -> Path:
    """The images the vision encoder sees for one window ``[T, N]`` (exactly the torch
    rasteriser's output, before CLIP's pixel normalisation)."""
    x_norm, _ = instance_normalize(torch.as_tensor(window, dtype=torch.float32)[None])
    images = render_windows(x_norm, image_size, line_width)[0].permute(0, 2, 3, 1).numpy()
    fig, axes = plt.subplots(
        1, len(components), figsize=(1.8 * len(components), 2.1), squeeze=False
    )
    for ax, image, name in zip(axes[0], images, components, strict=True):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(
        f"what the vision encoder sees ({image_size}x{image_size} px per variate)", fontsize=9
    )
    return _save(fig, path)


def plot_selection_attention(
    attention: np.ndarray, components: list[str], path: str | Path
) -> Path:
    """Variate-selection attention ``[N, N]``: row i = how much variate i's forecast draws on
    each variate."""
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(components), 1 + 0.5 * len(components)))
    image = ax.imshow(attention, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(components)), components, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(components)), components, fontsize=8)
    ax.set_xlabel("attends to (key)")
    ax.set_ylabel("forecast of (query)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_metric_bars(
    values: dict[str, dict[str, tuple[float, float]]],
    metric: str,
    path: str | Path,
    highlight: str = "TimesCLIP",
) -> Path:
    """One panel per dataset of ``values[dataset][model] = (mean, spread)``: horizontal bars,
    best (lowest) at the top, the spread as error bars and the value written on each bar; rows
    whose name starts with ``highlight`` in colour, the others grey, so the model in question
    stands out among however many rows there are."""
    datasets = list(values)
    height = 0.9 + 0.3 * max(len(rows) for rows in values.values())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), height), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = sorted(values[dataset].items(), key=lambda kv: kv[1][0], reverse=True)
        names = [name for name, _ in rows]
        means = np.array([mean for _, (mean, _) in rows])
        spreads = [spread for _, (_, spread) in rows]
        colors = ["tab:red" if n.startswith(highlight) else "tab:gray" for n in names]
        ax.barh(names, means, xerr=spreads, color=colors, capsize=2)
        for y, mean in enumerate(means):
            ax.text(mean, y, f" {mean:.3f}", va="center", fontsize=7)
        ax.set_xlim(0, means.max() * 1.18)
        ax.set_title(dataset)
        ax.set_xlabel(metric)
        ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
