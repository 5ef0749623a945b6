"""Instance normalisation per variate and patching of the normalised windows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from timesclip_darts.checks import MAX_ABS_VALUE  # noqa: F401  (re-exported: the bound the

# core's statistics need; the export writes it into bundles)


@dataclass
class NormStats:
    """Per-window, per-variate statistics kept to de-normalise the forecast. Shapes [B, 1, N]."""

    mean: torch.Tensor
    std: torch.Tensor


def instance_normalize(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, NormStats]:
    """Normalise each variate of each window ``x [B, T, N]`` over time (RevIN without affine)."""
    mean = x.mean(dim=1, keepdim=True)
    std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + eps)
    return (x - mean) / std, NormStats(mean.detach(), std.detach())


def instance_denormalize(y: torch.Tensor, stats: NormStats) -> torch.Tensor:
    """Undo :func:`instance_normalize` on a forecast ``y [B, N, H, ...]`` (variate-major)."""
    mean = stats.mean.transpose(1, 2)  # [B, N, 1]
    std = stats.std.transpose(1, 2)
    extra = y.dim() - 3
    mean = mean.reshape(*mean.shape, *([1] * extra))
    std = std.reshape(*std.shape, *([1] * extra))
    return y * std + mean


def n_patches(time_steps: int, patch_length: int, stride: int) -> int:
    """Number of patches PatchTST-style: the window is padded at its end by ``stride`` steps."""
    return (time_steps + stride - patch_length) // stride + 1


def make_patches(x_norm: torch.Tensor, patch_length: int, stride: int) -> torch.Tensor:
    """Cut normalised windows ``[B, T, N]`` into patches ``[B, N, P, patch_length]``.

    The end is padded by repeating the last value ``stride`` times (as PatchTST does) so the
    final observations always fall in a full patch.
    """
    series = x_norm.transpose(1, 2)  # [B, N, T]
    series = F.pad(series, (0, stride), mode="replicate")
    return series.unfold(dimension=-1, size=patch_length, step=stride)
