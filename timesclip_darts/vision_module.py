"""Vision branch: normalised windows -> images -> frozen CLIP ViT -> trainable projection."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn
from transformers import CLIPVisionModel

from timesclip_darts.rendering import vit_images


class FeatureCache:
    """Frozen-ViT features by window content: a least-recently-used map bounded in bytes.

    The ViT is frozen and in eval mode, so a window's features never change; after the first
    epoch every training and validation window is a hit and skips rendering and the ViT. Keys
    are a 128-bit BLAKE2 digest of the normalised window's bytes (and its dtype and shape), so
    a hit returns exactly the features a miss computed, on any process of a DDP job.

    Rows live in one host tensor (a slab, grown by doubling up to the budget), not as a small
    allocation each: thousands of small long-lived tensors between a batch's large temporaries
    would fragment the C heap (RSS grows by ~40 MB per training batch while such a cache holds
    5 MB, small preset on ETTh1). So the cache never holds accelerator memory, a row never keeps
    its batch alive, and ``used_bytes`` (the slab) is the memory actually held, at most
    ``max_bytes``. Rows of another shape or dtype than the slab's start a new slab.
    """

    _FIRST_ROWS = 1024  # the slab's first size in rows; it doubles from there

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._slots: OrderedDict[bytes, int] = OrderedDict()
        self._slab: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def used_bytes(self) -> int:
        """Bytes held by the slab (its capacity, filled or not)."""
        slab = self._slab
        return 0 if slab is None else slab.numel() * slab.element_size()

    @staticmethod
    def keys(x_norm: torch.Tensor) -> list[bytes]:
        """One digest per window of ``x_norm [B, T, N]``, for any dtype (bfloat16 included)."""
        host = x_norm.detach().cpu().contiguous()
        shape = f"{host.dtype}{tuple(host.shape[1:])}".encode()
        raw = host.reshape(host.shape[0], -1).view(torch.uint8).numpy()
        return [hashlib.blake2b(row.tobytes() + shape, digest_size=16).digest() for row in raw]

    def get(self, key: bytes) -> torch.Tensor | None:
        """The row stored under ``key`` (a view into the slab: copy it before the next put)."""
        slot = self._slots.get(key)
        if slot is None:
            self.misses += 1
            return None
        self.hits += 1
        self._slots.move_to_end(key)
        return self._slab[slot]

    def put(self, key: bytes, value: torch.Tensor) -> None:
        """Copy ``value`` into the slab under ``key``, evicting the least recently used row
        when the budget is full; a row larger than the whole budget is not kept."""
        if key in self._slots:
            return
        row = value.detach()
        slab = self._slab
        if slab is None or slab.shape[1:] != row.shape or slab.dtype != row.dtype:
            max_rows = self._rows_in_budget(row)
            if max_rows == 0:
                return
            self._slots.clear()
            rows = min(self._FIRST_ROWS, max_rows)
            self._slab = torch.empty((rows, *row.shape), dtype=row.dtype, device="cpu")
        slot = self._free_slot()
        self._slab[slot].copy_(row)
        self._slots[key] = slot

    def _rows_in_budget(self, row: torch.Tensor) -> int:
        return self.max_bytes // (row.numel() * row.element_size())

    def _free_slot(self) -> int:
        """A slot to write: the next unused one, after growing the slab if it is full and
        under budget, else the least recently used row's."""
        used, capacity = len(self._slots), self._slab.shape[0]
        max_rows = self._rows_in_budget(self._slab[0])
        if used == capacity and capacity < max_rows:
            grown = torch.empty(
                (min(2 * capacity, max_rows), *self._slab.shape[1:]),
                dtype=self._slab.dtype,
            )
            grown[:capacity].copy_(self._slab)
            self._slab = grown
            capacity = grown.shape[0]
        if used < capacity:  # slots stay dense: rows are evicted only from a full slab
            return used
        return self._slots.popitem(last=False)[1]

    def clear(self) -> None:
        """Drop every entry and the slab (the counters stay, for reports)."""
        self._slots.clear()
        self._slab = None


def gather_features(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Stack per-window feature rows (cached host rows and fresh device rows alike) on the
    device and in the dtype of ``like``."""
    return torch.stack([r.to(device=like.device, dtype=like.dtype) for r in rows])


class VisionModule(nn.Module):
    """One vision token per variate from a **frozen** CLIP vision transformer.

    The backbone never receives gradients and stays in eval mode even when the module is
    trained (``train()`` is overridden), so dropout and the like never change its features: the
    same window always gives the same features, which is what makes them cacheable.
    ``trainable=True`` (an ablation) lets the ViT train; it still runs in eval mode and gets no
    cache.
    ``encode`` (render + ViT) and ``project`` (trainable) are separate so the export can run the
    first in torch and put the second into the fusion graph.
    """

    def __init__(
        self,
        backbone: CLIPVisionModel,
        d_model: int,
        image_size: int,
        line_width: float | None = None,
        cache_mb: float = 0.0,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.trainable = trainable
        self.backbone.requires_grad_(trainable)
        self.backbone.eval()
        self.image_size = image_size
        self.line_width = line_width
        self.feature_dim = backbone.config.hidden_size
        self.interpolate_pos = image_size != backbone.config.image_size
        self.projection = nn.Linear(self.feature_dim, d_model)
        cached = cache_mb > 0 and not trainable
        self.cache = FeatureCache(int(cache_mb * 2**20)) if cached else None
        self.cache_enabled = False  # on only while training (see `use_cache`)

    def train(self, mode: bool = True) -> VisionModule:
        super().train(mode)
        self.backbone.eval()
        return self

    def use_cache(self, enabled: bool) -> None:
        """Use the feature cache (training) or not; turning it off empties it, so inference
        never depends on what was computed before and no memory stays held after ``fit``."""
        self.cache_enabled = enabled and self.cache is not None
        if not enabled and self.cache is not None:
            self.cache.clear()

    def render(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Images the ViT sees, ``[B, N, 3, S, S]``, CLIP-normalised."""
        return vit_images(x_norm, self.image_size, self.line_width)

    def encode(self, x_norm: torch.Tensor) -> torch.Tensor:
        """ViT features (pooled, post-LayerNorm CLS) of each variate: ``[B, N, F]``.

        No gradients unless the ViT is trainable. With a cache, only windows not seen before
        are rendered and encoded.
        """
        if self.trainable:
            return self._encode(x_norm)
        with torch.no_grad():
            return self._encode_frozen(x_norm)

    def _encode_frozen(self, x_norm: torch.Tensor) -> torch.Tensor:
        if self.cache is None or not self.cache_enabled:
            return self._encode(x_norm)
        keys = self.cache.keys(x_norm)
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if not missing:
            return gather_features(found, x_norm)
        fresh = self._encode(x_norm[missing])
        for i, features in zip(missing, fresh, strict=True):
            found[i] = features
        out = gather_features(found, fresh)  # before any put can overwrite a hit's slot
        for i in missing:
            self.cache.put(keys[i], out[i])
        return out

    def _encode(self, x_norm: torch.Tensor) -> torch.Tensor:
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
