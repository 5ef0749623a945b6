"""Contrastive alignment of the vision token and the language CLS (CLIP-style InfoNCE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(vision: torch.Tensor, language: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``vision`` and ``language`` (``[M, D]`` each).

    Row ``i`` of each is one variate of one window; every other row of the batch (the other
    variates of the same window and all variates of the other windows) is a negative. Both sides
    are L2-normalised; ``temperature`` divides the cosine similarities.
    """
    if vision.shape != language.shape or vision.dim() != 2:
        raise ValueError(
            f"info_nce needs two [M, D] tensors of one shape, got {tuple(vision.shape)} "
            f"and {tuple(language.shape)}"
        )
    v = F.normalize(vision, dim=-1)
    t = F.normalize(language, dim=-1)
    logits = v @ t.T / temperature
    labels = torch.arange(len(v), device=v.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
