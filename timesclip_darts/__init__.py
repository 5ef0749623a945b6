"""TimesCLIP forecasting as a Darts model."""

from darts.utils.serialization import add_safe_globals

from timesclip_darts.backbones import (
    DEFAULT_CLIP_MODEL,
    PRESETS,
    BackboneInfo,
    BackboneUnavailableError,
    load_clip_towers,
)
from timesclip_darts.darts_model import TimesCLIPModel, _TimesCLIPModule
from timesclip_darts.timesclip import TimesCLIP, TimesCLIPOutput

# Darts 0.48 loads checkpoints safely and refuses classes outside `darts.`: allow-list ours so
# that `TimesCLIPModel.load(path)` works without `trusted=True`.
add_safe_globals([TimesCLIPModel, _TimesCLIPModule])

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "PRESETS",
    "BackboneInfo",
    "BackboneUnavailableError",
    "TimesCLIP",
    "TimesCLIPModel",
    "TimesCLIPOutput",
    "load_clip_towers",
]
