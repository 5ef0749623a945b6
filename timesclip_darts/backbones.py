"""CLIP vision and text towers from a Hugging Face id, a local folder, or a named random preset.

Every backbone goes through ``from_pretrained`` except the presets, which are built from
``CLIPVisionConfig``/``CLIPTextConfig`` with random weights and are reported as such
(``BackboneInfo.pretrained`` is ``False``): a figure made with a preset is never a figure of
pretrained CLIP.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"

# TimesCLIP never reads words: the presets keep a token table of 8 rows (dropped at model build).
_NO_VOCAB = dict(vocab_size=8, pad_token_id=1, bos_token_id=0, eos_token_id=1)

# Random-weight towers for tests (``tiny``) and CPU runs (``small``). Image size and patch size
# set the ViT's native input; the text tower keeps CLIP's 77 positions.
PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "vision": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        "text": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            **_NO_VOCAB,
        ),
    },
    "small": {
        "vision": dict(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        "text": dict(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            **_NO_VOCAB,
        ),
    },
    # Exactly the shapes of openai/clip-vit-base-patch16 (ViT-B/16 at 224 px, text 12 x 512),
    # random weights: exercises the paper-scale path (224 px images, 12-layer graphs, bundle
    # size, memory) without a download. Never reported as pretrained.
    "base": {
        "vision": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
        ),
        "text": dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            **_NO_VOCAB,
        ),
    },
}


class BackboneUnavailableError(ValueError):
    """The requested CLIP weights cannot be loaded (offline, unknown id, broken folder)."""


@dataclass(frozen=True)
class BackboneInfo:
    """Where each CLIP tower came from, for logs, reports and the export manifest.

    ``source`` is ``"preset"``, ``"local"``, ``"hub"`` or ``"config"`` (rebuilt from a saved
    config: the weights are the saved model's). A tower is pretrained only when its weights were
    read from the source; a tower that the source lacks and the user allowed to be random is not.
    """

    name: str
    source: str
    vision_pretrained: bool
    text_pretrained: bool

    @property
    def pretrained(self) -> bool:
        """Both towers hold pretrained CLIP weights."""
        return self.vision_pretrained and self.text_pretrained

    def describe(self) -> str:
        if self.source == "preset":
            return f"preset '{self.name}' (random weights, NOT pretrained CLIP)"
        origin = f"{self.source} '{self.name}'"
        if self.pretrained:
            return f"pretrained CLIP from {origin}"
        towers = [
            f"{tower} tower {'pretrained' if ok else 'random (NOT pretrained)'}"
            for tower, ok in (("vision", self.vision_pretrained), ("text", self.text_pretrained))
        ]
        return f"CLIP from {origin}: {', '.join(towers)}"


@dataclass
class ClipTowers:
    vision: CLIPVisionModel
    text: CLIPTextModel
    info: BackboneInfo


def build_preset(name: str) -> ClipTowers:
    """Random-weight CLIP towers of a named preset (seeded by torch's global RNG)."""
    if name not in PRESETS:
        raise BackboneUnavailableError(
            f"unknown CLIP preset '{name}'; available presets: {sorted(PRESETS)}"
        )
    spec = PRESETS[name]
    vision = CLIPVisionModel(CLIPVisionConfig(**spec["vision"]))
    text = CLIPTextModel(CLIPTextConfig(**spec["text"]))
    return ClipTowers(vision, text, BackboneInfo(name, "preset", False, False))


def towers_from_configs(
    vision_config: CLIPVisionConfig, text_config: CLIPTextConfig, info: BackboneInfo
) -> ClipTowers:
    """Randomly initialised towers of the given shapes, to receive a saved model's weights.

    Loading a saved TimesCLIP goes through here, never through the CLIP source it was trained
    from: the source may be gone, offline or changed.
    """
    return ClipTowers(CLIPVisionModel(vision_config), CLIPTextModel(text_config), info)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the load report transformers prints when one tower is read from a full CLIP folder."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


_TOWER_TYPES = {
    "clip": ("vision", "text"),
    "clip_vision_model": ("vision",),
    "clip_text_model": ("text",),
}


def _towers_in_folder(path: Path) -> tuple[str, ...]:
    """Which towers a ``save_pretrained`` folder holds, from its config's ``model_type``."""
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise BackboneUnavailableError(f"could not read {path / 'config.json'}: {err}") from err
    if model_type not in _TOWER_TYPES:
        raise BackboneUnavailableError(
            f"'{path}' holds a {model_type!r} model, not CLIP (expected one of "
            f"{sorted(_TOWER_TYPES)})"
        )
    return _TOWER_TYPES[model_type]


def _load_towers(
    source: str, present: tuple[str, ...] = ("vision", "text"), **kwargs: object
) -> tuple[CLIPVisionModel, CLIPTextModel]:
    """Both towers from a full ``CLIPModel`` (or a tower folder); a tower the source lacks is
    built with CLIP's default shapes and random weights (the caller allowed it)."""
    with _quiet_transformers():
        vision = (
            CLIPVisionModel.from_pretrained(source, **kwargs)
            if "vision" in present
            else CLIPVisionModel(CLIPVisionConfig())
        )
        text = (
            CLIPTextModel.from_pretrained(source, **kwargs)
            if "text" in present
            else CLIPTextModel(CLIPTextConfig(**_NO_VOCAB))
        )
    return vision, text


def _refuse_missing_tower(source: str, present: tuple[str, ...], allow: bool) -> None:
    missing = [t for t in ("vision", "text") if t not in present]
    if missing and not allow:
        raise BackboneUnavailableError(
            f"'{source}' holds only the CLIP {present[0]} tower; the {missing[0]} tower would be "
            "random, not pretrained. Pass a full CLIP model (CLIPModel.save_pretrained), or "
            "allow_random_towers=True to train with a random "
            f"{missing[0]} tower (reported as not pretrained)"
        )


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout_s):
            return True
    except OSError:
        return False


def _offline_help(name: str) -> str:
    return (
        f"CLIP weights '{name}' are not available on this machine and the Hugging Face hub cannot "
        "be reached. Either pass a local folder saved with `save_pretrained` "
        "(clip_model_name='/path/to/clip'), download the weights on a connected machine "
        f"(`huggingface-cli download {name}`) and copy the cache, or use a random-weight preset "
        f"for experiments ({sorted(PRESETS)}; not pretrained). Set HF_HUB_OFFLINE=1 to skip "
        "network checks."
    )


def load_clip_towers(
    name_or_path: str = DEFAULT_CLIP_MODEL, allow_random_towers: bool = False
) -> ClipTowers:
    """Load CLIP vision and text towers from a preset name, a local folder or a hub id.

    A folder (or hub model) that holds one tower only is refused unless ``allow_random_towers``:
    the other tower then has random weights with CLIP's default shapes, and ``BackboneInfo``
    says which tower is pretrained. A hub id is first looked up in the local cache; when it is
    not there and the hub is offline (``HF_HUB_OFFLINE=1`` or no connection within 2 s) this
    fails at once with instructions, instead of after transformers' retries.
    """
    if name_or_path in PRESETS:
        return build_preset(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneUnavailableError(
                f"'{path}' is a folder but holds no config.json; save CLIP there with "
                "`save_pretrained` (a full CLIPModel or separate vision/text towers)"
            )
        present = _towers_in_folder(path)
        _refuse_missing_tower(str(path), present, allow_random_towers)
        try:
            vision, text = _load_towers(str(path), present)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise BackboneUnavailableError(f"could not load CLIP from '{path}': {err}") from err
        info = BackboneInfo(str(path), "local", "vision" in present, "text" in present)
        return ClipTowers(vision, text, info)
    if "/" not in name_or_path:
        raise BackboneUnavailableError(
            f"'{name_or_path}' is neither a preset ({sorted(PRESETS)}), an existing folder, "
            "nor a Hugging Face id of the form 'owner/name'"
        )
    try:
        return _hub_towers(name_or_path, allow_random_towers, local_files_only=True)
    except OSError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    if offline or not _hub_reachable():
        raise BackboneUnavailableError(_offline_help(name_or_path))
    try:
        return _hub_towers(name_or_path, allow_random_towers)
    except OSError as err:
        raise BackboneUnavailableError(f"could not load '{name_or_path}': {err}") from err


def _hub_towers(name: str, allow_random_towers: bool, **kwargs: object) -> ClipTowers:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name, **kwargs).model_type
    present = _TOWER_TYPES.get(model_type)
    if present is None:
        raise BackboneUnavailableError(f"'{name}' is a {model_type!r} model, not CLIP")
    _refuse_missing_tower(name, present, allow_random_towers)
    vision, text = _load_towers(name, present, **kwargs)
    return ClipTowers(
        vision, text, BackboneInfo(name, "hub", "vision" in present, "text" in present)
    )
