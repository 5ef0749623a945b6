"""TimesCLIP forecasting as a Darts model.

Imports are lazy: ``timesclip_darts.rendering`` and friends need only torch, so the deployment
runtime can use them without pulling in Darts, Lightning or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_CLIP_MODEL": "timesclip_darts.backbones",
    "PRESETS": "timesclip_darts.backbones",
    "BackboneInfo": "timesclip_darts.backbones",
    "BackboneUnavailableError": "timesclip_darts.backbones",
    "load_clip_towers": "timesclip_darts.backbones",
    "TimesCLIP": "timesclip_darts.timesclip",
    "TimesCLIPOutput": "timesclip_darts.timesclip",
    "TimesCLIPModel": "timesclip_darts.darts_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'timesclip_darts' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
