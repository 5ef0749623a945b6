"""TimesCLIPModel: TimesCLIP as a Darts ``PastCovariatesTorchModel``, and its Lightning module.

Laid out like Darts' own models (TiDE, TSMixer): a ``PLForecastingModule`` whose ``forward`` runs
under ``@io_processor``, and a model class that reads sizes from the first training sample in
``_create_model``. What differs from a plain Darts model, each on purpose:

- the training loss is Darts' forecasting loss plus ``lambda_align`` x InfoNCE (both logged); the
  validation loss, which early stopping watches, is the forecasting loss alone;
- the default optimiser is the paper's kind: AdamW over TimesCLIP's parameter groups (the CLIP
  text encoder at a tenth of the rate of the new parts), cosine decay to 0 over the epochs of
  each ``fit`` call; user ``optimizer_cls``, ``optimizer_kwargs`` and ``lr_scheduler_cls`` win
  (``None`` turns the schedule off). The rates are :mod:`timesclip_darts.config`'s;
- likelihood parameters are de-normalised per kind (:mod:`timesclip_darts.likelihoods`):
  locations (and quantiles) affinely with the window's mean and std, scales times the std;
- ``use_reversible_instance_norm`` replaces TimesCLIP's own instance norm of the targets by
  Darts' ``RINorm`` (affine unless ``{"affine": False}``), scales included;
- the module stores a :class:`TimesCLIPConfig` (with the CLIP towers' configs), so a saved model
  loads without the CLIP source it was trained from; the pretrained tower weights are copied in
  once, when the module is first created;
- ``to_onnx`` is Darts' own, one graph with the rasteriser inside, for Darts'
  ``run_onnx_prediction``; with a likelihood the graph outputs the parameters
  ``predict(predict_likelihood_parameters=True)`` returns (Darts' other models: the raw output).
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from darts.logging import raise_log
from darts.models.forecasting.pl_forecasting_module import PLForecastingModule, io_processor
from darts.models.forecasting.torch_forecasting_model import PastCovariatesTorchModel
from darts.utils.data.torch_datasets.utils import (
    ModuleStage,
    PLModuleInput,
    PLModuleOutput,
    TorchTrainingSample,
)
from darts.utils.serialization import add_safe_globals
from darts.utils.torch import MonteCarloDropout
from torch import nn

from timesclip_darts.atomic_files import move_into_place
from timesclip_darts.backbones import DEFAULT_CLIP_MODEL, load_clip_towers
from timesclip_darts.config import (
    DEFAULT_LAMBDA_ALIGN,
    DEFAULT_LR,
    DEFAULT_WEIGHT_DECAY,
    TimesCLIPConfig,
    config_arguments,
    config_default,
)
from timesclip_darts.data import check_values
from timesclip_darts.likelihoods import UnsupportedLikelihoodError, likelihood_row
from timesclip_darts.quiet import quiet_lightning, quiet_onnx_export
from timesclip_darts.timesclip import TimesCLIP


class OnnxExportError(ValueError):
    """A model Darts' ``to_onnx`` would write a graph for that ONNX Runtime cannot run."""


class ModelFileError(ValueError):
    """A saved model that is missing, truncated, corrupt or of another kind."""


class TimesCLIPModel(PastCovariatesTorchModel):
    def __init__(
        self,
        input_chunk_length: int,
        output_chunk_length: int,
        output_chunk_shift: int = 0,
        clip_model_name: str = DEFAULT_CLIP_MODEL,
        patch_length: int | None = None,
        stride: int | None = None,
        d_model: int = config_default("d_model"),
        n_heads: int = config_default("n_heads"),
        temperature: float = config_default("temperature"),
        image_size: int | None = None,
        line_width: float | None = None,
        dropout: float = config_default("dropout"),
        lambda_align: float = DEFAULT_LAMBDA_ALIGN,
        text_encoder_lr: float | None = None,
        vision_projection_lr: float | None = None,
        vision_cache_mb: float = config_default("vision_cache_mb"),
        use_vision: bool = config_default("use_vision"),
        use_variate_selection: bool = config_default("use_variate_selection"),
        freeze_vision: bool = config_default("freeze_vision"),
        per_variate_head: bool = config_default("per_variate_head"),
        allow_random_towers: bool = False,
        **kwargs: Any,
    ) -> None:
        """TimesCLIP: time series seen as line plots by a frozen CLIP vision encoder and read as
        patch "words" by a fine-tuned CLIP text encoder, aligned contrastively, with
        cross-attention variate selection and a generator over the fused tokens.

        All target components and past covariates are model inputs (each gets its own image and
        tokens and takes part in variate selection and alignment); only targets are forecast.

        The core arguments (``patch_length`` ... ``per_variate_head``) are
        :class:`~timesclip_darts.config.TimesCLIPConfig`'s fields, with its defaults: the same
        keywords build the same network as ``TimesCLIP(...)``.

        Parameters
        ----------
        input_chunk_length
            Look-back window length.
        output_chunk_length
            Steps forecast per forward pass.
        output_chunk_shift
            Steps between the end of the input window and the start of the forecast.
        clip_model_name
            Hugging Face id, local ``save_pretrained`` folder, or preset (``"tiny"``,
            ``"small"``, ``"base"``: random weights, not pretrained). Read once, when the model
            is first created; saved models load without it.
        patch_length, stride
            Patching of the language branch; by default PatchTST's 16/8 for windows of 32
            steps or more, ``max(2, T // 2)`` / half of it for shorter ones.
        d_model, n_heads
            Token width; heads of the variate-selection attention.
        temperature
            InfoNCE temperature.
        image_size, line_width
            Rendered image side (ViT native size by default) and line width in pixels.
        dropout
            Dropout in the trainable parts (0.3, chosen on validation; the paper's is 0.1).
        lambda_align
            Weight of the InfoNCE loss added to the forecasting loss in training (0 disables it).
        text_encoder_lr
            Learning rate of the CLIP text encoder; default a tenth of ``optimizer_kwargs["lr"]``.
        vision_projection_lr
            Learning rate of the vision projection; default ``optimizer_kwargs["lr"]``.
        vision_cache_mb
            Memory (per process) for the frozen-ViT feature cache: from the second epoch on,
            training and validation windows skip rendering and the ViT. 0 disables it.
        use_vision, use_variate_selection, freeze_vision
            Ablation switches (see ``benchmarks/``): drop the vision branch (and with it the
            alignment loss), drop variate selection, or train the ViT (for random-weight presets;
            at the text encoder's learning rate, without feature cache). Exported bundles need
            the full model.
        per_variate_head
            One generator head per target component instead of one shared across them (the
            DLinear paper's ``individual=True``; Darts' ``shared_weights=False`` mixes channels
            instead); shared by default, chosen on validation (see ``benchmarks/``).
        allow_random_towers
            Accept a CLIP source that holds one tower only (a ``CLIPVisionModel`` folder, say);
            the other tower is random and reported as not pretrained.
        **kwargs
            Darts' ``TorchForecastingModel`` arguments (``batch_size``, ``n_epochs``,
            ``likelihood``, ``loss_fn``, ``optimizer_cls``, ``optimizer_kwargs``,
            ``lr_scheduler_cls``, ``lr_scheduler_kwargs``, ``pl_trainer_kwargs``,
            ``random_state``, ``use_reversible_instance_norm``, ...). Defaults differ in two
            places: ``optimizer_cls=torch.optim.AdamW`` with
            ``optimizer_kwargs={"lr": 3e-4, "weight_decay": 0.1}`` (given ``optimizer_kwargs``
            replace both, as in Darts), and, when ``lr_scheduler_cls`` is not given, a cosine
            decay to 0 over the epochs of each ``fit`` call (``lr_scheduler_cls=None`` turns it
            off).
        """
        super().__init__(**self._extract_torch_model_params(**self.model_params))
        self.pl_module_params = self._extract_pl_module_params(**self.model_params)
        try:
            likelihood_row(self.pl_module_params.get("likelihood"))
        except UnsupportedLikelihoodError as err:
            raise_log(err)
        self.pl_module_params.setdefault("optimizer_cls", torch.optim.AdamW)
        self.pl_module_params.setdefault(
            "optimizer_kwargs", {"lr": DEFAULT_LR, "weight_decay": DEFAULT_WEIGHT_DECAY}
        )
        if "lr_scheduler_cls" not in self.model_params:
            # T_max None: the module sets it to the epochs of each fit call.
            self.pl_module_params["lr_scheduler_cls"] = torch.optim.lr_scheduler.CosineAnnealingLR
            self.pl_module_params["lr_scheduler_kwargs"] = {"T_max": None, "eta_min": 0.0}
        # Every core argument is checked now, not after the data is prepared.
        self.core_config(n_targets=1, n_covariates=0)

    def core_config(self, n_targets: int, n_covariates: int, towers=None) -> TimesCLIPConfig:
        """The core's config for data of this width: the core arguments as given (the config's
        defaults otherwise), with the given towers' configs (default CLIP configs without)."""
        return TimesCLIPConfig(
            time_steps=self.input_chunk_length,
            n_variates=n_targets + n_covariates,
            prediction_steps=self.output_chunk_length,
            n_targets=n_targets,
            n_params=1 if self.likelihood is None else self.likelihood.num_parameters,
            # Darts' RINorm normalises the targets instead (see the module's forward).
            normalize_targets=not self.pl_module_params.get("use_reversible_instance_norm"),
            **config_arguments(self.model_params),
            **({} if towers is None else _tower_configs(towers)),
        )

    def _create_model(self, train_sample: TorchTrainingSample) -> PLForecastingModule:
        past_covariates = train_sample.past_covariates
        params = self.model_params
        towers = load_clip_towers(params["clip_model_name"], params["allow_random_towers"])
        config = self.core_config(
            n_targets=train_sample.past_target.shape[1],
            n_covariates=past_covariates.shape[1] if past_covariates is not None else 0,
            towers=towers,
        )
        module = _TimesCLIPModule(
            config=config.to_dict(),
            lambda_align=params["lambda_align"],
            text_encoder_lr=params["text_encoder_lr"],
            vision_projection_lr=params["vision_projection_lr"],
            **self.pl_module_params,
        )
        module.core.load_towers(towers)
        return module

    @property
    def supports_static_covariates(self) -> bool:
        return False

    @property
    def supports_multivariate(self) -> bool:
        return True

    @property
    def core(self) -> TimesCLIP:
        """The trained :class:`TimesCLIP` network (after ``fit`` or ``load``)."""
        if self.model is None:
            raise ValueError("the model has not been fitted or loaded yet")
        return self.model.core

    # -------------------------------------------------------------- fit and predict: checks
    # Darts trains on NaNs silently and never compares frequencies: both are checked up front,
    # naming where the gap is and which frequencies differ. Arguments pass through to Darts.
    def fit(self, series, *args: Any, **kwargs: Any):
        given = _bind(super().fit, series, *args, **kwargs)
        for role in ("series", "past_covariates", "val_series", "val_past_covariates"):
            _check_series(given.get(role), role)
        freqs = {s.freq for s in _as_list(series)}
        # Kept for predict-time checks and for the export manifest.
        self.training_freq = freqs.pop() if len(freqs) == 1 else None
        self.target_components = list(_as_list(series)[0].components)
        covariates = _as_list(given.get("past_covariates"))
        self.past_covariate_components = list(covariates[0].components) if covariates else []
        return super().fit(series, *args, **kwargs)

    def predict(self, n: int, *args: Any, **kwargs: Any):
        given = _bind(super().predict, n, *args, **kwargs)
        for role in ("series", "past_covariates"):
            _check_series(given.get(role), role, getattr(self, "training_freq", None))
        return super().predict(n, *args, **kwargs)

    # ----------------------------------------------------- fit and predict: Lightning's chatter
    # Every fit (``fit`` ends in ``fit_from_dataset``) and every prediction (``predict`` and
    # ``historical_forecasts`` end in ``predict_from_dataset``) runs quiet.
    def fit_from_dataset(self, *args: Any, **kwargs: Any):
        with quiet_lightning():
            return super().fit_from_dataset(*args, **kwargs)

    def predict_from_dataset(self, *args: Any, **kwargs: Any):
        with quiet_lightning():
            return super().predict_from_dataset(*args, **kwargs)

    # ---------------------------------------------------------------------------------- onnx
    # Darts' own `to_onnx`: one graph, the rasteriser included (it traces as its dense torch
    # field), for `darts.utils.onnx.run_onnx_prediction`; `_TimesCLIPModule._onnx_wrapper`
    # makes a likelihood's graph output its parameters. Quiet: no exporter notes, and no
    # progress prints unless `verbose=True`. A float64 model is refused: its graph would not load
    # in ONNX Runtime's CPU provider, which has no float64 Conv (the ViT's patch embedding).
    def to_onnx(self, *args: Any, **kwargs: Any) -> None:
        if self.model is not None and self.model.dtype != torch.float32:
            raise OnnxExportError(
                f"to_onnx needs a float32 model, this one is {self.model.dtype}: ONNX Runtime's "
                "CPU provider has no float64 Conv (the ViT's patch embedding); fit on "
                "series.astype(numpy.float32)"
            )
        kwargs.setdefault("verbose", False)
        with quiet_lightning(), quiet_onnx_export():
            return super().to_onnx(*args, **kwargs)

    # ---------------------------------------------------------------------------- save, load
    def save(self, path: str | None = None, **kwargs: Any) -> None:
        """Darts' ``save``, made atomic: both files are written into a temporary folder beside
        ``path`` and moved into place (``atomic_files.move_into_place``), so a crash or a full
        disk mid-save leaves the previous model intact (the weights go first)."""
        target = Path(path if path is not None else self._default_save_path() + ".pt")
        # Under DDP every process must call this (Lightning's checkpointing is collective);
        # only global rank 0 writes the checkpoint and moves the files into place.
        writer = self.trainer is None or self.trainer.is_global_zero
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            staged = Path(tmp) / target.name
            super().save(str(staged), **kwargs)
            weights = Path(f"{staged}.ckpt")
            loaded_from = getattr(self, "_loaded_weights", None)
            if not weights.exists() and loaded_from and Path(loaded_from).is_file():
                # Darts writes weights only through a trainer; a model that was loaded and not
                # used since has none, and would be saved without its weights.
                shutil.copyfile(loaded_from, weights)
            for suffix in (".ckpt", ""):
                if writer and Path(f"{staged}{suffix}").exists():
                    move_into_place(f"{staged}{suffix}", f"{target}{suffix}")

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> TimesCLIPModel:
        """Darts' ``load``, but a missing, truncated or foreign file is a :class:`ModelFileError`
        naming it, never a half-loaded model (Darts alone loads a model without its ``.ckpt``
        weights with only a warning)."""
        if not Path(path).is_file():
            raise ModelFileError(f"model file {path} does not exist")
        if not Path(f"{path}.ckpt").is_file():
            raise ModelFileError(
                f"{path}.ckpt, the weights saved beside {Path(path).name}, is missing"
            )
        try:
            model = super().load(path, **kwargs)
        except Exception as err:  # unpickling and torch raise many unrelated types for bad files
            raise ModelFileError(
                f"could not load a TimesCLIPModel from {path}: the file or its .ckpt is "
                f"truncated, corrupt or of another kind ({type(err).__name__}: {err})"
            ) from err
        if not isinstance(model, cls):
            raise ModelFileError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        model._loaded_weights = str(Path(f"{path}.ckpt").resolve())
        return model


class _TimesCLIPModule(PLForecastingModule):
    def __init__(
        self,
        config: dict[str, Any],
        lambda_align: float = DEFAULT_LAMBDA_ALIGN,
        text_encoder_lr: float | None = None,
        vision_projection_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Lightning module around :class:`TimesCLIP`, built from its config (a plain dict in
        the checkpoint): the CLIP towers get random weights here and their trained or
        pretrained weights afterwards, from the checkpoint or from ``_create_model``."""
        super().__init__(**kwargs)
        self.lambda_align = lambda_align
        self.core = TimesCLIP(TimesCLIPConfig.from_dict(config))
        self.n_targets = self.core.n_targets
        _use_mc_dropout(self.core)
        # Darts builds the optimiser as `optimizer_cls(params=self.parameters(), **kwargs)` and
        # the scheduler from its kwargs; these wrappers hand them TimesCLIP's parameter groups
        # and the default cosine's length (this fit's epochs).
        self.optimizer_cls = _OverParameterGroups(
            self.optimizer_cls, self.core, vision_projection_lr, text_encoder_lr
        )
        if self.lr_scheduler_kwargs.get("T_max", 0) is None:
            self.lr_scheduler_cls = _OverThisFit(self.lr_scheduler_cls, self)

    @io_processor
    def forward(self, x_in: PLModuleInput) -> PLModuleOutput:
        """Forecast ``(batch, output_chunk_length, n_targets, nr_params)``.

        In the training stage the InfoNCE loss travels in ``PLModuleOutput.state`` to
        ``_train_val_step`` (no other stage sets it, so no prediction loop ever sees it). With
        Darts' RINorm the targets arrive normalised by it and the core leaves them so.
        """
        x = x_in.concatenate_past_features()
        with_alignment = x_in.stage == ModuleStage.TRAIN and self.lambda_align > 0
        out = self.core.forward_detailed(x, return_loss=with_alignment)
        n = self.n_targets
        mean = out.stats.mean[..., :n].transpose(1, 2)
        std = out.stats.std[..., :n].transpose(1, 2)
        params = denormalize_parameters(out.forecast_normalized, mean, std, self.likelihood)
        params = params.permute(0, 2, 1, 3)
        row = likelihood_row(self.likelihood)
        if self.rin is not None and row is not None and row.is_location_scale:
            scale = _rin_precompensate_scale(params[..., 1:2], self.rin)
            params = torch.cat([params[..., :1], scale, params[..., 2:]], dim=-1)
        return PLModuleOutput(prediction=params, state=out.contrastive_loss)

    # ---------------------------------------------------------------------------------- onnx
    def _onnx_wrapper(self, *args: Any, **kwargs: Any):
        """Darts' export wrapper; with a likelihood, the graph ends in Darts' own
        ``predict_likelihood_parameters``, so that ``run_onnx_prediction`` returns what
        ``predict(..., predict_likelihood_parameters=True)`` does (Darts exports the raw output,
        whose scale parameters are before the softplus)."""
        bundle = super()._onnx_wrapper(*args, **kwargs)
        if self.likelihood is not None:
            bundle.wrapper = _LikelihoodParameters(bundle.wrapper, self.likelihood)
        return bundle

    def _train_val_step(self, batch, stage: ModuleStage, criterion, metrics) -> torch.Tensor:
        output = self(batch.to_module_input(stage=stage))
        loss = self._compute_loss(output, batch.future_target, criterion, batch.sample_weight)
        batch_size = batch.past_target.shape[0]
        if output.state is not None:
            self.log("train_forecast_loss", loss, batch_size=batch_size, sync_dist=True)
            self.log("train_alignment_loss", output.state, batch_size=batch_size, sync_dist=True)
            loss = loss + self.lambda_align * output.state
        self.log(f"{stage.value}_loss", loss, batch_size=batch_size, prog_bar=True, sync_dist=True)
        self._update_metrics(output.replace(state=None), batch.future_target, metrics)
        return loss

    # The feature cache serves fit alone: on at its start, off and emptied at its end (also
    # when it fails), so forecasts never depend on it and no memory stays held after fit.
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.core.use_feature_cache(True)

    def teardown(self, stage: str) -> None:
        self.core.use_feature_cache(False)
        super().teardown(stage)

    def epochs_this_fit(self) -> int:
        """Epochs the current ``fit`` call runs (1 outside a fit)."""
        trainer = self._trainer
        epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
        if not epochs or epochs < 0:
            return 1
        return max(1, epochs - trainer.current_epoch)


class _LikelihoodParameters(nn.Module):
    """Darts' export wrapper followed by ``likelihood.predict_likelihood_parameters``."""

    def __init__(self, wrapper: nn.Module, likelihood: Any) -> None:
        super().__init__()
        self.wrapper = wrapper
        self.likelihood = likelihood

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.likelihood.predict_likelihood_parameters(self.wrapper(*tensors))


class _OverParameterGroups:
    """``optimizer_cls`` called as Darts calls it, over TimesCLIP's parameter groups (rates:
    the given ones, else the main ``lr`` and a tenth of it for the text encoder) instead of
    the flat parameter list Darts passes."""

    def __init__(self, optimizer_cls, core: TimesCLIP, lr_vision, lr_text) -> None:
        self.optimizer_cls, self.core = optimizer_cls, core
        self.lr_vision, self.lr_text = lr_vision, lr_text

    def __call__(self, params, **kwargs: Any) -> torch.optim.Optimizer:
        groups = self.core.get_parameter_groups(
            lr_vision=self.lr_vision, lr_other=kwargs.get("lr", DEFAULT_LR), lr_text=self.lr_text
        )
        return self.optimizer_cls(groups, **kwargs)


class _OverThisFit:
    """A scheduler class whose ``T_max`` of ``None`` becomes the epochs of the current fit."""

    def __init__(self, scheduler_cls, module: _TimesCLIPModule) -> None:
        self.scheduler_cls, self.module = scheduler_cls, module

    def __call__(self, optimizer, T_max=None, **kwargs: Any):  # noqa: N803 (torch's name)
        return self.scheduler_cls(optimizer, T_max=self.module.epochs_this_fit(), **kwargs)


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    y = y.clamp_min(1e-8)
    return y + torch.log(-torch.expm1(-y))


def denormalize_parameters(
    y_norm: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, likelihood: Any
) -> torch.Tensor:
    """De-normalise the head output ``[B, N, H, P]`` with per-variate mean and std ``[B, N, 1]``
    as the likelihood's registry row says: point forecasts and quantiles (all locations)
    ``y * std + mean``; location/scale, the location likewise and the raw scale so that
    ``softplus(raw)`` is multiplied by ``std``."""
    mean, std = mean[..., None], std[..., None]
    row = likelihood_row(likelihood)
    if row is None or not row.is_location_scale:
        return y_norm * std + mean
    loc = y_norm[..., :1] * std + mean
    scale = _inverse_softplus(F.softplus(y_norm[..., 1:2]) * std)
    return torch.cat([loc, scale, y_norm[..., 2:]], dim=-1)


def _rin_precompensate_scale(params: torch.Tensor, rin: nn.Module) -> torch.Tensor:
    """Raw scale parameters ``[B, H, N, 1]`` in RINorm's space, rewritten so that Darts'
    ``rin.inverse`` (affine, meant for locations) lands on the raw scale whose softplus is the
    normalised scale times ``stdev / |affine_weight|``: the spread then follows the data."""
    stdev = rin.stdev.view(rin.stdev.shape + (1,))
    mean = rin.mean.view(rin.mean.shape + (1,))
    weight = torch.ones_like(stdev)
    bias = torch.zeros_like(stdev)
    if rin.affine:
        weight = rin.affine_weight.view(rin.affine_weight.shape + (1,)) + rin.eps * rin.eps
        bias = rin.affine_bias.view(rin.affine_bias.shape + (1,))
    wanted = _inverse_softplus(F.softplus(params) * stdev / weight.abs())
    return (wanted - mean) / stdev * weight + bias


def _use_mc_dropout(module: nn.Module) -> None:
    """Swap every ``nn.Dropout`` below ``module`` for Darts' ``MonteCarloDropout`` (same rate):
    identical in training and plain prediction, and active on ``predict(mc_dropout=True)``."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, MonteCarloDropout(child.p, child.inplace))
        else:
            _use_mc_dropout(child)


def _tower_configs(towers) -> dict[str, Any]:
    """The config fields that describe loaded CLIP towers: their configs and provenance."""
    return {
        "vision_config": towers.vision.config,
        "text_config": towers.text.config,
        "backbone": towers.info,
    }


def _bind(method, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments of a call to one of Darts' methods, by name (its own signature)."""
    return inspect.signature(method).bind(*args, **kwargs).arguments


def _as_list(series) -> list:
    if series is None:
        return []
    return list(series) if isinstance(series, (list, tuple)) else [series]


def _check_series(series, role: str, expected_freq=None) -> None:
    for i, one in enumerate(_as_list(series)):
        label = role if not isinstance(series, (list, tuple)) else f"{role}[{i}]"
        check_values(one, label)
        if expected_freq is not None and one.freq != expected_freq:
            raise ValueError(
                f"{label} has frequency {one.freq_str!r} but the model was trained on series of "
                f"frequency {getattr(expected_freq, 'freqstr', expected_freq)!r}"
            )


# Darts 0.48 loads checkpoints safely and refuses classes outside `darts.`: allow-list ours so
# that `TimesCLIPModel.load(path)` works without `trusted=True`.
add_safe_globals([TimesCLIPModel, _TimesCLIPModule])
