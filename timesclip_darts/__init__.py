"""TimesCLIP forecasting as a Darts model."""

from timesclip_darts.backbones import (
    DEFAULT_CLIP_MODEL,
    PRESETS,
    BackboneInfo,
    BackboneUnavailableError,
    load_clip_towers,
)
from timesclip_darts.timesclip import TimesCLIP, TimesCLIPOutput

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "PRESETS",
    "BackboneInfo",
    "BackboneUnavailableError",
    "TimesCLIP",
    "TimesCLIPOutput",
    "load_clip_towers",
]
