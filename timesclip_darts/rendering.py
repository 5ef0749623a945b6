"""Line-plot images of normalised windows: a batched torch rasteriser and a matplotlib reference.

Each variate of each window becomes its own ``image_size``² RGB picture: a line plot on a white
background, no axes, one fixed colour per variate (tab10, cycled), the x axis spanning the window
exactly and the y axis spanning the window's range plus 5 % on each side (matplotlib's default
margin). The torch rasteriser draws anti-aliased lines with round caps and joins from a distance
field: a pixel's coverage is ``clamp(line_width/2 + 0.5 - distance, 0, 1)``, where the distance is
to the nearest segment. Because x increases monotonically along a series, only the few segments
whose x-range is near a pixel column can touch it, so each column looks at ``2K+1`` candidate
segments instead of all ``T-1``; the work is ``O(B·N·S²·K)`` tensor ops with no Python loop over
windows or variates. On CPU the same coverage is computed by a compiled kernel (numba, in
:mod:`timesclip_darts.line_raster` with the style constants, numpy only) that visits only the
pixels inside each segment's bounding box, many times less work than the dense field; tests hold
the two within 1e-4 of each other. The dense torch path serves CUDA and graph exports. The
export's runtime draws with this module (torch vision path) or with ``line_raster`` directly
(ONNX vision path, no torch).
The matplotlib renderer uses the same limits, colours and line style and is the reference the
tests compare against.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from timesclip_darts import line_raster
from timesclip_darts.line_raster import (  # noqa: F401  (the style, defined once there)
    CLIP_MEAN,
    CLIP_STD,
    MIN_Y_RANGE,
    PALETTE,
    RENDERER_VERSION,
    Y_MARGIN,
    default_line_width,
)

# Bound on the elements of one distance tensor, to keep peak memory flat for large batches.
_MAX_ELEMENTS_PER_CHUNK = 1 << 22


def variate_colors(n_variates: int) -> torch.Tensor:
    """The fixed colour of each variate, ``[N, 3]``."""
    return torch.from_numpy(line_raster.variate_colors(n_variates))


def y_limits(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper y limits of each series ``[M, T]`` (range plus 5 % margins)."""
    lo, hi = values.amin(dim=-1), values.amax(dim=-1)
    span = (hi - lo).clamp_min(MIN_Y_RANGE)
    mid = (hi + lo) / 2
    return mid - span * (0.5 + Y_MARGIN), mid + span * (0.5 + Y_MARGIN)


def _coverage(values: torch.Tensor, image_size: int, line_width: float) -> torch.Tensor:
    """Anti-aliased line coverage in [0, 1] of each series ``[M, T]`` -> ``[M, S, S]``."""
    _, t = values.shape
    s = image_size
    device = values.device
    ylo, yhi = y_limits(values)
    # Vertex positions in pixel units; pixel (row i, column j) has its centre at (j+.5, i+.5).
    xs = torch.linspace(0.0, float(s), t, device=device)
    ys = (1.0 - (values - ylo[:, None]) / (yhi - ylo)[:, None]) * s
    dx = s / (t - 1)
    reach = math.ceil((line_width / 2 + 0.5) / dx)
    centres = torch.arange(s, device=device, dtype=values.dtype) + 0.5
    first = torch.clamp((centres / dx).floor().long(), 0, t - 2)
    offsets = torch.arange(-reach, reach + 1, device=device)
    seg = torch.clamp(first[:, None] + offsets[None, :], 0, t - 2)  # [S_cols, C]
    # Per column and candidate segment A->B: everything that does not depend on the row.
    ex = xs[seg + 1] - xs[seg]  # [S_cols, C]
    px = centres[:, None] - xs[seg]  # [S_cols, C]
    ay = ys[:, seg]  # [M, S_cols, C]
    ey = ys[:, seg + 1] - ay
    inv_len2 = 1.0 / (ex * ex + ey * ey).clamp_min(1e-12)
    proj_x = (px * ex) * inv_len2  # [M, S_cols, C]
    # Per pixel: distance from (column centre, row centre) to each candidate segment.
    py = centres[None, :, None, None] - ay[:, None]  # [M, S_rows, S_cols, C]
    h = (proj_x[:, None] + py * (ey * inv_len2)[:, None]).clamp_(0.0, 1.0)
    dist2 = (px - h * ex).square_() + (py - h * ey[:, None]).square_()
    dist = dist2.amin(dim=-1).sqrt_()
    return (line_width / 2 + 0.5 - dist).clamp_(0.0, 1.0)


def _draw_cpu(
    values: torch.Tensor, colors: torch.Tensor, image_size: int, line_width: float
) -> torch.Tensor:
    """Series ``[M, T]`` in colours ``[M, 3]`` -> RGB images ``[M, 3, S, S]`` by the compiled
    CPU kernel (:mod:`timesclip_darts.line_raster`), on as many threads as torch uses."""
    torch_threads = torch.get_num_threads()
    try:
        images = line_raster.draw_lines(
            values.numpy(), colors.numpy(), image_size, line_width, threads=torch_threads
        )
    finally:
        # numba's OpenMP layer shares torch's thread pool setting: restoring numba's count
        # would otherwise leave torch on it (a user's torch.set_num_threads(1) silently undone).
        torch.set_num_threads(torch_threads)
    return torch.from_numpy(images)


def render_windows(
    x_norm: torch.Tensor,
    image_size: int,
    line_width: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Draw each variate of each window ``[B, T, N]`` as an RGB image ``[B, N, 3, S, S]``.

    Pixel values are in [0, 1]. Runs on the input's device; the images are float32 whatever
    the input dtype. ``backend``: ``"torch"`` (the dense field, any device), ``"cpu-kernel"``
    (the compiled kernel, CPU tensors) or ``"auto"`` (the kernel on CPU, torch elsewhere and
    while a graph is exported, which cannot trace the kernel).
    """
    b, t, n = x_norm.shape
    if t < 2:
        raise ValueError(f"a line plot needs at least 2 time steps, got {t}")
    if backend not in ("auto", "torch", "cpu-kernel"):
        raise ValueError(f"unknown backend '{backend}'; use 'auto', 'torch' or 'cpu-kernel'")
    line_width = default_line_width(image_size) if line_width is None else float(line_width)
    values = x_norm.detach().to(torch.float32).transpose(1, 2).reshape(b * n, t)
    colors = variate_colors(n).to(values.device).repeat(b, 1)  # [B*N, 3]
    on_cpu = values.device.type == "cpu"
    if backend == "cpu-kernel" and not on_cpu:
        raise ValueError(f"the cpu-kernel backend needs CPU tensors, got {values.device}")
    # Exports trace the dense torch field: torch.export (under `torch.onnx.export(dynamo=True)`,
    # hence Darts' `to_onnx`) cannot trace into numba code.
    exporting = torch.compiler.is_exporting()
    if backend == "cpu-kernel" or (backend == "auto" and on_cpu and not exporting):
        images = _draw_cpu(values.contiguous(), colors, image_size, line_width)
    else:
        chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // (image_size * image_size))
        alpha = torch.cat(
            [_coverage(part, image_size, line_width) for part in values.split(chunk)]
        )  # [B*N, S, S]
        images = 1.0 - alpha[:, None] * (1.0 - colors[:, :, None, None])
    return images.reshape(b, n, 3, image_size, image_size)


def clip_normalize(images: torch.Tensor) -> torch.Tensor:
    """CLIP's pixel normalisation of RGB images in [0, 1] (channel axis at -3)."""
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype)[:, None, None]
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype)[:, None, None]
    return (images - mean) / std


def vit_images(
    x_norm: torch.Tensor, image_size: int, line_width: float | None = None
) -> torch.Tensor:
    """The images a CLIP ViT sees for windows ``[B, T, N]``: :func:`render_windows`, then
    :func:`clip_normalize` -> ``[B, N, 3, S, S]``. The model and the export's runtime share it."""
    return clip_normalize(render_windows(x_norm, image_size, line_width))


class MatplotlibRenderer:
    """Reference renderer: the same pictures drawn by matplotlib (Agg), one figure reused.

    Slow (one draw per image) and CPU-only; for tests, pictures people look at and benchmarks.
    """

    def __init__(self, image_size: int, line_width: float | None = None, dpi: int = 100) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.image_size = image_size
        self.line_width = default_line_width(image_size) if line_width is None else line_width
        self.dpi = dpi
        self.figure = Figure(figsize=(image_size / dpi, image_size / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_axes((0.0, 0.0, 1.0, 1.0))
        self.axes.set_axis_off()
        (self.line,) = self.axes.plot(
            [0.0, 1.0],
            [0.0, 1.0],
            linewidth=self.line_width * 72.0 / dpi,
            solid_capstyle="round",
            solid_joinstyle="round",
            antialiased=True,
            snap=False,
        )

    def render_series(self, values: np.ndarray, variate_index: int) -> np.ndarray:
        """One series ``[T]`` -> RGB image ``[3, S, S]`` in [0, 1]."""
        values = np.asarray(values, dtype=np.float64)
        t = len(values)
        lo, hi = (v.item() for v in y_limits(torch.from_numpy(values)[None]))
        self.line.set_data(np.arange(t), values)
        self.line.set_color(PALETTE[variate_index % len(PALETTE)])
        self.axes.set_xlim(0, t - 1)
        self.axes.set_ylim(lo, hi)
        self.canvas.draw()
        rgba = np.asarray(self.canvas.buffer_rgba(), dtype=np.float32) / 255.0
        return rgba[..., :3].transpose(2, 0, 1).copy()

    def render_windows(self, x_norm: np.ndarray | torch.Tensor) -> np.ndarray:
        """Windows ``[B, T, N]`` -> images ``[B, N, 3, S, S]`` in [0, 1], as the torch renderer."""
        x = (
            x_norm.detach().cpu().numpy()
            if isinstance(x_norm, torch.Tensor)
            else np.asarray(x_norm)
        )
        b, _, n = x.shape
        out = np.empty((b, n, 3, self.image_size, self.image_size), dtype=np.float32)
        for i in range(b):
            for j in range(n):
                out[i, j] = self.render_series(x[i, :, j], j)
        return out
