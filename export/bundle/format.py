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

Loading reads each file once: :func:`read_manifest` reads ``manifest.json`` (and, with a trusted
key, ``manifest.sig``) once and parses the bytes it checked; :func:`read_bundle_files` reads each
file to load once, checks those bytes' sha256 against the manifest and returns them, and the
runtime loads from these bytes (ONNX Runtime sessions, ``torch.export.load`` after
:func:`check_program_safe`), never from the path again. The runtime draws the ViT's pixels with
``timesclip_darts.line_raster`` (its version is in the manifest). Reading needs only the
standard library and numpy (the runtime adds onnxruntime, torch for ``vision.pt2``, and
``cryptography`` when a trusted key is given); writing imports Darts and the model package.
Format 2 bundles (no ``vision.onnx``) still load, for the torch vision path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import re
import warnings
import zipfile
from collections.abc import Iterable
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
    valid signature by it (``BundleSignatureError`` otherwise). The manifest and its signature
    are each read once: the bytes checked are the bytes parsed."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle folder {bundle} does not exist")
    path = bundle / MANIFEST
    data = _read_or_none(path)
    if data is None:
        raise BundleError(f"{bundle} holds no {MANIFEST}: not a bundle, or a damaged one")
    if trusted_key is not None:
        from timesclip_export.bundle.signing import verify_manifest

        verify_manifest(data, _read_or_none(bundle / SIGNATURE), bundle, trusted_key)
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


def _read_or_none(path: Path) -> bytes | None:
    """The bytes of the file at ``path``, or ``None`` when there is no file there."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def has_onnx_vision(manifest: dict) -> bool:
    """Whether the bundle holds the ViT as an ONNX graph (format 3 on)."""
    return "vision" in (manifest.get("onnx", {}).get("graphs") or {})


def read_listed(bundle: Path, manifest: dict, name: str, verify: bool = True) -> bytes:
    """The bytes of the bundle's file ``name``, read once; with ``verify``, after checking that
    their sha256 is the one the manifest lists. Load from these bytes, never from the path
    again: the file may change after it was read."""
    data = _read_or_none(Path(bundle) / name)
    if data is None:
        raise BundleError(f"bundle {bundle} is missing file(s) {[name]}")
    if verify:
        _check_sha256(bundle, manifest, name, hashlib.sha256(data).hexdigest())
    return data


def read_bundle_files(
    bundle: str | Path, manifest: dict, names: Iterable[str], verify: bool = True
) -> dict[str, bytes]:
    """The bytes of the files ``names`` to load, each read once (:func:`read_listed`). With
    ``verify``, the folder must hold the listed files and nothing else (but the manifest and
    its signature, which cannot list themselves), and the listed files that are not loaded are
    hashed as well, so a damaged bundle is refused whole."""
    bundle = Path(bundle)
    listed = manifest.get("files") or {}
    if verify:
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
    files = {name: read_listed(bundle, manifest, name, verify) for name in names}
    if verify:
        for name in listed:
            if name not in files:
                _check_sha256(bundle, manifest, name, sha256_file(bundle / name))
    return files


def verify_files(bundle: str | Path, manifest: dict) -> None:
    """Every listed file is there, unchanged (sha256), and nothing else is: the check of
    :func:`read_bundle_files` for callers that load nothing."""
    read_bundle_files(bundle, manifest, ())


def _check_sha256(bundle: Path, manifest: dict, name: str, digest: str) -> None:
    entry = (manifest.get("files") or {}).get(name)
    if entry is None:
        raise BundleError(f"the manifest of bundle {bundle} does not list {name}")
    if digest != entry.get("sha256"):
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


# What a vision program may hold: the archive torch.export.save writes for one plain program
# named "model" (torch/export/pt2_archive/_package.py), entry names below the archive's root folder.
# torch.export.load unpickles or runs whatever else it finds: payloads flagged use_pickle
# (torch.load(weights_only=False)), constants stored as opaque_obj_*/custom_obj_* (pickle),
# sample inputs that do not load with weights_only=True (retried without), legacy .pt payloads,
# AOTInductor packages (shared libraries); and from the program's JSON it executes guards_code
# (exec) and evaluates every symbolic expression (sympy.sympify, an eval) and calls every node's
# target (any torch.* attribute by name).
_FIXED_ENTRIES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        "models/model.json",
        "data/sample_inputs/model.pt",
    }
)
# Payload config -> (its folder, the prefix of the plain tensor payloads it may name).
_PAYLOADS = {
    "data/weights/model_weights_config.json": ("data/weights/", "weight_"),
    "data/constants/model_constants_config.json": ("data/constants/", "tensor_"),
}
_NODE_TARGETS = ("torch.ops.aten.", "_operator.")
# Symbolic sizes as torch.export writes them (``Symbol('s81', positive=True, integer=True)``,
# ``s81 + 1``): sympy constructors, symbol names, numbers and operators; nothing that reaches an
# attribute, a builtin or a dunder through sympify's eval.
_EXPR_TOKEN = re.compile(
    r"\s+|[A-Za-z]\w*|'[a-z]+\d*'|\d+(?:\.\d+)?(?:e[+-]?\d+)?|\*\*|[-+*/%(),=<>!&|~]"
)
_EXPR_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs FloorDiv CeilDiv CleanDiv "
    "ModularIndexing PythonMod FloorToInt CeilToInt TruncToInt IntTrueDiv FloatTrueDiv "
    "ToFloat Eq Ne Lt Le Gt Ge And Or Not True False oo positive integer nonnegative real "
    "finite".split()
)
_SYMBOL = re.compile(r"[a-z]+\d+")


def check_program_safe(source: Path | bytes, name: str = VISION_FILE) -> None:
    """Refuse a ``.pt2`` archive that holds anything but a plain exported program: the entries
    ``torch.export.save`` writes for one program (format, version, byte order,
    ``models/model.json``, its payload configs and sample inputs), payloads that are raw tensors
    named by a config that does not flag them ``use_pickle``, a graph that calls ATen operators
    only, no guard code and symbolic sizes of sympy constructors only. Anything else (an
    unknown entry, an AOTInductor package, pickled or opaque/custom objects, sample inputs that
    do not load with ``weights_only=True``) is refused with a :class:`BundleError` naming it.
    ``source`` is the archive's bytes (or a path, read once)."""
    data = _archive_bytes(source)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_archive(name, archive)
    except zipfile.BadZipFile as err:
        raise BundleError(f"{name} is not a torch.export archive ({err})") from err


def _archive_bytes(source: Path | bytes) -> bytes:
    """An archive given as its bytes or as a path (read once)."""
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _check_archive(name: str, archive: zipfile.ZipFile) -> None:
    """The allowlist of :func:`check_program_safe` over an open archive."""
    names = archive.namelist()
    if not names:
        raise BundleError(f"{name} is an empty archive, not a torch.export program")
    if len(set(names)) != len(names):  # zipfile and torch's reader may pick different copies
        twice = sorted({n for n in names if names.count(n) > 1})
        raise BundleError(f"{name} holds entries twice ({twice[:3]}); refusing to load")
    root = names[0].split("/", 1)[0] + "/"
    inner = {}
    for entry in names:
        if not entry.startswith(root):
            raise BundleError(f"{name} holds {entry} outside its root folder; refusing to load")
        inner[entry[len(root) :]] = entry
    payloads: set[str] = set()
    for config_name, (folder, prefix) in _PAYLOADS.items():
        if config_name not in inner:
            raise BundleError(f"{name} has no {config_name}: not a plain torch.export program")
        config = archive.read(inner[config_name])
        payloads |= {folder + p for p in _check_payload_config(name, config, config_name, prefix)}
    for entry in inner:
        if entry.startswith("data/aotinductor/"):
            raise BundleError(f"{name} holds an AOTInductor package ({root}{entry}); refusing")
        if entry not in _FIXED_ENTRIES and entry not in _PAYLOADS and entry not in payloads:
            raise BundleError(
                f"{name} holds {root}{entry}, which a plain exported program does not; "
                "refusing to load"
            )
    if "models/model.json" not in inner:
        raise BundleError(f"{name} has no models/model.json: not a torch.export program")
    _check_program_json(name, archive.read(inner["models/model.json"]))
    samples = inner.get("data/sample_inputs/model.pt")
    if samples is not None and archive.getinfo(samples).file_size:
        import torch

        try:
            torch.load(io.BytesIO(archive.read(samples)), weights_only=True)
        except Exception as err:
            raise BundleError(
                f"{name} holds {samples}, which is not plain tensors: torch.export.load would "
                "unpickle it; refusing to load"
            ) from err


def _check_payload_config(name: str, data: bytes, config_name: str, prefix: str) -> set[str]:
    """The payload entries a weights or constants config names (relative to its folder), after
    checking each is a raw tensor payload (``use_pickle`` false, tensor metadata present, named
    ``<prefix><n>``)."""
    try:
        config = json.loads(data)["config"]
        entries = {k: v for k, v in config.items() if isinstance(v, dict)}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise BundleError(f"{name}: {config_name} is not a payload config ({err})") from err
    if len(entries) != len(config):
        raise BundleError(f"{name}: {config_name} is not a payload config")
    pickled = [k for k, v in entries.items() if v.get("use_pickle")]
    if pickled:
        raise BundleError(f"{name} holds pickled objects ({pickled[:3]}); refusing to load")
    objects = [
        f"{k} ({v.get('path_name')})"
        for k, v in entries.items()
        if not re.fullmatch(rf"{prefix}\d+", str(v.get("path_name"))) or not v.get("tensor_meta")
    ]
    if objects:
        raise BundleError(
            f"{name} holds constants that are objects, not tensors ({objects[:3]}) in "
            f"{config_name}: torch.export.load would unpickle them; refusing to load"
        )
    return {str(v["path_name"]) for v in entries.values()}


def _check_program_json(name: str, data: bytes) -> None:
    """The program's graph: ATen (and ``operator``) calls, no guard code, plain sympy sizes."""
    try:
        program = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{name}: models/model.json is not JSON ({err})") from err
    if not isinstance(program, dict) or program.get("guards_code"):
        raise BundleError(
            f"{name}: models/model.json holds guard code, which torch.export runs as Python; "
            "refusing to load"
        )
    stack: list[Any] = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key == "nodes" and isinstance(value, list):
                for node in value:
                    target = node.get("target") if isinstance(node, dict) else None
                    if not isinstance(target, str) or not target.startswith(_NODE_TARGETS):
                        raise BundleError(
                            f"{name}: models/model.json calls {target!r}, not an ATen "
                            "operator; refusing to load"
                        )
            elif key == "expr_str" and not _plain_expression(value):
                raise BundleError(
                    f"{name}: models/model.json holds the symbolic expression {str(value)[:80]!r}, "
                    "which is not a plain size; refusing to load"
                )
            stack.append(value)


def _plain_expression(expr: Any) -> bool:
    """Whether ``expr`` is made of sympy constructors, symbol names, numbers and operators."""
    if not isinstance(expr, str):
        return False
    position = 0
    while position < len(expr):
        match = _EXPR_TOKEN.match(expr, position)
        if match is None:
            return False
        token = match.group()
        if token[0].isalpha() and token not in _EXPR_NAMES and not _SYMBOL.fullmatch(token):
            return False
        position = match.end()
    return True


def load_vision_program(source: Path | bytes, device: str, name: str = VISION_FILE) -> Any:
    """The vision path as a callable module on ``device``: ``source`` (the archive's bytes, or a
    path read once) checked by :func:`check_program_safe`, then loaded from those same bytes."""
    import torch
    import torch.export.passes

    data = _archive_bytes(source)
    check_program_safe(data, name)
    program = torch.export.load(io.BytesIO(data))
    if device != "cpu":
        program = torch.export.passes.move_to_device_pass(program, device)
    return program.module()
