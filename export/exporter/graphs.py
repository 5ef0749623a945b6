"""The three exported pieces of a trained TimesCLIP, their export settings and ORT optimisation.

The model is cut where :class:`timesclip_darts.TimesCLIP` cuts itself (``encode_vision``,
``encode_language``, ``fuse``); every wrapper calls the library's own methods, so the graphs hold
the trained model's code and nothing written twice:

- :class:`TextGraph` -> ``text.onnx``: instance norm, patching, patch/variate embedding and the
  CLIP text encoder. It also outputs the normalisation statistics, which the fusion graph needs.
- :class:`FusionGraph` -> ``fusion.onnx``: vision projection, variate selection, generator and the
  per-window de-normalisation, ending in Darts' layout and Darts' likelihood parameters.
- :class:`ViTGraph` -> ``vision.pt2`` and ``vision.onnx``: the frozen ViT on CLIP-normalised
  pixels, as a ``torch.export`` program (:func:`export_vision`, the torch vision path) and as an
  ONNX graph (:func:`export_vision_onnx`, the torch-free one); the runtime draws the pixels with
  the library's rasteriser (:mod:`timesclip_export.runtime.vision`).

Exporter choice (measured with torch 2.13, onnxscript 0.7, onnxruntime 1.32):

- The TorchScript ("legacy") exporter cannot export the language branch at all: ``Tensor.unfold``
  with a dynamic batch fails ("input size not accessible"). So: the dynamo exporter.
- Opset 18 with the text encoder switched to **eager** attention: ORT's transformer optimizer
  (``model_type='clip'``) then fuses every encoder layer into one ``Attention`` (com.microsoft),
  two ``SkipLayerNormalization`` and a ``QuickGelu``; no explicit mask is needed.
- SDPA at opset 18 exports ``MatMul``/``Softmax`` chains the optimizer never fuses into
  ``Attention`` (only ``SkipLayerNormalization``/``QuickGelu``). SDPA at opset 23 exports ONNX's
  standard ``Attention`` op, but the optimizer's symbolic shape inference fails on that graph, so
  no ``SkipLayerNormalization`` is formed, and the contrib ``Attention`` kernel is the one with
  the longest CPU and CUDA support. Hence eager + opset 18.
- The ViT's ONNX graph is exported the same way (eager attention, opset 18): the optimizer then
  fuses each of its layers too (``Attention``, ``SkipLayerNormalization``, ``QuickGelu``).
  ``vision.pt2`` keeps the backbone's own attention (SDPA), the fast one in torch.
- The optimizer runs at ``opt_level=1`` (provider-independent rewrites only), so the optimised
  graphs run on the CPU and the CUDA execution providers alike.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(18, 24)
VISION_INPUTS = ("pixels",)
VISION_OUTPUTS = ("features",)
TEXT_INPUTS = ("x",)
TEXT_OUTPUTS = ("cls", "patch_tokens", "variate_tokens", "mean", "std")
FUSION_INPUTS = ("vision_features", "cls", "patch_tokens", "variate_tokens", "mean", "std")
FUSION_OUTPUTS = ("forecast",)
# Fused operators the optimizer can write; the manifest records how many of each appear.
FUSED_OPERATORS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "QuickGelu",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "BiasAdd",
)
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnxruntime")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and info logs (errors still raise)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ------------------------------------------------------------------------------- wrappers
class TextGraph(nn.Module):
    """Scaled windows ``x [B, T, N]`` -> language CLS, patch tokens, variate tokens, and the
    instance-norm mean/std ``[B, 1, N]``."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from timesclip_darts.preprocessor import instance_normalize

        x_norm, stats = instance_normalize(x)
        cls, patch_tokens, variate_tokens = self.core.encode_language(x_norm)
        return cls, patch_tokens, variate_tokens, stats.mean, stats.std


class FusionGraph(nn.Module):
    """Vision features, language tokens and norm statistics -> forecast ``[B, H, N_t, P]``.

    De-normalised with the Lightning module's own :func:`denormalize_parameters`, then, for a
    likelihood, turned into the likelihood's parameters by Darts' own ``_params_from_output``
    (what ``predict_likelihood_parameters=True`` returns): quantiles as they are, location/scale
    likelihoods as (location, softplus scale).
    """

    def __init__(self, core: nn.Module, likelihood: nn.Module | None) -> None:
        super().__init__()
        self.core = core
        self.likelihood = likelihood

    def forward(
        self,
        vision_features: torch.Tensor,
        cls: torch.Tensor,
        patch_tokens: torch.Tensor,
        variate_tokens: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> torch.Tensor:
        from timesclip_darts.darts_model import denormalize_parameters
        from timesclip_darts.likelihoods import likelihood_row

        y_norm, _, _ = self.core.fuse(vision_features, cls, patch_tokens, variate_tokens)
        n = self.core.n_targets
        params = denormalize_parameters(
            y_norm,
            mean[..., :n].transpose(1, 2),
            std[..., :n].transpose(1, 2),
            self.likelihood,
        ).permute(0, 2, 1, 3)  # Darts' layout: [batch, time, component, parameter]
        row = likelihood_row(self.likelihood)
        if row is None or not row.is_location_scale:
            return params
        return torch.stack(self.likelihood._params_from_output(params), dim=-1)


class ViTGraph(nn.Module):
    """CLIP-normalised pixels ``[M, 3, S, S]`` -> the frozen ViT's pooled features ``[M, F]``.

    Only the ViT is exported: the runtime draws the images with the library's rasteriser
    (:mod:`timesclip_export.runtime.vision`), whose CPU kernel is numba code ``torch.export`` cannot
    trace and is many times faster than the dense torch field it could.
    """

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.backbone = vision.backbone
        self.interpolate_pos = vision.interpolate_pos

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.backbone(pixel_values=pixels, interpolate_pos_encoding=self.interpolate_pos)
        return out.pooler_output


def vision_features(core: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The trained model's own ViT features of scaled windows ``[B, T, N]`` -> ``[B, N, F]``."""
    from timesclip_darts.preprocessor import instance_normalize

    with torch.no_grad():
        return core.vision.encode(instance_normalize(windows)[0])


def vision_pixels(core: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The images the trained model's ViT sees for ``windows``, ``[B*N, 3, S, S]``."""
    from timesclip_darts.preprocessor import instance_normalize

    with torch.no_grad():
        return core.vision.render(instance_normalize(windows)[0]).flatten(0, 1)


# ------------------------------------------------------------------------------- exporting
def example_windows(batch: int, time_steps: int, n_variates: int, seed: int = 0) -> torch.Tensor:
    """Random-walk windows ``[batch, T, N]``: line plots with structure, for tracing and checks."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randn(batch, time_steps, n_variates, generator=generator)
    return steps.cumsum(dim=1) * 0.3


def export_core(core: nn.Module) -> nn.Module:
    """A copy of the trained core in eval mode on the CPU (a model trained or loaded on a GPU
    exports the same files), its text encoder on eager attention (the form ORT's optimizer
    fuses into ``Attention``; numerically the same as SDPA)."""
    cache = getattr(core.vision, "cache", None)  # the training feature cache stays behind
    memo = {id(cache): None} if cache is not None else None
    core = copy.deepcopy(core, memo=memo).eval().to("cpu")
    core.language.text_model.set_attn_implementation("eager")
    return core


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=1 << 20)


def _export_onnx(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
) -> None:
    """Write ``module`` as an ONNX graph: dynamo exporter, one dynamic batch axis shared by every
    input, weights inside the file."""
    batch = _batch_dim()
    with quiet(), torch.no_grad():
        torch.onnx.export(
            module.eval(),
            inputs,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes={name: {0: batch} for name in input_names},
            external_data=False,
            verbose=False,
        )


def export_text(core: nn.Module, path: Path, example: torch.Tensor, opset: int) -> None:
    """Write ``text.onnx`` (dynamo exporter, dynamic batch)."""
    _export_onnx(TextGraph(core), (example,), path, opset, TEXT_INPUTS, TEXT_OUTPUTS)


def fusion_example(core: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The fusion graph's inputs for ``example`` windows, computed by the torch model."""
    with torch.no_grad():
        cls, patch_tokens, variate_tokens, mean, std = TextGraph(core)(example)
    return vision_features(core, example), cls, patch_tokens, variate_tokens, mean, std


def export_fusion(
    core: nn.Module,
    likelihood: nn.Module | None,
    path: Path,
    inputs: tuple[torch.Tensor, ...],
    opset: int,
) -> None:
    """Write ``fusion.onnx`` (dynamo exporter, dynamic batch)."""
    graph = FusionGraph(core, likelihood)
    _export_onnx(graph, inputs, path, opset, FUSION_INPUTS, FUSION_OUTPUTS)


def export_vision(core: nn.Module, path: Path, example: torch.Tensor) -> None:
    """Write ``vision.pt2``: the frozen ViT as a ``torch.export`` program with a dynamic batch
    of images (traced on the images of the ``example`` windows).

    Why ``torch.export``: it stores the graph (as JSON) and the weights (raw bytes, no pickle)
    and loads without transformers; the program runs on CPU or CUDA (moved with
    ``move_to_device_pass``) and under autocast (fp16/bf16) like any torch code.
    """
    module = ViTGraph(core.vision).eval()
    pixels = vision_pixels(core, example)
    with quiet(), torch.no_grad():
        program = torch.export.export(
            module, (pixels,), dynamic_shapes={"pixels": {0: _batch_dim()}}
        )
    program.example_inputs = None  # keep sample data out of the bundle
    torch.export.save(program, str(path))


def export_vision_onnx(core: nn.Module, path: Path, example: torch.Tensor, opset: int) -> None:
    """Write ``vision.onnx``: the frozen ViT as an ONNX graph (dynamo exporter, dynamic batch of
    images, traced on the images of the ``example`` windows), its attention in eager form for
    the optimizer to fuse. The backbone's attention setting is restored afterwards."""
    backbone = core.vision.backbone
    attention = backbone.config._attn_implementation
    pixels = vision_pixels(core, example)
    backbone.set_attn_implementation("eager")
    try:
        graph = ViTGraph(core.vision)
        _export_onnx(graph, (pixels,), path, opset, VISION_INPUTS, VISION_OUTPUTS)
    finally:
        if attention is not None:
            backbone.set_attn_implementation(attention)


def optimize_graph(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Run ORT's transformer optimizer (``model_type='clip'``) and count the fused operators
    of the written graph."""
    import onnx
    from onnxruntime.transformers import optimizer

    with quiet():
        model = optimizer.optimize_model(
            str(source),
            model_type="clip",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=1,
            use_gpu=False,
        )
        model.save_model_to_file(str(target))
    counts = Counter(node.op_type for node in onnx.load(str(target)).graph.node)
    return {op: counts[op] for op in FUSED_OPERATORS if counts[op]}


def graph_max_error(
    path: Path, feeds: dict[str, torch.Tensor], expected: tuple[torch.Tensor, ...]
) -> float:
    """Largest absolute difference between an ONNX graph (ORT, CPU) and the torch outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {name: value.numpy() for name, value in feeds.items()})
    pairs = zip(outputs, expected, strict=True)
    return max(float(abs(torch.from_numpy(out) - ref).max()) for out, ref in pairs)
