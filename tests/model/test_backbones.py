"""CLIP towers from presets and from saved folders through the same from_pretrained path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPVisionModel

from timesclip_darts import BackboneUnavailableError, TimesCLIP, load_clip_towers
from timesclip_darts.backbones import PRESETS


def _tiny_clip() -> CLIPModel:
    spec = PRESETS["tiny"]
    torch.manual_seed(1)
    return CLIPModel(
        CLIPConfig(text_config=spec["text"], vision_config=spec["vision"], projection_dim=16)
    )


def test_presets_are_marked_not_pretrained() -> None:
    towers = load_clip_towers("tiny")
    assert towers.info.pretrained is False and towers.info.source == "preset"
    assert "NOT pretrained" in towers.info.describe()


def test_full_clip_folder_loads_through_from_pretrained(tmp_path: Path) -> None:
    clip = _tiny_clip()
    clip.save_pretrained(tmp_path / "clip")
    model = TimesCLIP(
        time_steps=48,
        n_variates=2,
        prediction_steps=8,
        d_model=32,
        n_heads=4,
        clip_model_name=str(tmp_path / "clip"),
    )
    assert model.backbone_info.pretrained and model.backbone_info.source == "local"
    torch.testing.assert_close(
        model.vision.backbone.embeddings.patch_embedding.weight,
        clip.vision_model.embeddings.patch_embedding.weight,
    )
    torch.testing.assert_close(
        model.language.text_model.encoder.layers[0].mlp.fc1.weight,
        clip.text_model.encoder.layers[0].mlp.fc1.weight,
    )
    assert model(torch.randn(2, 48, 2)).shape == (2, 2, 8)


def test_separate_tower_folders_load(tmp_path: Path) -> None:
    clip = _tiny_clip()
    clip.save_pretrained(tmp_path / "full")
    CLIPVisionModel.from_pretrained(tmp_path / "full").save_pretrained(tmp_path / "vision")
    CLIPTextModel.from_pretrained(tmp_path / "full").save_pretrained(tmp_path / "text")
    vision = load_clip_towers(str(tmp_path / "vision"), allow_random_towers=True)
    text = load_clip_towers(str(tmp_path / "text"), allow_random_towers=True)
    v, t = vision.vision, text.text
    torch.testing.assert_close(v.post_layernorm.weight, clip.vision_model.post_layernorm.weight)
    torch.testing.assert_close(t.final_layer_norm.weight, clip.text_model.final_layer_norm.weight)
    assert (vision.info.vision_pretrained, vision.info.text_pretrained) == (True, False)
    assert (text.info.vision_pretrained, text.info.text_pretrained) == (False, True)


def test_folder_without_config_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(BackboneUnavailableError, match="no config.json"):
        load_clip_towers(str(tmp_path))


def test_missing_hub_weights_fail_fast_with_instructions(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(BackboneUnavailableError, match="local folder.*preset"):
        load_clip_towers("openai/clip-vit-base-patch16-not-cached")
    assert time.perf_counter() - start < 10
