"""TimesCLIP forecasting as a Darts model.

Imports are lazy: the light modules (``line_raster``, ``checks``, ``scaling``, ``likelihoods``,
``atomic_files``) need only numpy, numba and the standard library, so the deployment runtime uses
them without torch; the model needs the ``model`` extra (torch, transformers, Darts).
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
    try:
        module = importlib.import_module(_EXPORTS[name])
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("torch", "transformers", "darts"):
            raise ImportError(
                f"timesclip_darts.{name} needs {err.name}, which is not installed: "
                'pip install "timesclip-darts[model,cpu]"'
            ) from err
        raise
    return getattr(module, name)
