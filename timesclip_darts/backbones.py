"""CLIP vision and text towers from a Hugging Face id, a local folder, or a named random preset.

Every backbone goes through ``from_pretrained`` except the presets, which are built from
``CLIPVisionConfig``/``CLIPTextConfig`` with random weights and are reported as such
(``BackboneInfo.pretrained`` is ``False``): a figure made with a preset is never a figure of
pretrained CLIP.
"""

from __future__ import annotations

import contextlib
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
}


class BackboneUnavailableError(ValueError):
    """The requested CLIP weights cannot be loaded (offline, unknown id, broken folder)."""


@dataclass(frozen=True)
class BackboneInfo:
    """Where a backbone came from, for logs and reports."""

    name: str
    source: str  # "preset", "local" or "hub"
    pretrained: bool

    def describe(self) -> str:
        if self.source == "preset":
            return f"preset '{self.name}' (random weights, NOT pretrained CLIP)"
        return f"pretrained CLIP from {self.source} '{self.name}'"


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
    return ClipTowers(vision, text, BackboneInfo(name, "preset", pretrained=False))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the load report transformers prints when one tower is read from a full CLIP folder."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _load_towers(source: str, **kwargs: object) -> tuple[CLIPVisionModel, CLIPTextModel]:
    # Both towers load from a full ``CLIPModel`` folder or from separate tower folders.
    with _quiet_transformers():
        vision = CLIPVisionModel.from_pretrained(source, **kwargs)
        text = CLIPTextModel.from_pretrained(source, **kwargs)
    return vision, text


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


def load_clip_towers(name_or_path: str = DEFAULT_CLIP_MODEL) -> ClipTowers:
    """Load CLIP vision and text towers from a preset name, a local folder or a hub id.

    A hub id is first looked up in the local cache; when it is not there and the hub is offline
    (``HF_HUB_OFFLINE=1`` or no connection within 2 s) this fails at once with instructions,
    instead of after transformers' retries.
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
        try:
            vision, text = _load_towers(str(path))
        except (OSError, ValueError, KeyError) as err:
            raise BackboneUnavailableError(f"could not load CLIP from '{path}': {err}") from err
        return ClipTowers(vision, text, BackboneInfo(str(path), "local", pretrained=True))
    if "/" not in name_or_path:
        raise BackboneUnavailableError(
            f"'{name_or_path}' is neither a preset ({sorted(PRESETS)}), an existing folder, "
            "nor a Hugging Face id of the form 'owner/name'"
        )
    try:
        vision, text = _load_towers(name_or_path, local_files_only=True)
        return ClipTowers(vision, text, BackboneInfo(name_or_path, "hub", pretrained=True))
    except OSError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    if offline or not _hub_reachable():
        raise BackboneUnavailableError(_offline_help(name_or_path))
    try:
        vision, text = _load_towers(name_or_path)
    except OSError as err:
        raise BackboneUnavailableError(f"could not load '{name_or_path}': {err}") from err
    return ClipTowers(vision, text, BackboneInfo(name_or_path, "hub", pretrained=True))
