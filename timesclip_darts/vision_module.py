"""Vision branch: normalised windows -> images -> frozen CLIP ViT -> trainable projection."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionModel

from timesclip_darts.rendering import clip_normalize, render_windows


class VisionModule(nn.Module):
    """One vision token per variate from a **frozen** CLIP vision transformer.

    The backbone never receives gradients and stays in eval mode even when the module is
    trained (``train()`` is overridden), so dropout and the like never change its features: the
    same window always gives the same features, which is what makes them cacheable.
    ``encode`` (render + ViT) and ``project`` (trainable) are separate so the export can run the
    first in torch and put the second into the fusion graph.
    """

    def __init__(
        self,
        backbone: CLIPVisionModel,
        d_model: int,
        image_size: int,
        line_width: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.image_size = image_size
        self.line_width = line_width
        self.feature_dim = backbone.config.hidden_size
        self.interpolate_pos = image_size != backbone.config.image_size
        self.projection = nn.Linear(self.feature_dim, d_model)

    def train(self, mode: bool = True) -> VisionModule:
        super().train(mode)
        self.backbone.eval()
        return self

    def render(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Images the ViT sees, ``[B, N, 3, S, S]``, CLIP-normalised."""
        return clip_normalize(render_windows(x_norm, self.image_size, self.line_width))

    @torch.no_grad()
    def encode(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Frozen ViT features (pooled, post-LayerNorm CLS) of each variate: ``[B, N, F]``."""
        b, _, n = x_norm.shape
        images = self.render(x_norm).flatten(0, 1)
        dtype = next(self.backbone.parameters()).dtype
        out = self.backbone(
            pixel_values=images.to(dtype), interpolate_pos_encoding=self.interpolate_pos
        )
        return out.pooler_output.to(x_norm.dtype).reshape(b, n, -1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Trainable projection of ViT features to vision tokens ``[B, N, d_model]``."""
        return self.projection(features)
