"""Writing a bundle from a trained ``TimesCLIPModel``: atomically, optionally signed.

The layout is described in :mod:`timesclip_export.bundle.format`, which reads bundles back;
this module imports Darts and the model package (lazily, inside the functions); the runtime
never imports it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from timesclip_export.bundle.format import (
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILES,
    MANIFEST,
    OPTIMIZED_FILES,
    RENDER_MODULE,
    VISION_FILE,
    library_versions,
    load_vision_program,
    renderer_version,
    sha256_file,
)
from timesclip_export.errors import ExportError
from timesclip_export.runtime.vision import window_vision

from timesclip_darts.atomic_files import staged_folder
from timesclip_darts.checks import MAX_ABS_VALUE
from timesclip_darts.likelihoods import (
    UnsupportedLikelihoodError,
    likelihood_row,
    likelihood_spec,
)

# Largest error allowed between an exported piece and the torch model at export time.
EXPORT_TOLERANCE = 1e-4


def export_bundle(
    model: Any,
    out_dir: str | Path,
    *,
    scaler: dict | str | Path | bool | None = None,
    opset: int | None = None,
    optimize: bool = True,
    overwrite: bool = False,
    sign_key: str | Path | None = None,
) -> dict:
    """Export a trained ``TimesCLIPModel`` (or the path it was saved to) as a bundle in
    ``out_dir`` and return its manifest.

    ``scaler``: ``None`` uses ``<model path>.scaler.json`` when the model is a path and that file
    exists; a path or a ``save_scaler_json`` dict uses that scaler; ``False`` exports without.
    The bundle is written to a temporary sibling folder and renamed into place only when
    complete, so a failure (an error, a full disk, a kill) never leaves a half bundle at
    ``out_dir``, and a bundle already there survives unless the new one is complete.
    ``overwrite`` must be set to replace an existing bundle. ``sign_key``: a PEM Ed25519
    private key (``timesclip-darts keygen``) to sign the manifest with (``manifest.sig``, written
    before the rename, so a bundle is never in place unsigned; see
    :mod:`timesclip_export.bundle.signing`).
    """
    from timesclip_export.exporter import graphs

    opset = graphs.DEFAULT_OPSET if opset is None else opset
    if opset not in graphs.SUPPORTED_OPSETS:
        raise ExportError(
            f"opset {opset} is not supported; use {min(graphs.SUPPORTED_OPSETS)}.."
            f"{max(graphs.SUPPORTED_OPSETS)} (default {graphs.DEFAULT_OPSET})"
        )
    signing_key = None
    if sign_key is not None:  # read first: a bad key fails before minutes of export
        from timesclip_export.bundle.signing import load_private_key

        signing_key = load_private_key(sign_key)
    model, model_path = _load_model(model)
    scaler_payload = _resolve_scaler(scaler, model_path)
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    # _check_target has refused what may not be replaced (not a bundle; a bundle without
    # overwrite); an empty folder is replaced as a bundle is.
    with staged_folder(out_dir, overwrite=True) as temporary:
        manifest = _write_bundle(model, temporary, scaler_payload, opset, optimize, signing_key)
        if signing_key is not None:
            from timesclip_export.bundle.signing import sign_manifest

            sign_manifest(temporary, signing_key, MANIFEST)
    return manifest


def _load_model(model: Any) -> tuple[Any, Path | None]:
    if isinstance(model, (str, Path)):
        from timesclip_darts import TimesCLIPModel

        return TimesCLIPModel.load(str(model)), Path(model)  # clear errors for bad files
    return model, None


def _resolve_scaler(
    scaler: dict | str | Path | bool | None, model_path: Path | None
) -> dict | None:
    from timesclip_darts.data import load_scaler_json

    if scaler is False:
        return None
    if scaler is None or scaler is True:
        if model_path is None:
            if scaler is True:
                raise ExportError("scaler=True needs the model's path to find <model>.scaler.json")
            return None
        candidate = Path(f"{model_path}.scaler.json")
        if not candidate.is_file():
            if scaler is True:
                raise ExportError(f"{candidate} does not exist")
            return None
        return load_scaler_json(candidate)
    if isinstance(scaler, dict):
        return scaler
    return load_scaler_json(scaler)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / MANIFEST).is_file():
        raise ExportError(
            f"{out_dir} exists and is not a bundle (no {MANIFEST}); refusing to replace it"
        )
    if not overwrite:
        raise ExportError(f"{out_dir} holds a bundle; pass --overwrite to replace it")


def _check_exportable(model: Any) -> None:
    from timesclip_darts.darts_model import TimesCLIPModel

    if not isinstance(model, TimesCLIPModel):
        raise ExportError(f"expected a TimesCLIPModel, got {type(model).__name__}")
    if model.model is None:
        raise ExportError("the model has not been fitted or loaded yet; nothing to export")
    if model.model.core.is_ablated:
        raise ExportError(
            "this model has a part switched off (use_vision=False or use_variate_selection="
            "False): ablation variants are for benchmarks; export the full model"
        )
    if model.model.use_reversible_instance_norm:
        raise ExportError(
            "models trained with use_reversible_instance_norm=True cannot be exported: the "
            "runtime does not apply Darts' RINorm (TimesCLIP already normalises each window)"
        )
    try:
        likelihood_row(model.likelihood)
    except UnsupportedLikelihoodError as err:
        raise ExportError(f"cannot be exported: {err}") from err


def _time_spec(freq: Any) -> dict:
    """Frequency of the training series: a pandas offset (datetime index) or an integer step."""
    import pandas as pd

    if freq is None:
        return {"index": None, "freq": None, "step_ns": None, "step": None}
    if isinstance(freq, (int,)) and not isinstance(freq, bool):
        return {"index": "range", "freq": None, "step_ns": None, "step": int(freq)}
    offset = pd.tseries.frequencies.to_offset(freq)
    try:
        step_ns = int(pd.Timedelta(offset).value)
    except ValueError:  # calendar offsets (month starts, business days) have no fixed length
        step_ns = None
    return {"index": "datetime", "freq": offset.freqstr, "step_ns": step_ns, "step": None}


def _model_spec(model: Any, core: Any) -> dict:
    n_covariates = core.n_variates - core.n_targets
    targets = list(getattr(model, "target_components", None) or [])
    covariates = list(getattr(model, "past_covariate_components", None) or [])
    if len(targets) != core.n_targets or len(covariates) != n_covariates:
        targets = [f"target_{i}" for i in range(core.n_targets)]
        covariates = [f"covariate_{i}" for i in range(n_covariates)]
    return {
        "class": type(model).__name__,
        "input_chunk_length": int(model.input_chunk_length),
        "output_chunk_length": int(model.output_chunk_length),
        "output_chunk_shift": int(model.output_chunk_shift),
        "targets": targets,
        "past_covariates": covariates,
        "inputs": targets + covariates,
        "n_variates": int(core.n_variates),
        "n_targets": int(core.n_targets),
        "d_model": int(core.vision.projection.out_features),
        "n_patches": int(core.n_patches),
        "vision_feature_dim": int(core.vision.feature_dim),
        "image_size": int(core.image_size),
        "line_width": _line_width(core),
        "max_abs_value": MAX_ABS_VALUE,
        "backbone": core.backbone_info.describe(),
        "backbone_pretrained": {
            "vision": core.backbone_info.vision_pretrained,
            "text": core.backbone_info.text_pretrained,
        },
        "likelihood": likelihood_spec(model.likelihood),
    }


def _line_width(core: Any) -> float:
    from timesclip_darts.line_raster import default_line_width

    width = core.vision.line_width
    return float(default_line_width(core.image_size) if width is None else width)


def _check_scaler(scaler: dict | None, inputs: list[str]) -> dict | None:
    if scaler is None:
        return None
    unknown = [c for c in scaler["components"] if c not in inputs]
    if unknown:
        raise ExportError(
            f"the scaler covers column(s) {unknown} that are not model inputs {inputs}"
        )
    return {
        "kind": scaler["kind"],
        "components": list(scaler["components"]),
        "mean": [float(v) for v in scaler["mean"]],
        "scale": [float(v) for v in scaler["scale"]],
    }


def _write_bundle(
    model: Any,
    folder: Path,
    scaler: dict | None,
    opset: int,
    optimize: bool,
    signing_key: Any = None,
) -> dict:
    import torch
    from timesclip_export.exporter import graphs

    _check_exportable(model)
    core = graphs.export_core(model.core)
    spec = _model_spec(model, core)
    scaler = _check_scaler(scaler, spec["inputs"])
    example = graphs.example_windows(3, spec["input_chunk_length"], spec["n_variates"])
    check = graphs.example_windows(5, spec["input_chunk_length"], spec["n_variates"], seed=1)
    text_config = core.language.text_model.config

    vision_config = core.vision.backbone.config
    graphs.export_vision(core, folder / VISION_FILE, example)
    graphs.export_vision_onnx(core, folder / GRAPH_FILES["vision"], example, opset)
    graphs.export_text(core, folder / GRAPH_FILES["text"], example, opset)
    graphs.export_fusion(
        core,
        model.likelihood,
        folder / GRAPH_FILES["fusion"],
        graphs.fusion_example(core, example),
        opset,
    )
    heads = {
        "vision": (vision_config.num_attention_heads, vision_config.hidden_size),
        "text": (text_config.num_attention_heads, text_config.hidden_size),
        "fusion": (core.selection.attention.num_heads, spec["d_model"]),
    }
    fused: dict[str, dict[str, int]] = {}
    if optimize:
        for part, (num_heads, hidden_size) in heads.items():
            fused[part] = graphs.optimize_graph(
                folder / GRAPH_FILES[part], folder / OPTIMIZED_FILES[part], num_heads, hidden_size
            )

    # Every piece against the torch model on other windows than the traced ones.
    errors: dict[str, float] = {}
    with torch.no_grad():
        pixels = graphs.vision_pixels(core, check)
        text_ref = graphs.TextGraph(core)(check)
        fusion_in = graphs.fusion_example(core, check)
        fusion_ref = (graphs.FusionGraph(core, model.likelihood)(*fusion_in),)
        vision = window_vision(load_vision_program(folder / VISION_FILE, "cpu"), spec)
        errors[VISION_FILE] = float((vision(check) - fusion_in[0]).abs().max())
    features_ref = (fusion_in[0].flatten(0, 1),)  # [B*N, F]: one row per image
    pieces = {
        "vision": (dict(zip(graphs.VISION_INPUTS, (pixels,), strict=True)), features_ref),
        "text": ({"x": check}, text_ref),
        "fusion": (dict(zip(graphs.FUSION_INPUTS, fusion_in, strict=True)), fusion_ref),
    }
    for part, (feeds, expected) in pieces.items():
        files = [GRAPH_FILES[part]] + ([OPTIMIZED_FILES[part]] if optimize else [])
        for name in files:
            errors[name] = graphs.graph_max_error(folder / name, feeds, expected)
    bad = {name: err for name, err in errors.items() if not err <= EXPORT_TOLERANCE}
    if bad:
        raise ExportError(f"exported pieces differ from the torch model: {bad}")

    files = sorted(p.name for p in folder.iterdir())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": spec,
        "time": _time_spec(getattr(model, "training_freq", None)),
        "scaler": scaler,
        "dtypes": {
            "input": "float32",
            "graphs": "float32",
            "vision": "float32",
            "vision_autocast": ["float16", "bfloat16"],
        },
        "vision": {
            "file": VISION_FILE,
            "format": "torch.export (ExportedProgram, torch.export.save)",
            "onnx_file": GRAPH_FILES["vision"],
            "input": "pixels [images, 3, image_size, image_size] float32, CLIP-normalised",
            "output": "features [images, vision_feature_dim] float32",
            "renderer": {
                "module": RENDER_MODULE,
                "version": renderer_version(),
                "image_size": spec["image_size"],
                "line_width": spec["line_width"],
            },
        },
        "onnx": {
            "opset": opset,
            "exporter": "torch.onnx.export(dynamo=True)",
            "text_attention": "eager",
            "vision_attention": "eager",
            "graphs": {
                "vision": {
                    "file": GRAPH_FILES["vision"],
                    "inputs": list(graphs.VISION_INPUTS),
                    "outputs": list(graphs.VISION_OUTPUTS),
                },
                "text": {
                    "file": GRAPH_FILES["text"],
                    "inputs": list(graphs.TEXT_INPUTS),
                    "outputs": list(graphs.TEXT_OUTPUTS),
                },
                "fusion": {
                    "file": GRAPH_FILES["fusion"],
                    "inputs": list(graphs.FUSION_INPUTS),
                    "outputs": list(graphs.FUSION_OUTPUTS),
                    "forecast_layout": "[batch, output_chunk_length, n_targets, n_parameters]",
                },
            },
            "optimized": {
                part: {
                    "file": OPTIMIZED_FILES[part],
                    "tool": "onnxruntime.transformers.optimizer (model_type='clip', opt_level=1)",
                    "fused_operators": fused[part],
                }
                for part in fused
            },
        },
        "export_max_abs_error": errors,
        "versions": library_versions(),
        "files": {
            name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
            for name in files
        },
    }
    if signing_key is not None:
        from timesclip_export.bundle.signing import signature_entry

        manifest["signature"] = signature_entry(signing_key)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
