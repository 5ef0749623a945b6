"""The pixels TimesCLIP's ViT sees, with numpy and numba only: the style constants and the CPU
rasteriser kernel.

:mod:`timesclip_darts.rendering` (torch) draws with this kernel on CPU and with a dense torch
field elsewhere; the torch-free runtime draws with :func:`vit_pixels`. One kernel, so both
paths give the same pixels. The kernel visits only the pixels inside each segment's bounding
box (plus the line's radius) and keeps, per pixel, the nearest segment's anti-aliased coverage
``clamp(line_width/2 + 0.5 - distance, 0, 1)``: line plots with round caps and joins on white.
"""

from __future__ import annotations

import numpy as np

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
# Version of the pixels drawn here and by rendering.py: exported bundles record it and the
# runtime refuses a bundle made with another. Bump it when any pixel changes.
RENDERER_VERSION = 1


def default_line_width(image_size: int) -> float:
    """Line width in pixels: 2 px at CLIP's 224, never thinner than 1 px."""
    return max(1.0, image_size / 112.0)


def variate_colors(n_variates: int) -> np.ndarray:
    """The fixed colour of each variate, ``[N, 3]`` float32."""
    return np.array([PALETTE[i % len(PALETTE)] for i in range(n_variates)], dtype=np.float32)


_KERNEL = None


def _kernel():
    """The rasteriser kernel, compiled on first use (about a second)."""
    global _KERNEL
    if _KERNEL is None:
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

        _KERNEL = draw_kernel
    return _KERNEL


def draw_lines(
    values: np.ndarray,
    colors: np.ndarray,
    image_size: int,
    line_width: float,
    threads: int | None = None,
) -> np.ndarray:
    """Series ``[M, T]`` (float32) in colours ``[M, 3]`` -> RGB images ``[M, 3, S, S]`` in
    [0, 1], on ``threads`` numba threads (default: numba's own count)."""
    import numba

    values = np.ascontiguousarray(values, dtype=np.float32)
    colors = np.ascontiguousarray(colors, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"expected series [M, T] with T >= 2, got shape {values.shape}")
    out = np.empty((values.shape[0], 3, image_size, image_size), dtype=np.float32)
    if threads is None:
        _kernel()(values, image_size, float(line_width), colors, out)
        return out
    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        _kernel()(values, image_size, float(line_width), colors, out)
    finally:
        numba.set_num_threads(before)
    return out


def clip_normalize(images: np.ndarray) -> np.ndarray:
    """CLIP's pixel normalisation of RGB images in [0, 1] (channel axis at -3), in place."""
    mean = np.array(CLIP_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(CLIP_STD, dtype=np.float32)[:, None, None]
    images -= mean
    images /= std
    return images


def vit_pixels(
    x_norm: np.ndarray, image_size: int, line_width: float, threads: int | None = None
) -> np.ndarray:
    """The CLIP-normalised images of instance-normalised windows ``[B, T, N]`` ->
    ``[B*N, 3, S, S]`` (window-major, as the ViT program takes them)."""
    b, t, n = x_norm.shape
    values = np.ascontiguousarray(np.swapaxes(x_norm, 1, 2), dtype=np.float32).reshape(b * n, t)
    colors = np.tile(variate_colors(n), (b, 1))
    return clip_normalize(draw_lines(values, colors, image_size, line_width, threads))
