"""Contrastive alignment of the vision token and the language CLS (CLIP-style InfoNCE)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) outside distributed training."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(local: torch.Tensor) -> torch.Tensor:
    """All processes' rows, in rank order, with gradients flowing back to every process."""
    from torch.distributed._functional_collectives import all_gather_single_autograd

    # Gradients of the gathered rows are reduce-scattered (summed) back to their process.
    # Every process holds the same number of rows: Lightning's DistributedSampler pads to it.
    return all_gather_single_autograd(local.contiguous(), 0, dist.group.WORLD)


def info_nce(vision: torch.Tensor, language: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``vision`` and ``language`` (``[M, D]`` each).

    Row ``i`` of each is one variate of one window; every other row of the batch (the other
    variates of the same window and all variates of the other windows) is a negative. Both sides
    are L2-normalised; ``temperature`` divides the cosine similarities.

    Under distributed data-parallel training the negatives span the *global* batch: rows are
    gathered from every process (as CLIP does) and each process scores its own rows against all
    of them, so the loss averaged over processes equals the single-process loss on that batch.
    """
    if vision.shape != language.shape or vision.dim() != 2:
        raise ValueError(
            f"info_nce needs two [M, D] tensors of one shape, got {tuple(vision.shape)} "
            f"and {tuple(language.shape)}"
        )
    v = F.normalize(vision, dim=-1)
    t = F.normalize(language, dim=-1)
    rank, world = _world()
    all_v, all_t = (_gather(v), _gather(t)) if world > 1 else (v, t)
    labels = torch.arange(len(v), device=v.device) + rank * len(v)
    vision_to_text = F.cross_entropy(v @ all_t.T / temperature, labels)
    text_to_vision = F.cross_entropy(t @ all_v.T / temperature, labels)
    return (vision_to_text + text_to_vision) / 2
