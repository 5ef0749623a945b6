"""The runtime's vision path: windows -> line-plot images -> the bundle's frozen ViT program.

The bundle's ``vision.pt2`` holds the ViT alone (CLIP-normalised pixels -> pooled features);
the images are drawn here by the library's own rasteriser, ``timesclip_darts.rendering`` (torch
and numpy, plus numba on CPU; importing it loads no Darts, Lightning or transformers). That is
the same code the Darts model draws with, so both paths pick the same backend per device: the
compiled kernel on CPU, which visits only the pixels near each segment and is ~10-20x faster
than the dense torch field ``torch.export`` could trace, and the dense field on CUDA. The
manifest records the rasteriser's version; a bundle drawn by another version is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class WindowVision:
    """Scaled windows ``[B, T, N]`` -> ViT features ``[B, N, F]``: instance norm, the library's
    rasteriser, CLIP pixel normalisation, then the exported ViT program."""

    def __init__(
        self,
        program: Any,
        image_size: int,
        line_width: float,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        import torch

        from timesclip_darts.preprocessor import instance_normalize
        from timesclip_darts.rendering import vit_images

        self._autocast = torch.autocast
        self._instance_normalize = instance_normalize
        self._vit_images = vit_images
        self.program = program
        self.image_size = image_size
        self.line_width = line_width
        self.autocast_dtype = autocast_dtype  # the ViT only: the images stay float32

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The images the ViT sees, ``[B*N, 3, S, S]``, CLIP-normalised."""
        x_norm, _ = self._instance_normalize(x)
        return self._vit_images(x_norm, self.image_size, self.line_width).flatten(0, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n = x.shape
        pixels = self.pixels(x)
        if self.autocast_dtype is None:
            features = self.program(pixels)
        else:
            with self._autocast(pixels.device.type, dtype=self.autocast_dtype):
                features = self.program(pixels)
        return features.reshape(b, n, -1)


def window_vision(program: Any, spec: dict, autocast_dtype: Any = None) -> WindowVision:
    """The runtime's vision path around a loaded ViT program, drawn as the manifest says."""
    return WindowVision(program, spec["image_size"], spec["line_width"], autocast_dtype)
