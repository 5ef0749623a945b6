"""TimesCLIPConfig: every hyperparameter of the core model and the configs of its two CLIP towers.

One object drives construction, as Hugging Face's ``CLIPConfig`` does: it is validated once,
builds ``TimesCLIP(config)``, is written as ``config.json`` beside ``model.safetensors`` by
``TimesCLIP.save_pretrained`` and is what the Darts module stores in its checkpoint. Because it
holds the towers' own configs, a saved model is rebuilt from it alone (random towers, then the
saved weights): loading never goes back to the CLIP source the model was trained from.

A plain dataclass rather than a ``transformers.PreTrainedConfig`` subclass: transformers 5's
configs are strict dataclasses with hub machinery this model does not need; the towers' configs
are still transformers' own and are serialised with their ``to_dict``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import CLIPTextConfig, CLIPVisionConfig

from timesclip_darts.atomic_files import write_text_atomic
from timesclip_darts.backbones import BackboneInfo
from timesclip_darts.preprocessor import n_patches

CONFIG_NAME = "config.json"
# The optimiser's defaults, for the Darts model and the core's ``get_parameter_groups`` alike.
# Chosen on validation loss on all four ETT datasets (``benchmarks/README.md``).
DEFAULT_LR = 3e-4
DEFAULT_WEIGHT_DECAY = 0.1
# The pretrained CLIP text encoder trains at this fraction of the main rate (the paper's 1e-4 vs
# 1e-3), unless its rate is given.
TEXT_ENCODER_LR_RATIO = 0.1
# Weight of the InfoNCE alignment loss added to the forecasting loss in training.
DEFAULT_LAMBDA_ALIGN = 0.1
MODEL_TYPE = "timesclip"
# PatchTST's patching, used whenever the window holds at least two such patches.
DEFAULT_PATCH_LENGTH = 16
DEFAULT_STRIDE = 8


class ConfigError(ValueError):
    """A TimesCLIP hyperparameter that cannot work, named with the value given."""


def default_patching(time_steps: int) -> tuple[int, int]:
    """Patch length and stride for a window of ``time_steps`` when the user chose neither.

    PatchTST's 16/8 from 32 steps on; shorter windows get ``patch_length = max(2, T // 2)`` and
    ``stride = max(1, patch_length // 2)`` (e.g. 10 steps -> 5/2, 8 steps -> 4/2), so every
    window length a Darts model accepts (two steps or more, to draw a line) can be patched.
    """
    if time_steps >= 2 * DEFAULT_PATCH_LENGTH:
        return DEFAULT_PATCH_LENGTH, DEFAULT_STRIDE
    patch_length = max(2, time_steps // 2)
    return patch_length, max(1, patch_length // 2)


@dataclass
class TimesCLIPConfig:
    """Hyperparameters of :class:`~timesclip_darts.timesclip.TimesCLIP` (see its docstring).

    The field defaults are the only defaults: ``TimesCLIP(...)``'s keywords and
    ``TimesCLIPModel(...)``'s core arguments take theirs from here (:func:`config_default`).
    ``patch_length``/``stride`` of ``None`` follow :func:`default_patching`; ``image_size`` of
    ``None`` is the ViT's native size; ``n_targets`` of ``None`` forecasts every variate.
    ``dropout`` 0.3 was chosen on validation (the paper's is 0.1). ``vision_cache_mb`` is the
    frozen-ViT feature cache's budget, used only while the cache is on (the Darts model's
    ``fit``). ``normalize_targets=False`` leaves the target variates as they come (Darts'
    reversible instance norm has normalised them already); covariates are always normalised.
    """

    time_steps: int
    n_variates: int
    prediction_steps: int
    patch_length: int | None = None
    stride: int | None = None
    d_model: int = 512
    n_heads: int = 8
    temperature: float = 0.07
    image_size: int | None = None
    n_targets: int | None = None
    n_params: int = 1
    dropout: float = 0.3
    line_width: float | None = None
    vision_cache_mb: float = 1024.0
    use_vision: bool = True
    use_variate_selection: bool = True
    freeze_vision: bool = True
    per_variate_head: bool = False
    normalize_targets: bool = True
    vision_config: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    text_config: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    backbone: BackboneInfo = field(
        default_factory=lambda: BackboneInfo("config", "config", False, False)
    )

    def __post_init__(self) -> None:
        if isinstance(self.vision_config, dict):
            self.vision_config = CLIPVisionConfig(**self.vision_config)
        if isinstance(self.text_config, dict):
            self.text_config = CLIPTextConfig(**self.text_config)
        if isinstance(self.backbone, dict):
            self.backbone = BackboneInfo(**self.backbone)
        self._check_types()
        if self.patch_length is None and self.stride is None:
            self.patch_length, self.stride = default_patching(self.time_steps)
        elif self.patch_length is None or self.stride is None:
            raise ConfigError(
                "give both patch_length and stride, or neither (then they follow the window: "
                f"{default_patching(self.time_steps)} for {self.time_steps} steps)"
            )
        if self.n_targets is None:
            self.n_targets = self.n_variates
        if self.image_size is None:
            self.image_size = int(self.vision_config.image_size)
        self._check_values()

    # ------------------------------------------------------------------------ validation
    def _check_types(self) -> None:
        for name in ("time_steps", "n_variates", "prediction_steps", "d_model", "n_heads"):
            _positive_int(name, getattr(self, name))
        for name in ("patch_length", "stride", "n_targets"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        _positive_int("n_params", self.n_params)

    def _check_values(self) -> None:
        if self.time_steps < 2:
            raise ConfigError("time_steps must be at least 2 to draw a line")
        if self.time_steps < self.patch_length:
            raise ConfigError(
                f"time_steps ({self.time_steps}) is shorter than one patch (patch_length="
                f"{self.patch_length}); choose a shorter patch, or leave patch_length and stride "
                f"unset to get {default_patching(self.time_steps)} for this window"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.n_targets > self.n_variates:
            raise ConfigError(
                f"n_targets ({self.n_targets}) exceeds n_variates ({self.n_variates})"
            )
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(
                f"image_size must be an integer of at least 8 pixels, got {self.image_size!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.vision_cache_mb < 0:
            raise ConfigError(f"vision_cache_mb must be >= 0, got {self.vision_cache_mb}")

    # ------------------------------------------------------------------------ derived
    @property
    def n_patches(self) -> int:
        """Patches per window, PatchTST-style (the end padded by ``stride`` steps)."""
        return n_patches(self.time_steps, self.patch_length, self.stride)

    # ------------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the towers' configs as transformers writes them)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["vision_config"] = _tower_dict(self.vision_config)
        out["text_config"] = _tower_dict(self.text_config)
        out["backbone"] = asdict(self.backbone)
        return {"model_type": MODEL_TYPE, **out}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TimesCLIPConfig:
        values = dict(values)
        model_type = values.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"config of model_type {model_type!r}, not {MODEL_TYPE!r}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown TimesCLIP config key(s) {unknown}")
        return cls(**values)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_NAME
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> TimesCLIPConfig:
        path = Path(folder) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: not a folder written by save_pretrained")
        try:
            values = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid JSON ({err})") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path} holds no TimesCLIP config")
        return cls.from_dict(values)


def config_default(name: str) -> Any:
    """The default of the config field ``name``: what the constructors' signatures show."""
    return TimesCLIPConfig.__dataclass_fields__[name].default


def config_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The config fields among a constructor's ``arguments`` (its other arguments dropped)."""
    return {f.name: arguments[f.name] for f in fields(TimesCLIPConfig) if f.name in arguments}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _tower_dict(config: CLIPVisionConfig | CLIPTextConfig) -> dict[str, Any]:
    values = config.to_dict()
    # Bookkeeping transformers adds on write; rebuilding the tower does not need it.
    for key in ("transformers_version", "architectures", "_name_or_path"):
        values.pop(key, None)
    return values
