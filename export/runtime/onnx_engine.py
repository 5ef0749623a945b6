"""The ONNX vision path: scaled windows -> forecasts with numpy, numba and ONNX Runtime only.

Per batch of windows: the text graph (which also returns each window's instance-norm mean and
std), the windows normalised with those statistics, the library's numba rasteriser
(:func:`timesclip_darts.line_raster.vit_pixels`, the kernel the model draws with on CPU),
``vision.onnx`` (the ViT), then the fusion graph. Nothing here imports torch, so a host without
it (``pip install timesclip-darts[cpu]``) can forecast from a bundle. ONNX Runtime runs on its CPU
provider, or on its CUDA provider when asked for and present (the rasteriser stays on the host).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from timesclip_export.errors import DeviceError
from timesclip_export.runtime.engine import Engine, session_options
from timesclip_export.runtime.placement import (
    CUDA_PROVIDER,
    Placement,
    open_session,
)

from timesclip_darts import line_raster


def onnx_placement(requested: str | Placement, providers: list[str]) -> Placement:
    """Where the ONNX path's graphs run: ``cpu``; ``cuda``/``cuda:N`` on onnxruntime's CUDA
    provider (:class:`DeviceError` without it); ``auto``: CUDA when that provider is present."""
    if isinstance(requested, Placement):
        if requested.split:
            raise DeviceError("the ONNX vision path runs whole on one device; no mixed placement")
        return requested
    has_cuda = CUDA_PROVIDER in providers
    if requested == "cpu":
        return Placement("cpu", "cpu", "CPU requested")
    if requested == "auto":
        if has_cuda:
            return Placement("cuda:0", "cuda:0", f"onnxruntime has {CUDA_PROVIDER}")
        return Placement("cpu", "cpu", f"CUDA not used: onnxruntime has no {CUDA_PROVIDER}")
    if requested == "cuda" or (requested.startswith("cuda:") and requested[5:].isdigit()):
        if not has_cuda:
            raise DeviceError(
                f"device '{requested}' requested but onnxruntime has no {CUDA_PROVIDER} "
                "(install onnxruntime-gpu)"
            )
        device = "cuda:0" if requested == "cuda" else requested
        return Placement(device, device, "CUDA requested in onnxruntime")
    raise DeviceError(f"unknown device '{requested}'; use auto, cpu, cuda or cuda:N")


class OnnxEngine(Engine):
    """The ONNX vision path's :class:`~timesclip_export.runtime.engine.Engine`: the bundle's
    three ONNX graphs, opened from ``contents`` (file name -> the bytes the forecaster read and
    checked)."""

    vision = "onnx"

    def __init__(
        self,
        contents: Mapping[str, bytes],
        manifest: dict,
        graph_files: dict[str, str],
        device: str | Placement,
        *,
        vision_batch: int | None,
        onnx_threads: int | None,
    ) -> None:
        import onnxruntime as ort

        spec = manifest["model"]
        placement = onnx_placement(device, ort.get_available_providers())
        super().__init__(manifest, placement, vision_batch, onnx_threads)
        self._sessions = {
            part: open_session(
                contents[graph_files[part]],
                session_options(onnx_threads),
                self.placement,
                None,
                ort.InferenceSession,
                name=graph_files[part],
            )
            for part in ("vision", "text", "fusion")
        }
        self._image_size = int(spec["image_size"])
        self._line_width = float(spec["line_width"])

    def describe(self) -> str:
        """Where this runs, in words."""
        provider = self._sessions["text"].get_providers()[0]
        return (
            f"{self.placement.mode.upper()}: vision in onnxruntime {provider} "
            f"(vision.onnx, numba rasteriser on the host), graphs in onnxruntime {provider} "
            f"({self.placement.reason})"
        )

    def forecast(self, values: np.ndarray, stride: int | None, batch_size: int) -> np.ndarray:
        """Forecasts after scaled windows ``[W, T, N]`` (``stride`` None) or after every
        ``stride``-th full window of a scaled series ``[rows, N]``."""
        if stride is not None:
            view = np.lib.stride_tricks.sliding_window_view(values, self._icl, axis=0)
            values = view[::stride].transpose(0, 2, 1)  # [W, T, N], a view
        parts = [
            self._run_batch(np.ascontiguousarray(values[start : start + batch_size]))
            for start in range(0, len(values), batch_size)
        ]
        if not parts:
            return np.empty((0, *self._out_shape), np.float32)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _run_batch(self, windows: np.ndarray) -> np.ndarray:
        """Scaled windows ``[B, T, N]`` -> forecasts ``[B, H, N_t, P]``. As on the torch path, a
        batch of one goes through the text and fusion graphs as two copies of its window (their
        CPU kernels reduce a batch of one in another order), the ViT sees it once; so a window's
        forecast does not depend on the batch it is in."""
        n, _, n_variates = windows.shape
        if n == 1:
            windows = np.concatenate([windows, windows])
        text = self._sessions["text"]
        cls, patch_tokens, variate_tokens, mean, std = text.run(None, {"x": windows})
        x_norm = (windows[:n] - mean[:n]) / std[:n]  # the text graph's instance-norm statistics
        features = np.concatenate(
            [
                self._vision_features(x_norm[start : start + self.vision_batch])
                for start in range(0, n, self.vision_batch)
            ]
        ).reshape(n, n_variates, -1)
        if n == 1:
            features = np.concatenate([features, features])
        feeds = {
            "vision_features": features,
            "cls": cls,
            "patch_tokens": patch_tokens,
            "variate_tokens": variate_tokens,
            "mean": mean,
            "std": std,
        }
        (forecast,) = self._sessions["fusion"].run(None, feeds)
        return forecast[:n]

    def _vision_features(self, x_norm: np.ndarray) -> np.ndarray:
        """Instance-normalised windows ``[B, T, N]`` -> ViT features ``[B*N, F]``."""
        pixels = line_raster.vit_pixels(
            x_norm, self._image_size, self._line_width, self.onnx_threads
        )
        (features,) = self._sessions["vision"].run(None, {"pixels": pixels})
        return features
