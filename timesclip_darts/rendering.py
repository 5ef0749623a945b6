"""Line-plot images of normalised windows: a batched torch rasteriser and a matplotlib reference.

Each variate of each window becomes its own ``image_size``² RGB picture: a line plot on a white
background, no axes, one fixed colour per variate (tab10, cycled), the x axis spanning the window
exactly and the y axis spanning the window's range plus 5 % on each side (matplotlib's default
margin). The torch rasteriser draws anti-aliased lines with round caps and joins from a distance
field: a pixel's coverage is ``clamp(line_width/2 + 0.5 - distance, 0, 1)``, where the distance is
to the nearest segment. Because x increases monotonically along a series, only the few segments
whose x-range is near a pixel column can touch it, so each column looks at ``2K+1`` candidate
segments instead of all ``T-1``; the work is ``O(B·N·S²·K)`` tensor ops with no Python loop over
windows or variates. On CPU the same coverage is computed by a compiled kernel (numba, which Darts
already depends on) that visits only the pixels inside each segment's bounding box, many times
less work than the dense field; tests hold the two within 1e-4 of each other. The dense torch
path serves CUDA. The export's runtime draws with this module too (bundles hold only the ViT).
The matplotlib renderer uses the same limits, colours and line style and is the reference the
tests compare against.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# matplotlib's tab10, as RGB in [0, 1].
PALETTE: tuple[tuple[float, float, float], ...] = tuple(
    tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[misc]
    for h in (
        "1f77b4",
        "ff7f0e",
        "2ca02c",
        "d62728",
        "9467bd",
        "8c564b",
        "e377c2",
        "7f7f7f",
        "bcbd22",
        "17becf",
    )
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Y_MARGIN = 0.05
MIN_Y_RANGE = 1e-3
# Version of the pixels this module draws: exported bundles record it and the runtime, which
# draws with this module, refuses a bundle made with another. Bump it when any pixel changes.
RENDERER_VERSION = 1
# Bound on the elements of one distance tensor, to keep peak memory flat for large batches.
_MAX_ELEMENTS_PER_CHUNK = 1 << 22


def default_line_width(image_size: int) -> float:
    """Line width in pixels: 2 px at CLIP's 224, never thinner than 1 px."""
    return max(1.0, image_size / 112.0)


def variate_colors(n_variates: int) -> torch.Tensor:
    """The fixed colour of each variate, ``[N, 3]``."""
    return torch.tensor([PALETTE[i % len(PALETTE)] for i in range(n_variates)])


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


_CPU_KERNEL = None


def _cpu_kernel():
    """The CPU rasteriser kernel, compiled on first use (about a second)."""
    global _CPU_KERNEL
    if _CPU_KERNEL is None:
        import numba

        @numba.njit(parallel=True, nogil=True, cache=False)
        def draw_kernel(values, image_size, line_width, colors, out):  # pragma: no cover
            n_series, t = values.shape
            s = image_size
            radius = line_width / 2 + 0.5
            radius2 = radius * radius
            dx = s / (t - 1)
            for m in numba.prange(n_series):
                series = values[m]
                lo, hi = series.min(), series.max()
                span = max(hi - lo, MIN_Y_RANGE)
                ylo = (hi + lo) / 2 - span * (0.5 + Y_MARGIN)
                height = span * (1.0 + 2 * Y_MARGIN)
                image = out[m]
                image[:] = 1.0  # white
                ink = 1.0 - colors[m]
                for k in range(t - 1):
                    ax, bx = k * dx, (k + 1) * dx
                    ay = (1.0 - (series[k] - ylo) / height) * s
                    by = (1.0 - (series[k + 1] - ylo) / height) * s
                    ex, ey = bx - ax, by - ay
                    inv_len2 = 1.0 / max(ex * ex + ey * ey, 1e-12)
                    # Pixels whose centre (j + .5, i + .5) lies in the segment's box +- radius.
                    j0 = max(0, int(np.ceil(min(ax, bx) - radius - 0.5)))
                    j1 = min(s - 1, int(np.floor(max(ax, bx) + radius - 0.5)))
                    i0 = max(0, int(np.ceil(min(ay, by) - radius - 0.5)))
                    i1 = min(s - 1, int(np.floor(max(ay, by) + radius - 0.5)))
                    for i in range(i0, i1 + 1):
                        py = i + 0.5 - ay
                        for j in range(j0, j1 + 1):
                            px = j + 0.5 - ax
                            h = min(max((px * ex + py * ey) * inv_len2, 0.0), 1.0)
                            qx, qy = px - h * ex, py - h * ey
                            dist2 = qx * qx + qy * qy
                            if dist2 < radius2:  # skips the sqrt for the many blank pixels
                                cover = min(radius - np.sqrt(dist2), 1.0)
                                # Pixel = 1 - coverage * (1 - colour) falls as coverage grows,
                                # so the minimum keeps the nearest segment's coverage.
                                for c in range(3):
                                    image[c, i, j] = min(image[c, i, j], 1.0 - cover * ink[c])

        _CPU_KERNEL = draw_kernel
    return _CPU_KERNEL


def _draw_cpu(
    values: torch.Tensor, colors: torch.Tensor, image_size: int, line_width: float
) -> torch.Tensor:
    """Series ``[M, T]`` in colours ``[M, 3]`` -> RGB images ``[M, 3, S, S]`` by the compiled
    CPU kernel, on as many threads as torch uses."""
    import numba

    out = np.empty((values.shape[0], 3, image_size, image_size), dtype=np.float32)
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        _cpu_kernel()(values.numpy(), image_size, float(line_width), colors.numpy(), out)
    finally:
        numba.set_num_threads(numba_threads)
        # numba's OpenMP layer shares torch's thread pool setting: restoring numba's count
        # would otherwise leave torch on it (a user's torch.set_num_threads(1) silently undone).
        torch.set_num_threads(torch_threads)
    return torch.from_numpy(out)


def render_windows(
    x_norm: torch.Tensor,
    image_size: int,
    line_width: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Draw each variate of each window ``[B, T, N]`` as an RGB image ``[B, N, 3, S, S]``.

    Pixel values are in [0, 1]. Runs on the input's device; the images are float32 whatever
    the input dtype. ``backend``: ``"torch"`` (the dense field, any device), ``"cpu-kernel"``
    (the compiled kernel, CPU tensors) or ``"auto"`` (the kernel on CPU, torch elsewhere).
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
    if backend == "cpu-kernel" or (backend == "auto" and on_cpu):
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
