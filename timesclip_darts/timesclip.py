"""TimesCLIP: the core model, assembled from its components.

Data flow for windows ``x [B, T, N]``::

    instance norm ─┬─ render ─ frozen ViT ─ projection ──────────── vision tokens   [B, N, D]
                   ├─ patches ─ patch embed + CLS ─ CLIP text ──── CLS, patch tokens [B, N, 1+P, D]
                   └─ whole window ─ variate embed ─ CLIP text ── variate tokens   [B, N, D]
    InfoNCE(vision token, language CLS)                             (training only)
    cross-attention(query = CLS, keys/values = variate tokens) ──── selection tokens [B, N, D]
    generator([vision, CLS, patches, selection]) ─ de-normalise ─── forecast [B, N_targets, H]

The three stages are separate methods (``encode_vision``, ``encode_language``, ``fuse``) because
the export cuts the model there: vision stays in torch, language and fusion become ONNX graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from timesclip_darts.alignment import info_nce
from timesclip_darts.backbones import DEFAULT_CLIP_MODEL, BackboneInfo, ClipTowers, load_clip_towers
from timesclip_darts.generator import Generator
from timesclip_darts.language_module import LanguageModule
from timesclip_darts.preprocessor import (
    MAX_ABS_VALUE,
    NormStats,
    instance_denormalize,
    instance_normalize,
    make_patches,
    n_patches,
)
from timesclip_darts.variate_selection import VariateSelection
from timesclip_darts.vision_module import VisionModule


@dataclass
class TimesCLIPOutput:
    """Everything one forward pass computes, for training, inspection and export checks."""

    forecast: torch.Tensor  # [B, N_targets, H, n_params], de-normalised
    forecast_normalized: torch.Tensor  # [B, N_targets, H, n_params]
    stats: NormStats  # of all N input variates, [B, 1, N]
    # [B, N, N]: row i = how variate i weighs each variate (None without variate selection)
    selection_attention: torch.Tensor | None
    contrastive_loss: torch.Tensor | None  # None unless asked for, and without vision


class TimesCLIP(nn.Module):
    """TimesCLIP forecaster over windows ``[batch, time_steps, n_variates]``.

    Args:
        time_steps: look-back window length T.
        n_variates: input variates N (targets first, then any covariates).
        prediction_steps: forecast horizon H.
        patch_length, stride: patching of the language branch (PatchTST's 16/8 by default).
        d_model: width of the vision, language, selection and generator tokens.
        n_heads: heads of the variate-selection cross-attention.
        temperature: InfoNCE temperature.
        image_size: side of the rendered images; defaults to the ViT's native size (other sizes
            use interpolated ViT positions).
        clip_model_name: a Hugging Face id, a local ``save_pretrained`` folder, or a preset name
            (``tiny``, ``small``: random weights, not pretrained).
        n_targets: forecast only the first ``n_targets`` variates (the rest are covariates that
            take part as inputs); all by default.
        n_params: values per forecast step (1 for a point forecast; a likelihood's parameters).
        dropout: dropout in the trainable parts.
        line_width: rendered line width in pixels (``image_size / 112``, at least 1, by default).
        vision_cache_mb: memory for the frozen-ViT feature cache (0: no cache). The ViT's output
            for a window never changes, so cached windows skip rendering and the ViT.
        use_vision: ablation switch; ``False`` drops the vision branch (no image, no vision
            token, hence no alignment loss).
        use_variate_selection: ablation switch; ``False`` drops the selection token.
        freeze_vision: ``False`` trains the ViT too (an ablation for random-weight presets; no
            feature cache then, since the features change every step).
        backbone: already-loaded towers, instead of loading ``clip_model_name``.

    The ablation switches exist to measure what each part buys (``benchmarks/``); the export
    supports the full model only.
    """

    def __init__(
        self,
        time_steps: int,
        n_variates: int,
        prediction_steps: int,
        patch_length: int = 16,
        stride: int = 8,
        d_model: int = 512,
        n_heads: int = 8,
        temperature: float = 0.07,
        image_size: int | None = None,
        clip_model_name: str = DEFAULT_CLIP_MODEL,
        n_targets: int | None = None,
        n_params: int = 1,
        dropout: float = 0.1,
        line_width: float | None = None,
        vision_cache_mb: float = 0.0,
        use_vision: bool = True,
        use_variate_selection: bool = True,
        freeze_vision: bool = True,
        backbone: ClipTowers | None = None,
    ) -> None:
        super().__init__()
        n_targets = n_variates if n_targets is None else n_targets
        _check_config(
            time_steps,
            n_variates,
            prediction_steps,
            patch_length,
            stride,
            d_model,
            n_heads,
            temperature,
            n_targets,
            n_params,
            image_size,
        )
        towers = backbone if backbone is not None else load_clip_towers(clip_model_name)
        self.backbone_info: BackboneInfo = towers.info
        self.time_steps = time_steps
        self.n_variates = n_variates
        self.n_targets = n_targets
        self.prediction_steps = prediction_steps
        self.patch_length = patch_length
        self.stride = stride
        self.n_patches = n_patches(time_steps, patch_length, stride)
        self.temperature = temperature
        self.image_size = image_size or towers.vision.config.image_size
        self.use_vision = use_vision
        self.use_variate_selection = use_variate_selection
        self.vision = (
            VisionModule(
                towers.vision,
                d_model,
                self.image_size,
                line_width,
                vision_cache_mb,
                trainable=not freeze_vision,
            )
            if use_vision
            else None
        )
        self.language = LanguageModule(towers.text, patch_length, time_steps, d_model, dropout)
        self.selection = (
            VariateSelection(d_model, n_heads, dropout) if use_variate_selection else None
        )
        # Tokens per variate: [vision], CLS, P patches, [selection].
        n_tokens = 1 + self.n_patches + int(use_vision) + int(use_variate_selection)
        self.generator = Generator(d_model, n_tokens, prediction_steps, n_params, dropout)

    @property
    def is_ablated(self) -> bool:
        """Whether a part of TimesCLIP was switched off (a benchmark variant, not exportable)."""
        return not (self.use_vision and self.use_variate_selection)

    # ----------------------------------------------------------------------------- stages
    def validate_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the problem with a batch of windows, if any."""
        if not isinstance(x, torch.Tensor):
            dtype = f" of dtype {x.dtype}" if hasattr(x, "dtype") else ""
            raise ValueError(
                "expected a floating-point torch.Tensor [batch, time, variates], got "
                f"{type(x).__name__}{dtype}"
            )
        if x.dim() != 3:
            raise ValueError(
                f"expected a 3-D tensor [batch, time, variates], got shape {tuple(x.shape)}"
            )
        if not torch.is_floating_point(x):
            raise ValueError(f"expected a floating-point tensor, got dtype {x.dtype}")
        _, t, n = x.shape
        if n != self.n_variates:
            raise ValueError(f"expected {self.n_variates} variates (last axis), got {n}")
        if t < self.patch_length:
            raise ValueError(
                f"window of {t} time steps is shorter than one patch ({self.patch_length})"
            )
        if t != self.time_steps:
            raise ValueError(f"expected windows of {self.time_steps} time steps, got {t}")
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise ValueError(
                f"input holds NaN or inf values (first at batch {bad[0]}, step {bad[1]}, "
                f"variate {bad[2]})"
            )
        if x.abs().max() > MAX_ABS_VALUE:
            bad = (x.abs() > MAX_ABS_VALUE).nonzero()[0].tolist()
            raise ValueError(
                f"input values beyond ±{MAX_ABS_VALUE:.0e} (first at batch {bad[0]}, step "
                f"{bad[1]}, variate {bad[2]}) overflow float32 statistics; rescale the series"
            )

    def encode_vision(self, x_norm: torch.Tensor) -> torch.Tensor | None:
        """ViT features of every variate, ``[B, N, F]`` (render + ViT); ``None`` without vision."""
        return None if self.vision is None else self.vision.encode(x_norm)

    def encode_language(
        self, x_norm: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CLS ``[B, N, D]``, patch tokens ``[B, N, P, D]``, variate tokens ``[B, N, D]``."""
        patches = make_patches(x_norm, self.patch_length, self.stride)
        cls, patch_tokens = self.language.encode_patches(patches)
        return cls, patch_tokens, self.language.encode_variates(x_norm)

    def fuse(
        self,
        vision_features: torch.Tensor | None,
        language_cls: torch.Tensor,
        patch_tokens: torch.Tensor,
        variate_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Normalised target forecast ``[B, N_t, H, n_params]``, vision tokens, attention.

        Vision tokens and attention are ``None`` when an ablation switched their part off.
        """
        tokens = [language_cls[:, :, None], patch_tokens]
        vision_tokens = weights = None
        if self.vision is not None:
            vision_tokens = self.vision.project(vision_features)
            tokens.insert(0, vision_tokens[:, :, None])
        if self.selection is not None:
            selected, weights = self.selection(language_cls, variate_tokens)
            tokens.append(selected[:, :, None])
        fused = torch.cat(tokens, dim=2)
        return self.generator(fused[:, : self.n_targets]), vision_tokens, weights

    # ---------------------------------------------------------------------------- forward
    def forward_detailed(
        self,
        x: torch.Tensor,
        return_loss: bool = False,
        vision_features: torch.Tensor | None = None,
    ) -> TimesCLIPOutput:
        """Full pass with every intermediate result; ``vision_features`` skips render + ViT."""
        self.validate_input(x)
        x_norm, stats = instance_normalize(x)
        if vision_features is None:
            vision_features = self.encode_vision(x_norm)
        cls, patch_tokens, variate_tokens = self.encode_language(x_norm)
        y_norm, vision_tokens, weights = self.fuse(
            vision_features, cls, patch_tokens, variate_tokens
        )
        target_stats = NormStats(
            stats.mean[..., : self.n_targets], stats.std[..., : self.n_targets]
        )
        loss = None
        if return_loss and vision_tokens is not None:
            loss = info_nce(vision_tokens.flatten(0, 1), cls.flatten(0, 1), self.temperature)
        return TimesCLIPOutput(
            forecast=instance_denormalize(y_norm, target_stats),
            forecast_normalized=y_norm,
            stats=stats,
            selection_attention=weights,
            contrastive_loss=loss,
        )

    def forward(
        self, x: torch.Tensor, return_loss: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Forecast ``[B, N_targets, H]`` (``[..., n_params]`` when ``n_params > 1``) and, with
        ``return_loss=True``, the InfoNCE alignment loss."""
        out = self.forward_detailed(x, return_loss=return_loss)
        forecast = out.forecast.squeeze(-1) if out.forecast.shape[-1] == 1 else out.forecast
        return (forecast, out.contrastive_loss) if return_loss else forecast

    # ------------------------------------------------------------------------ training API
    @staticmethod
    def compute_loss(
        y_pred: torch.Tensor,
        y_true: torch.Tensor,
        contrastive_loss: torch.Tensor,
        lambda_gen: float = 1.0,
        lambda_align: float = 0.1,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``lambda_gen * MSE(y_pred, y_true) + lambda_align * InfoNCE`` and its parts.

        ``y_true`` must have ``y_pred``'s layout, ``[B, N_targets, H]``.
        """
        if y_pred.shape != y_true.shape:
            raise ValueError(
                f"y_true has shape {tuple(y_true.shape)} but the forecast has "
                f"{tuple(y_pred.shape)}; pass targets as [batch, variates, horizon]"
            )
        forecast_loss = F.mse_loss(y_pred, y_true)
        total = lambda_gen * forecast_loss + lambda_align * contrastive_loss
        parts = {
            "total": float(total.detach()),
            "forecast": float(forecast_loss.detach()),
            "alignment": float(contrastive_loss.detach()),
        }
        return total, parts

    def parameter_names_by_group(self) -> dict[str, list[str]]:
        """Trainable parameter names per optimiser group (see ``get_parameter_groups``)."""
        groups: dict[str, list[str]] = {
            "vision_projection": [],
            "vision_encoder": [],
            "text_encoder": [],
            "other": [],
        }
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue  # the frozen ViT
            if name.startswith("vision.projection."):
                groups["vision_projection"].append(name)
            elif name.startswith("vision.backbone."):
                groups["vision_encoder"].append(name)  # only with freeze_vision=False
            elif name.startswith("language.text_model."):
                groups["text_encoder"].append(name)
            else:
                groups["other"].append(name)
        return groups

    def get_parameter_groups(
        self, lr_vision: float = 1e-5, lr_other: float = 1e-4, lr_text: float | None = None
    ) -> list[dict]:
        """AdamW-ready parameter groups.

        - ``vision_projection`` (the trainable projection after the frozen ViT): ``lr_vision``;
        - ``text_encoder`` (the pretrained CLIP text transformer: its layers, final LayerNorm and
          position embeddings): ``lr_text``, ``lr_other`` when not given (the paper fine-tunes it
          at a smaller rate than the new parts: 1e-4 vs 1e-3);
        - ``vision_encoder`` (the ViT, only when built with ``freeze_vision=False``): like the
          other pretrained tower, ``lr_text``;
        - ``other`` (patch and variate embeddings, CLS token, text output projection, variate
          selection, generator): ``lr_other``.

        The frozen ViT is in no group; CLIP's word-embedding table no longer exists.
        """
        lr_pretrained = lr_other if lr_text is None else lr_text
        lrs = {
            "vision_projection": lr_vision,
            "vision_encoder": lr_pretrained,
            "text_encoder": lr_pretrained,
            "other": lr_other,
        }
        params = dict(self.named_parameters())
        return [
            {"name": group, "params": [params[n] for n in names], "lr": lrs[group]}
            for group, names in self.parameter_names_by_group().items()
            if names
        ]


def _check_config(
    time_steps: int,
    n_variates: int,
    prediction_steps: int,
    patch_length: int,
    stride: int,
    d_model: int,
    n_heads: int,
    temperature: float,
    n_targets: int,
    n_params: int,
    image_size: int | None,
) -> None:
    positive = dict(
        time_steps=time_steps,
        n_variates=n_variates,
        prediction_steps=prediction_steps,
        patch_length=patch_length,
        stride=stride,
        d_model=d_model,
        n_heads=n_heads,
        n_targets=n_targets,
        n_params=n_params,
    )
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if time_steps < patch_length:
        raise ValueError(
            f"time_steps ({time_steps}) is shorter than one patch (patch_length={patch_length})"
        )
    if time_steps < 2:
        raise ValueError("time_steps must be at least 2 to draw a line")
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if n_targets > n_variates:
        raise ValueError(f"n_targets ({n_targets}) exceeds n_variates ({n_variates})")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size must be an integer of at least 8 pixels, got {image_size!r}")
