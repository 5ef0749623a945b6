"""Export step and deployment runtime for trained TimesCLIP models (installed as
``timesclip_export``).

- :func:`export_bundle` (``timesclip-darts export``, :mod:`timesclip_export.exporter`)
  writes a bundle from a trained model, optionally signed; it needs Darts and the training package.
- :class:`RollingForecaster` (``timesclip-darts stream``) runs a bundle with numpy, numba and
  onnxruntime (the ONNX vision path, no torch) or with torch for the ViT (the torch vision
  path); :class:`StreamPool` runs many keyed streams through one, batched.
- ``timesclip-darts serve`` (:mod:`timesclip_export.service.server`, needs the ``serve`` extra: Ray
  Serve) puts stream pools behind an HTTP JSON API; :func:`shard_for` is its stream routing.

Imports are lazy, so importing the package pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_bundle": "timesclip_export.exporter.writer",
    "generate_key_pair": "timesclip_export.bundle.signing",
    "Placement": "timesclip_export.runtime.placement",
    "choose_placement": "timesclip_export.runtime.placement",
    "read_manifest": "timesclip_export.bundle.format",
    "RollingForecaster": "timesclip_export.runtime.forecaster",
    "stream_forecasts": "timesclip_export.runtime.csv_stream",
    "StreamPool": "timesclip_export.service.stream_pool",
    "StreamForecast": "timesclip_export.service.stream_pool",
    "StreamRejection": "timesclip_export.service.stream_pool",
    "PoolUpdate": "timesclip_export.service.stream_pool",
    "ServeConfig": "timesclip_export.service.config",
    "shard_for": "timesclip_export.service.api",
    "SnapshotError": "timesclip_export.errors",
    "BundleError": "timesclip_export.errors",
    "BundleSignatureError": "timesclip_export.errors",
    "BundleVersionError": "timesclip_export.errors",
    "DeviceError": "timesclip_export.errors",
    "ExportError": "timesclip_export.errors",
    "InputError": "timesclip_export.errors",
    "TimestampError": "timesclip_export.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'timesclip_export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
