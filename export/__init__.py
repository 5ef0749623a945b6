"""Export step and deployment runtime for trained TimesCLIP models (installed as
``timesclip_export``).

- :func:`export_bundle` (``timesclip-darts export``, :mod:`timesclip_export.writer`) writes a
  bundle from a trained model, optionally signed; it needs Darts and the training package.
- :class:`RollingForecaster` (``timesclip-darts stream``) runs a bundle with torch, numpy and
  onnxruntime only; :class:`StreamPool` runs many keyed streams through one, batched.
- ``timesclip-darts serve`` (:mod:`timesclip_export.serve`, needs the ``serve`` extra: Ray
  Serve) puts stream pools behind an HTTP JSON API; :func:`shard_for` is its stream routing.

Imports are lazy, so importing the package pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_bundle": "timesclip_export.writer",
    "generate_key_pair": "timesclip_export.signing",
    "Placement": "timesclip_export.placement",
    "choose_placement": "timesclip_export.placement",
    "read_manifest": "timesclip_export.bundle",
    "RollingForecaster": "timesclip_export.runtime",
    "stream_forecasts": "timesclip_export.stream",
    "StreamPool": "timesclip_export.streams",
    "StreamForecast": "timesclip_export.streams",
    "StreamRejection": "timesclip_export.streams",
    "PoolUpdate": "timesclip_export.streams",
    "ServeConfig": "timesclip_export.serve",
    "shard_for": "timesclip_export.serve_api",
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
