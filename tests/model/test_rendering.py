"""The rasteriser: shapes, device, dtype, agreement between its torch and CPU-kernel backends and
with the matplotlib reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import windows
from timesclip_darts import line_raster
from timesclip_darts.preprocessor import instance_normalize
from timesclip_darts.rendering import (
    MatplotlibRenderer,
    clip_normalize,
    render_windows,
    variate_colors,
    vit_images,
)


def test_shapes_dtype_device_and_range() -> None:
    x = torch.randn(3, 40, 5, dtype=torch.float64)
    images = render_windows(x, 32)
    assert images.shape == (3, 5, 3, 32, 32)
    assert images.dtype == torch.float32 and images.device == x.device
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images < 0.99).any() and (images == 1.0).any()  # a line on a white background


def test_each_variate_has_its_fixed_colour() -> None:
    images = render_windows(torch.randn(2, 40, 3), 32)
    colors = variate_colors(3)
    for j in range(3):
        img = images[0, j]
        darkest = img.sum(0).flatten().argmin()
        pixel = img.flatten(1)[:, darkest]
        torch.testing.assert_close(pixel, colors[j], atol=0.08, rtol=0)


def test_constant_window_draws_a_flat_line_in_the_middle() -> None:
    images = render_windows(torch.zeros(1, 40, 1), 32)
    ink = (1 - images[0, 0].mean(0)).mean(1)  # ink per row
    assert ink.argmax().item() in (15, 16)


def test_clip_normalisation_of_white() -> None:
    white = clip_normalize(torch.ones(1, 3, 2, 2))
    expected = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    torch.testing.assert_close(white[0, :, 0, 0], expected)


@pytest.mark.parametrize(
    ("image_size", "time_steps", "line_width"),
    [(32, 96, None), (64, 96, None), (224, 96, None), (64, 512, None), (48, 20, 3.5), (16, 300, 1)],
)
def test_cpu_kernel_draws_what_the_dense_torch_field_draws(
    image_size: int, time_steps: int, line_width: float | None
) -> None:
    """Same pixels from both backends, on rough walks with flat stretches and a spike."""
    generator = torch.Generator().manual_seed(image_size + time_steps)
    x = torch.randn(3, time_steps, 4, generator=generator).cumsum(1)
    x[0, :, 1] = 2.0  # constant
    x[1, time_steps // 2, 2] += 50.0  # a spike taller than the rest
    dense = render_windows(x, image_size, line_width, backend="torch")
    kernel = render_windows(x, image_size, line_width, backend="cpu-kernel")
    torch.testing.assert_close(kernel, dense, atol=1e-4, rtol=0)
    torch.testing.assert_close(render_windows(x, image_size, line_width), kernel)  # auto on CPU


@pytest.mark.parametrize("threads", [None, 1])
def test_numpy_entry_draws_the_pixels_the_model_sees(
    etth1_train_values: torch.Tensor, threads: int | None
) -> None:
    """The torch-free runtime's pixels (line_raster.vit_pixels) are the model's, bit for bit:
    one kernel, one normalisation; and the dense torch field within 1e-4 of them."""
    x_norm, _ = instance_normalize(windows(etth1_train_values, [0, 500, 3000], 96))
    expected = vit_images(x_norm, 32).flatten(0, 1)
    pixels = line_raster.vit_pixels(x_norm.numpy(), 32, line_raster.default_line_width(32), threads)
    np.testing.assert_array_equal(pixels, expected.numpy())
    dense = clip_normalize(render_windows(x_norm, 32, backend="torch")).flatten(0, 1)
    np.testing.assert_allclose(pixels, dense.numpy(), atol=1e-4 / min(line_raster.CLIP_STD), rtol=0)


def test_cpu_kernel_leaves_torchs_thread_count_alone() -> None:
    """numba's OpenMP layer shares torch's setting: a render must not undo the user's choice."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        render_windows(torch.randn(2, 16, 3), 32, backend="cpu-kernel")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        render_windows(torch.zeros(1, 8, 1), 32, backend="gpu")


@pytest.mark.parametrize("backend", ["torch", "cpu-kernel"])
@pytest.mark.parametrize("image_size", [64, 224])
def test_agrees_with_matplotlib_on_real_etth1_windows(
    etth1_train_values: torch.Tensor, image_size: int, backend: str
) -> None:
    x, _ = instance_normalize(windows(etth1_train_values, [0, 1000, 4321, 8000], 96))
    ours = render_windows(x, image_size, backend=backend).numpy()
    reference = MatplotlibRenderer(image_size).render_windows(x)
    ink_ours, ink_ref = 1 - ours.reshape(-1), 1 - reference.reshape(-1)
    assert np.corrcoef(ink_ours, ink_ref)[0, 1] >= 0.98
    per_image = [
        np.corrcoef(1 - ours[i, j].ravel(), 1 - reference[i, j].ravel())[0, 1]
        for i in range(x.shape[0])
        for j in range(x.shape[2])
    ]
    assert min(per_image) >= 0.97


def test_rejects_single_step_windows() -> None:
    with pytest.raises(ValueError, match="at least 2 time steps"):
        render_windows(torch.zeros(1, 1, 1), 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_images_equal_cpu_images() -> None:
    x = torch.randn(4, 96, 3).cumsum(1)
    on_cpu = render_windows(x, 64)  # the CPU kernel
    on_gpu = render_windows(x.cuda(), 64)  # the dense torch field
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
