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

    Rows are stored as compact host copies (:func:`host_row`): whatever device computed them,
    the cache never holds accelerator memory, a row never keeps its whole batch alive, and
    ``used_bytes`` is the memory actually held.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def keys(x_norm: torch.Tensor) -> list[bytes]:
        """One digest per window of ``x_norm [B, T, N]``, for any dtype (bfloat16 included)."""
        host = x_norm.detach().cpu().contiguous()
        shape = f"{host.dtype}{tuple(host.shape[1:])}".encode()
        raw = host.reshape(host.shape[0], -1).view(torch.uint8).numpy()
        return [hashlib.blake2b(row.tobytes() + shape, digest_size=16).digest() for row in raw]

    def get(self, key: bytes) -> torch.Tensor | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: torch.Tensor) -> None:
        row = host_row(value)
        size = row.numel() * row.element_size()
        if key in self._entries or size > self.max_bytes:
            return
        self._entries[key] = row
        self.used_bytes += size
        while self.used_bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.used_bytes -= evicted.numel() * evicted.element_size()

    def clear(self) -> None:
        """Drop every entry (the counters stay, for reports)."""
        self._entries.clear()
        self.used_bytes = 0


def host_row(value: torch.Tensor) -> torch.Tensor:
    """A detached host copy of ``value`` owning exactly its own elements (never a view into a
    larger tensor, never on an accelerator)."""
    return value.detach().to("cpu", copy=True).contiguous().clone()


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
            self.cache.put(keys[i], features)
        return gather_features(found, fresh)

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
