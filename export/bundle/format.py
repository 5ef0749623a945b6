"""Bundles: reading one back safely (JSON manifest, checksums, versions, signature, no pickle).
Writing one from a trained ``TimesCLIPModel`` is :mod:`timesclip_export.exporter.writer`.

A bundle is a folder::

    manifest.json     what the model is, how the files were made, a sha256 for every file
    vision.pt2        torch.export program: the frozen ViT (pixels -> features), torch path
    vision.onnx       the same ViT as an ONNX graph: the torch-free path
    text.onnx         language branch (x -> CLS, patch and variate tokens, norm statistics)
    fusion.onnx       projection, selection, generator, de-normalisation (-> forecast)
    vision.opt.onnx   the ONNX graphs after ONNX Runtime's transformer optimizer
    text.opt.onnx
    fusion.opt.onnx
    manifest.sig      optional: Ed25519 signature of manifest.json (:mod:`.signing`)

The runtime draws the ViT's pixels with ``timesclip_darts.line_raster`` (its version is in the
manifest). Reading needs only the standard library and numpy (the runtime adds onnxruntime,
torch for ``vision.pt2``, and ``cryptography`` when a trusted key is given); writing imports
Darts and the model package. Format 2 bundles (no ``vision.onnx``) still load, for the torch
vision path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import warnings
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from timesclip_export.bundle.signing import SIGNATURE
from timesclip_export.errors import BundleError, BundleVersionError

FORMAT = "timesclip-darts-bundle"
FORMAT_VERSION = 3  # 3: adds vision.onnx (and vision.opt.onnx)
# Versions this runtime reads: 2 (vision.pt2 alone: the torch vision path only) and 3.
READABLE_VERSIONS = (2, 3)
MANIFEST = "manifest.json"
VISION_FILE = "vision.pt2"
GRAPH_FILES = {"vision": "vision.onnx", "text": "text.onnx", "fusion": "fusion.onnx"}
OPTIMIZED_FILES = {
    "vision": "vision.opt.onnx",
    "text": "text.opt.onnx",
    "fusion": "fusion.opt.onnx",
}
# First onnxruntime release that runs each ONNX opset.
_ORT_FOR_OPSET = {18: "1.14", 19: "1.16", 20: "1.17", 21: "1.20", 22: "1.20", 23: "1.22"}
# The rasteriser whose pixels the ViT saw; its version is recorded and checked at load.
RENDER_MODULE = "timesclip_darts.line_raster"
_VERSIONED = ("torch", "onnx", "onnxruntime", "transformers", "darts", "numpy", "timesclip-darts")


# ------------------------------------------------------------------------------- helpers
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Installed versions of what made (or runs) a bundle; ``None`` for what is absent."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["onnxruntime"] is None:  # the GPU build installs under another distribution
        for name in ("onnxruntime-gpu", "onnxruntime-directml"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions["onnxruntime"] = metadata.version(name)
                break
    return versions


def renderer_version() -> int:
    """Version of the installed rasteriser's pixels (``line_raster.RENDERER_VERSION``)."""
    from timesclip_darts import line_raster

    return int(line_raster.RENDERER_VERSION)


def _release(version: str | None) -> tuple[int, ...]:
    """``'2.13.0+cpu'`` -> ``(2, 13)``: the part that must agree between exporter and runtime."""
    if not version:
        return ()
    parts = version.split("+")[0].split(".")[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)


# ------------------------------------------------------------------------------- reading
def read_manifest(bundle: str | Path, trusted_key: str | Path | bytes | None = None) -> dict:
    """The manifest of a bundle folder, after checking it is one of this format. With
    ``trusted_key`` (an Ed25519 public key, PEM path or bytes), the manifest's bytes must carry a
    valid signature by it (``BundleSignatureError`` otherwise); the bytes checked are the bytes
    parsed."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle folder {bundle} does not exist")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} holds no {MANIFEST}: not a bundle, or a damaged one")
    data = path.read_bytes()
    if trusted_key is not None:
        from timesclip_export.bundle.signing import verify_manifest

        verify_manifest(data, bundle, trusted_key)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a timesclip-darts bundle manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise BundleVersionError(
            f"bundle format version {manifest.get('format_version')} in {path}; this runtime "
            f"reads versions {list(READABLE_VERSIONS)}: re-export the model with this version"
        )
    return manifest


def has_onnx_vision(manifest: dict) -> bool:
    """Whether the bundle holds the ViT as an ONNX graph (format 3 on)."""
    return "vision" in (manifest.get("onnx", {}).get("graphs") or {})


def verify_files(bundle: str | Path, manifest: dict) -> None:
    """Every listed file is there, unchanged (sha256), and nothing else is (but the manifest and
    its signature, which cannot list themselves)."""
    bundle = Path(bundle)
    listed = manifest.get("files") or {}
    present = {p.name for p in bundle.iterdir()} - {MANIFEST, SIGNATURE}
    missing = sorted(set(listed) - present)
    if missing:
        raise BundleError(f"bundle {bundle} is missing file(s) {missing}")
    extra = sorted(present - set(listed))
    if extra:
        raise BundleError(
            f"bundle {bundle} holds file(s) {extra} its manifest does not list; "
            "a bundle is written whole by `timesclip-darts export`, never edited"
        )
    for name, entry in listed.items():
        if sha256_file(bundle / name) != entry.get("sha256"):
            raise BundleError(
                f"checksum mismatch for {name} in {bundle}: the file changed or was damaged "
                "after export; export the model again"
            )


def check_versions(
    manifest: dict, optimized: bool, allow_mismatch: bool = False, vision: str = "torch"
) -> list[str]:
    """Compare the exporter's library versions with this machine's; mismatches that can change
    results raise ``BundleVersionError`` (or only warn with ``allow_mismatch``). Returns the
    problems found. ``vision``: the path that will run, ``"torch"`` (``vision.pt2``, which
    needs the exporter's torch release) or ``"onnx"``."""
    written = manifest.get("versions", {})
    here = library_versions()
    problems = []
    if vision == "torch" and _release(written.get("torch")) != _release(here["torch"]):
        problems.append(
            f"vision.pt2 was written by torch {written.get('torch')} and this is torch "
            f"{here['torch']}: torch.export programs are only guaranteed within one release"
        )
    drawn_by = manifest.get("vision", {}).get("renderer", {}).get("version")
    if drawn_by != renderer_version():
        problems.append(
            f"the bundle's model saw images of rasteriser version {drawn_by}; the installed "
            f"{RENDER_MODULE} draws version {renderer_version()}: install the release that "
            "exported the bundle, or export again"
        )
    opset = manifest.get("onnx", {}).get("opset")
    needed = _ORT_FOR_OPSET.get(opset, "99")
    if _release(here["onnxruntime"]) < _release(needed):
        problems.append(
            f"the graphs use ONNX opset {opset}, which needs onnxruntime >= {needed}; "
            f"this is {here['onnxruntime']}"
        )
    if optimized and _release(here["onnxruntime"]) < _release(written.get("onnxruntime")):
        problems.append(
            f"the optimised graphs hold operators of onnxruntime {written.get('onnxruntime')}; "
            f"this is {here['onnxruntime']} (use the plain graphs: optimized=False / --plain)"
        )
    if problems and not allow_mismatch:
        raise BundleVersionError("; ".join(problems))
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return problems


# Where torch.export.load (torch/export/pt2_archive/_package.py) unpickles, by archive entry:
# payload configs' entries flagged use_pickle (torch.load(weights_only=False)); constants stored
# as opaque_obj_* (pickle.loads, whatever their flag) or custom_obj_* (TorchScript's pickler);
# legacy .pt payloads and sample inputs (torch.load, retried with weights_only=False when the
# safe load fails); AOTInductor packages (compiled shared libraries).
_CONSTANTS_DIR = "data/constants/"
_TENSOR_CONSTANT_PREFIX = "tensor_"
_TORCH_LOADED = ("data/sample_inputs/", "data/weights/", "data/constants/")
_LEGACY_ENTRIES = ("serialized_state_dict.pt", "serialized_constants.pt")
_LEGACY_EXAMPLE_INPUTS = "serialized_example_inputs.pt"


def check_program_safe(path: Path) -> None:
    """Refuse a ``.pt2`` archive that would unpickle anything (or load native code) on load.

    ``torch.export.load`` unpickles payload entries flagged ``use_pickle``, constants stored
    under ``opaque_obj_*`` (with ``pickle.loads``, whatever their flag) or ``custom_obj_*``, and
    ``.pt`` payloads (sample inputs, legacy weights) that do not load as plain tensors; it loads
    AOTInductor packages as shared libraries. Bundles hold plain tensors only."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_entry(path, archive, info)
    except zipfile.BadZipFile as err:
        raise BundleError(f"{path.name} is not a torch.export archive ({err})") from err


def _check_entry(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """One archive entry of :func:`check_program_safe`."""
    name = info.filename
    inner = name.split("/", 1)[1] if "/" in name else name  # below the archive's root folder
    if inner.startswith("data/aotinductor/"):
        raise BundleError(f"{path.name} holds an AOTInductor package ({name}); refusing to load")
    if name.endswith("_config.json"):
        try:
            config = json.loads(archive.read(name)).get("config", {})
            entries = {k: v for k, v in config.items() if isinstance(v, dict)}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise BundleError(f"{path.name}: {name} is not a payload config ({err})") from err
        pickled = [k for k, v in entries.items() if v.get("use_pickle")]
        if pickled:
            raise BundleError(
                f"{path.name} holds pickled objects ({pickled[:3]}); refusing to load"
            )
        if inner.startswith(_CONSTANTS_DIR):
            objects = [
                f"{k} ({v.get('path_name')})"
                for k, v in entries.items()
                if not str(v.get("path_name", "")).startswith(_TENSOR_CONSTANT_PREFIX)
            ]
            if objects:
                raise BundleError(
                    f"{path.name} holds constants that are objects, not tensors ({objects[:3]}): "
                    "torch.export.load would unpickle them; refusing to load"
                )
        return
    torch_loaded = inner.startswith(_TORCH_LOADED) and name.endswith(".pt")
    legacy = inner in _LEGACY_ENTRIES or inner == _LEGACY_EXAMPLE_INPUTS
    if (torch_loaded or legacy) and info.file_size:
        import torch

        try:
            torch.load(io.BytesIO(archive.read(name)), weights_only=True)
        except Exception as err:
            raise BundleError(
                f"{path.name} holds {name}, which is not plain tensors: torch.export.load would "
                "unpickle it; refusing to load"
            ) from err


def load_vision_program(path: Path, device: str) -> Any:
    """The vision path as a callable module on ``device`` (after the safety check)."""
    import torch
    import torch.export.passes

    check_program_safe(path)
    program = torch.export.load(str(path))
    if device != "cpu":
        program = torch.export.passes.move_to_device_pass(program, device)
    return program.module()
