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
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from timesclip_darts.alignment import info_nce
from timesclip_darts.atomic_files import atomic_path
from timesclip_darts.backbones import (
    DEFAULT_CLIP_MODEL,
    BackboneInfo,
    ClipTowers,
    load_clip_towers,
    towers_from_configs,
)
from timesclip_darts.checks import first_bad_value
from timesclip_darts.config import (
    CONFIG_NAME,
    DEFAULT_LAMBDA_ALIGN,
    DEFAULT_LR,
    TEXT_ENCODER_LR_RATIO,
    ConfigError,
    TimesCLIPConfig,
    config_arguments,
    config_default,
)
from timesclip_darts.generator import Generator
from timesclip_darts.language_module import LanguageModule
from timesclip_darts.preprocessor import (
    MAX_ABS_VALUE,
    NormStats,
    instance_denormalize,
    instance_normalize,
    make_patches,
)
from timesclip_darts.variate_selection import VariateSelection
from timesclip_darts.vision_module import VisionModule

WEIGHTS_NAME = "model.safetensors"


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

    Built from a :class:`~timesclip_darts.config.TimesCLIPConfig` (``TimesCLIP(config)``: random
    towers of the config's shapes, as after ``from_pretrained``'s first step) or, as documented
    since the seed, from keywords that load the CLIP towers from ``clip_model_name``.

    Args:
        time_steps: look-back window length T (or a ``TimesCLIPConfig``, and nothing else).
        n_variates: input variates N (targets first, then any covariates).
        prediction_steps: forecast horizon H.
        patch_length, stride: patching of the language branch; by default PatchTST's 16/8 for
            windows of 32 steps or more, shorter patches for shorter windows
            (:func:`~timesclip_darts.config.default_patching`).
        d_model: width of the vision, language, selection and generator tokens.
        n_heads: heads of the variate-selection cross-attention.
        temperature: InfoNCE temperature.
        image_size: side of the rendered images; defaults to the ViT's native size (other sizes
            use interpolated ViT positions).
        clip_model_name: a Hugging Face id, a local ``save_pretrained`` folder, or a preset name
            (``tiny``, ``small``, ``base``: random weights, not pretrained).
        n_targets: forecast only the first ``n_targets`` variates (the rest are covariates that
            take part as inputs); all by default.
        n_params: values per forecast step (1 for a point forecast; a likelihood's parameters).
        dropout: dropout in the trainable parts (0.3, chosen on validation; the paper's is 0.1).
        line_width: rendered line width in pixels (``image_size / 112``, at least 1, by default).
        vision_cache_mb: memory for the frozen-ViT feature cache (0: no cache). The ViT's output
            for a window never changes, so cached windows skip rendering and the ViT. The cache
            is used only while :meth:`use_feature_cache` is on (the Darts model: during ``fit``),
            so the budget costs nothing until then.
        use_vision: ablation switch; ``False`` drops the vision branch (no image, no vision
            token, hence no alignment loss).
        use_variate_selection: ablation switch; ``False`` drops the selection token.
        freeze_vision: ``False`` trains the ViT too (an ablation for random-weight presets; no
            feature cache then, since the features change every step).
        per_variate_head: one generator head per forecast variate instead of one shared across
            them (a tuning variant; the DLinear paper's ``individual=True``).
        backbone: already-loaded towers, instead of loading ``clip_model_name`` (with a config:
            instead of random towers).
        allow_random_towers: accept a CLIP source holding one tower only; the other is random
            and reported as not pretrained.

    The ablation switches exist to measure what each part buys (``benchmarks/``); the export
    supports the full model only. Every default is :class:`TimesCLIPConfig`'s, so
    ``TimesCLIP(...)`` and ``TimesCLIPModel(...)`` build the same model from the same keywords.
    """

    def __init__(
        self,
        time_steps: int | TimesCLIPConfig,
        n_variates: int | None = None,
        prediction_steps: int | None = None,
        patch_length: int | None = None,
        stride: int | None = None,
        d_model: int = config_default("d_model"),
        n_heads: int = config_default("n_heads"),
        temperature: float = config_default("temperature"),
        image_size: int | None = None,
        clip_model_name: str = DEFAULT_CLIP_MODEL,
        n_targets: int | None = None,
        n_params: int = config_default("n_params"),
        dropout: float = config_default("dropout"),
        line_width: float | None = None,
        vision_cache_mb: float = config_default("vision_cache_mb"),
        use_vision: bool = config_default("use_vision"),
        use_variate_selection: bool = config_default("use_variate_selection"),
        freeze_vision: bool = config_default("freeze_vision"),
        per_variate_head: bool = config_default("per_variate_head"),
        backbone: ClipTowers | None = None,
        allow_random_towers: bool = False,
    ) -> None:
        # First, before any other name is bound: the keywords as given, for the config (whose
        # `backbone` is the towers' provenance, built below, not this argument).
        arguments = {k: v for k, v in locals().items() if k != "backbone"}
        super().__init__()
        if isinstance(time_steps, TimesCLIPConfig):
            config = time_steps
            towers = backbone or towers_from_configs(
                config.vision_config, config.text_config, config.backbone
            )
        else:
            if n_variates is None or prediction_steps is None:
                raise ConfigError("TimesCLIP needs time_steps, n_variates and prediction_steps")
            towers = backbone or load_clip_towers(clip_model_name, allow_random_towers)
            config = TimesCLIPConfig(
                **config_arguments(arguments),
                vision_config=towers.vision.config,
                text_config=towers.text.config,
                backbone=towers.info,
            )
        self.config = config
        self.time_steps = config.time_steps
        self.n_variates = config.n_variates
        self.n_targets = config.n_targets
        self.prediction_steps = config.prediction_steps
        self.patch_length = config.patch_length
        self.stride = config.stride
        self.n_patches = config.n_patches
        self.temperature = config.temperature
        self.image_size = config.image_size
        self.use_vision = config.use_vision
        self.use_variate_selection = config.use_variate_selection
        d_model, dropout = config.d_model, config.dropout
        self.vision = (
            VisionModule(
                towers.vision,
                d_model,
                config.image_size,
                config.line_width,
                config.vision_cache_mb,
                trainable=not config.freeze_vision,
            )
            if config.use_vision
            else None
        )
        self.language = LanguageModule(
            towers.text, config.patch_length, config.time_steps, d_model, dropout
        )
        self.selection = (
            VariateSelection(d_model, config.n_heads, dropout)
            if config.use_variate_selection
            else None
        )
        # Tokens per variate: [vision], CLS, P patches, [selection].
        n_tokens = 1 + self.n_patches + int(config.use_vision) + int(config.use_variate_selection)
        self.generator = Generator(
            d_model,
            n_tokens,
            config.prediction_steps,
            config.n_params,
            dropout,
            per_variate=config.n_targets if config.per_variate_head else None,
        )

    @property
    def backbone_info(self) -> BackboneInfo:
        """Where the CLIP towers came from, per tower (``pretrained`` only if both are)."""
        return self.config.backbone

    # ----------------------------------------------------------------------- save / load
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickle) into ``folder``.

        Each file is written beside its final name and renamed into place, so a crash leaves
        the previous file whole. The frozen ViT's weights are saved too: the folder alone
        rebuilds the model, on a machine that never saw the CLIP source.
        """
        folder = Path(folder)
        with atomic_path(folder / WEIGHTS_NAME) as staged:
            safetensors.torch.save_model(self, str(staged), metadata={"format": "pt"})
        return self.config.save(folder).parent

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> TimesCLIP:
        """Rebuild a model written by :meth:`save_pretrained`: towers of the saved shapes with
        random weights, then every saved weight (all must be there)."""
        folder = Path(folder)
        config = TimesCLIPConfig.load(folder)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise ConfigError(f"{weights} does not exist: not a folder written by save_pretrained")
        model = cls(config)
        try:
            missing, unexpected = safetensors.torch.load_model(
                model, str(weights), strict=False, device=str(device)
            )
        except (OSError, RuntimeError, ValueError) as err:  # safetensors' header/shape errors
            raise ConfigError(f"cannot read {weights}: {err}") from err
        if missing or unexpected:
            raise ConfigError(
                f"{weights} does not match {CONFIG_NAME}: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        return model.to(device)

    def load_towers(self, towers: ClipTowers) -> None:
        """Copy the CLIP towers' weights (of this model's shapes) into its own towers: how the
        Darts model puts pretrained weights into a core built from its config."""
        if self.vision is not None:
            self.vision.backbone.load_state_dict(towers.vision.state_dict())
        own = self.language.text_model
        wanted = own.state_dict().keys()  # CLIP's word-embedding table was dropped
        own.load_state_dict({k: v for k, v in towers.text.state_dict().items() if k in wanted})

    def use_feature_cache(self, enabled: bool) -> None:
        """Turn the frozen-ViT feature cache on (training) or off and empty it (inference, so a
        forecast never depends on what was computed before)."""
        if self.vision is not None:
            self.vision.use_cache(enabled)

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
        if torch.compiler.is_exporting():
            return  # a graph cannot branch on values: exported graphs check shapes only
        # Fast on the device; only a failing batch is copied to the host to name the problem.
        if not (torch.isfinite(x).all() and x.abs().max() <= MAX_ABS_VALUE):
            bad = first_bad_value(x.detach().float().cpu().numpy())
            b, t, v = bad.index
            raise ValueError(f"input {bad.problem()} (at batch {b}, step {t}, variate {v})")

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, NormStats]:
        """Instance norm per window and variate; with ``normalize_targets=False`` the targets
        pass unchanged (mean 0, std 1), having been normalised by Darts' RINorm already."""
        x_norm, stats = instance_normalize(x)
        if self.config.normalize_targets:
            return x_norm, stats
        n = self.n_targets
        keep = torch.zeros_like(stats.mean, dtype=torch.bool)
        keep[..., :n] = True
        x_norm = torch.where(keep, x, x_norm)
        mean = torch.where(keep, torch.zeros_like(stats.mean), stats.mean)
        std = torch.where(keep, torch.ones_like(stats.std), stats.std)
        return x_norm, NormStats(mean, std)

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
        x_norm, stats = self.normalize(x)
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
        lambda_align: float = DEFAULT_LAMBDA_ALIGN,
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
        self,
        lr_vision: float | None = None,
        lr_other: float | None = None,
        lr_text: float | None = None,
    ) -> list[dict]:
        """AdamW-ready parameter groups, at the Darts model's default rates unless given.

        - ``other`` (patch and variate embeddings, CLS token, text output projection, variate
          selection, generator): ``lr_other``, by default ``DEFAULT_LR`` (3e-4);
        - ``vision_projection`` (the trainable projection after the frozen ViT): ``lr_vision``,
          by default ``lr_other``;
        - ``text_encoder`` (the pretrained CLIP text transformer: its layers, final LayerNorm and
          position embeddings): ``lr_text``, by default ``lr_other * TEXT_ENCODER_LR_RATIO``
          (the paper fine-tunes it at a tenth of the new parts' rate: 1e-4 vs 1e-3);
        - ``vision_encoder`` (the ViT, only when built with ``freeze_vision=False``): like the
          other pretrained tower, ``lr_text``.

        The frozen ViT is in no group; CLIP's word-embedding table no longer exists.
        """
        lr_other = DEFAULT_LR if lr_other is None else lr_other
        lr_pretrained = lr_other * TEXT_ENCODER_LR_RATIO if lr_text is None else lr_text
        lrs = {
            "vision_projection": lr_other if lr_vision is None else lr_vision,
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
