"""Behaviour of the core TimesCLIP model: shapes, scale, gradients, loss, options."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import windows
from timesclip_darts import TimesCLIP


def tiny(**overrides) -> TimesCLIP:
    config = dict(
        time_steps=96,
        n_variates=7,
        prediction_steps=24,
        patch_length=16,
        stride=8,
        d_model=32,
        n_heads=4,
        temperature=0.07,
        clip_model_name="tiny",
        dropout=0.0,
    )
    config.update(overrides)
    torch.manual_seed(0)
    return TimesCLIP(**config)


def test_documented_example_runs_with_a_preset() -> None:
    torch.manual_seed(0)
    model = TimesCLIP(
        time_steps=96,
        n_variates=7,
        prediction_steps=96,
        patch_length=16,
        stride=8,
        d_model=512,
        n_heads=8,
        temperature=0.07,
        clip_model_name="tiny",
    )
    x = torch.randn(32, 96, 7)
    y_pred, contrastive_loss = model(x, return_loss=True)
    assert y_pred.shape == (32, 7, 96)
    assert contrastive_loss.dim() == 0 and contrastive_loss > 0
    y_true = torch.randn(32, 7, 96)
    total, parts = model.compute_loss(
        y_pred, y_true, contrastive_loss, lambda_gen=1.0, lambda_align=0.1
    )
    assert total.item() == pytest.approx(parts["forecast"] + 0.1 * parts["alignment"], rel=1e-5)
    optimizer = torch.optim.AdamW(model.get_parameter_groups(lr_vision=1e-5, lr_other=1e-4))
    total.backward()
    optimizer.step()
    assert model(x).shape == (32, 7, 96)  # without return_loss: the forecast alone


def test_forecast_is_denormalised_and_scale_equivariant() -> None:
    model = tiny().eval()
    x = torch.randn(4, 96, 7).cumsum(1)
    with torch.no_grad():
        base = model(x)
        shifted = model(x * 10.0 + 500.0)
    # Instance norm makes the model equivariant to per-variate affine maps of its input.
    torch.testing.assert_close(shifted, base * 10.0 + 500.0, rtol=1e-4, atol=1e-2)
    # De-normalised: the forecast sits on the window's own level and scale.
    level, scale = (x * 10.0 + 500.0).mean(1), (x * 10.0).std(1)
    assert ((shifted.mean(dim=-1) - level).abs() < 5 * scale).all()


def test_gradients_reach_language_and_projection_but_not_frozen_vit() -> None:
    model = tiny()
    x = torch.randn(8, 96, 7)
    y, loss_align = model(x, return_loss=True)
    total, _ = model.compute_loss(y, torch.randn_like(y), loss_align)
    total.backward()
    assert all(p.grad is None for p in model.vision.backbone.parameters())
    assert model.vision.projection.weight.grad.abs().sum() > 0
    assert model.language.patch_embedding.weight.grad.abs().sum() > 0
    first_layer = model.language.text_model.encoder.layers[0]
    assert first_layer.self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.generator.head.weight.grad.abs().sum() > 0


def test_vit_stays_frozen_and_in_eval_mode_when_training() -> None:
    model = tiny().train()
    assert not model.vision.backbone.training
    assert not any(p.requires_grad for p in model.vision.backbone.parameters())
    assert model.language.training


def test_vision_token_reaches_the_forecast() -> None:
    model = tiny().eval()
    x = torch.randn(2, 96, 7)
    with torch.no_grad():
        out = model.forward_detailed(x)
        features = model.encode_vision((x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True))
        perturbed = model.forward_detailed(x, vision_features=features + torch.randn_like(features))
    assert (perturbed.forecast - out.forecast).abs().max() > 1e-3


def test_language_attention_is_bidirectional() -> None:
    """With CLIP's causal mask a leading CLS would only see itself; here it sees the last patch."""
    model = tiny().eval()
    x = torch.randn(1, 96, 7)
    changed = x.clone()
    changed[:, -8:] += 3.0
    with torch.no_grad():
        cls_a, _, _ = model.encode_language(x)
        cls_b, _, _ = model.encode_language(changed)
    assert (cls_a - cls_b).abs().max() > 1e-3


def test_more_patches_than_clip_positions_work() -> None:
    model = tiny(time_steps=720, prediction_steps=12)
    assert model.n_patches + 1 > model.language.max_positions  # 91 tokens > 77 positions
    assert model(torch.randn(2, 720, 7)).shape == (2, 7, 12)


def test_only_targets_are_forecast_and_attention_is_exposed() -> None:
    model = tiny(n_variates=9, n_targets=7).eval()
    with torch.no_grad():
        out = model.forward_detailed(torch.randn(3, 96, 9))
    assert out.forecast.shape == (3, 7, 24, 1)
    assert out.selection_attention.shape == (3, 9, 9)
    torch.testing.assert_close(out.selection_attention.sum(-1), torch.ones(3, 9))


def test_probabilistic_head_shape() -> None:
    assert tiny(n_params=3)(torch.randn(2, 96, 7)).shape == (2, 7, 24, 3)


def test_loss_decreases_on_real_etth1_windows(etth1_train_values: torch.Tensor) -> None:
    values = etth1_train_values
    model = tiny(prediction_steps=24)
    optimizer = torch.optim.AdamW(model.get_parameter_groups(lr_vision=1e-3, lr_other=1e-3))
    generator = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 8640 - 120, (16,), generator=generator).tolist()
    batch = windows(values, starts, 120)
    x, y = batch[:, :96], batch[:, 96:].transpose(1, 2)
    features = model.encode_vision((x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True))
    losses = []
    for _ in range(40):
        out = model.forward_detailed(x, return_loss=True, vision_features=features)
        total, parts = model.compute_loss(out.forecast[..., 0], y, out.contrastive_loss)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(parts)
    first = sum(p["forecast"] for p in losses[:5]) / 5
    last = sum(p["forecast"] for p in losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert losses[-1]["alignment"] < losses[0]["alignment"]


def test_parameter_groups_are_documented_and_exclude_frozen_parts() -> None:
    model = tiny()
    groups = {g["name"]: g for g in model.get_parameter_groups(1e-5, 1e-3, lr_text=1e-4)}
    assert set(groups) == {"vision_projection", "text_encoder", "other"}
    assert groups["vision_projection"]["lr"] == 1e-5
    assert groups["text_encoder"]["lr"] == 1e-4
    assert groups["other"]["lr"] == 1e-3
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert not grouped & {id(p) for p in model.vision.backbone.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert grouped == trainable
    assert model.language.text_model.embeddings.token_embedding is None
    names = model.parameter_names_by_group()
    assert names["vision_projection"] == ["vision.projection.weight", "vision.projection.bias"]
    assert all(n.startswith("language.text_model.") for n in names["text_encoder"])
    assert "language.cls_token" in names["other"]


def test_compute_loss_rejects_mismatched_targets() -> None:
    with pytest.raises(ValueError, match="batch, variates, horizon"):
        TimesCLIP.compute_loss(torch.zeros(2, 7, 24), torch.zeros(2, 24, 7), torch.tensor(0.0))


def test_ablation_without_vision_never_renders_and_has_no_alignment_loss() -> None:
    model = tiny(use_vision=False)
    assert model.vision is None and model.is_ablated
    y, loss_align = model(torch.randn(2, 96, 7), return_loss=True)
    assert y.shape == (2, 7, 24) and loss_align is None
    assert (
        model.generator.head.in_features
        == (model.n_patches + 2) * model.generator.norm.normalized_shape[0]
    )


def test_ablation_without_variate_selection_changes_no_other_token() -> None:
    model = tiny(use_variate_selection=False).eval()
    assert model.selection is None
    with torch.no_grad():
        out = model.forward_detailed(torch.randn(2, 96, 7), return_loss=True)
    assert out.forecast.shape == (2, 7, 24, 1)
    assert out.selection_attention is None and out.contrastive_loss is not None


def test_trainable_vision_gets_gradients_its_own_group_and_no_cache() -> None:
    model = tiny(freeze_vision=False, vision_cache_mb=16)
    assert model.vision.cache is None  # features change every step: nothing to cache
    y, loss_align = model(torch.randn(4, 96, 7), return_loss=True)
    (y.square().mean() + loss_align).backward()
    assert model.vision.backbone.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    groups = {g["name"]: g for g in model.get_parameter_groups(1e-5, 1e-3, lr_text=1e-4)}
    assert groups["vision_encoder"]["lr"] == 1e-4
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


def test_per_variate_head_gives_each_target_its_own_weights(tmp_path) -> None:
    model = tiny(n_variates=9, n_targets=7, per_variate_head=True).eval()
    head = model.generator.head
    n_tokens = model.n_patches + 3  # vision, CLS, patches, selection
    assert head.weight.shape == (7, model.generator.norm.normalized_shape[0] * n_tokens, 24)
    x = torch.randn(2, 96, 9)
    with torch.no_grad():
        before = model(x)
        head.weight[3].mul_(2.0)  # only variate 3's head
        after = model(x)
    assert before.shape == after.shape == (2, 7, 24)
    changed = (after - before).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [i == 3 for i in range(7)]
    model.save_pretrained(tmp_path / "m")
    loaded = TimesCLIP.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.per_variate_head
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), after)


def test_shared_head_stays_the_default_and_reads_older_configs() -> None:
    from timesclip_darts.config import TimesCLIPConfig

    model = tiny()
    assert isinstance(model.generator.head, torch.nn.Linear)
    values = model.config.to_dict()
    del values["per_variate_head"]  # a config.json written before the option existed
    assert TimesCLIPConfig.from_dict(values).per_variate_head is False
