"""Trusting a bundle: vision programs that hold anything but a plain exported program are
refused, files are loaded from the bytes that were checked (a file swapped after the check is
never loaded), and signed bundles (``export --sign``, ``keygen``) load only with the right key
when a trusted key is given (``RollingForecaster(trusted_key=...)``, ``stream --trusted-key``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from timesclip_export.bundle import format as bundle_format
from timesclip_export.bundle.format import check_program_safe, read_manifest, sha256_file
from timesclip_export.bundle.signing import SIGNATURE, generate_key_pair, load_public_key
from timesclip_export.errors import BundleError, BundleSignatureError, ExportError
from timesclip_export.exporter import writer
from timesclip_export.runtime.forecaster import RollingForecaster

from timesclip_cli.main import main
from timesclip_darts import atomic_files

# ------------------------------------------------------------------------------ unpickling
UNPICKLED: list[str] = []


def _record(tag: str) -> str:
    UNPICKLED.append(tag)
    return tag


class Payload:
    """Stands in for a malicious object: unpickling it calls :func:`_record`."""

    def __reduce__(self):
        return (_record, ("payload ran",))


def _rewrite(source: Path, target: Path, edit: Callable[[str, bytes], bytes | None], add=()):
    """Copy a zip archive entry by entry through ``edit`` (``None`` drops an entry), adding
    ``(name, bytes)`` pairs."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        root = old.namelist()[0].split("/", 1)[0]
        for item in old.infolist():
            data = edit(item.filename, old.read(item))
            if data is not None:
                new.writestr(item, data)
        for name, data in add:
            new.writestr(f"{root}/{name}", data)


def _constant_as(prefix: str, flag: bool) -> Callable[[str, bytes], bytes]:
    """Store the program's one constant (position_ids) as ``<prefix>0`` holding the payload,
    described as plain bytes (``use_pickle`` = ``flag``)."""
    size = len(pickle.dumps(Payload(), protocol=2))

    def edit(name: str, data: bytes) -> bytes | None:
        if name.endswith("data/constants/tensor_0"):
            return None  # replaced by the payload
        if not name.endswith("model_constants_config.json"):
            return data
        config = json.loads(data)
        entry = next(iter(config["config"].values()))
        entry.update(path_name=f"{prefix}0", use_pickle=flag)
        entry["tensor_meta"].update(
            dtype=1,  # uint8, so the payload's bytes make a valid flat tensor record
            sizes=[{"as_int": size}],
            strides=[{"as_int": 1}],
        )
        return json.dumps(config).encode()

    return edit


def test_a_program_with_an_opaque_object_constant_is_refused(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """torch.export.load unpickles constants stored as ``opaque_obj_*`` with ``pickle.loads``
    even when they are not flagged ``use_pickle``; the check used to look at the flag only."""
    source, crafted = tiny_bundle / "vision.pt2", tmp_path / "vision.pt2"
    payload = pickle.dumps(Payload(), protocol=2)
    _rewrite(
        source,
        crafted,
        _constant_as("opaque_obj_", flag=False),
        add=[("data/constants/opaque_obj_0", payload)],
    )
    UNPICKLED.clear()
    try:  # what the check prevents: loading the archive runs the payload
        torch.export.load(str(crafted))
    except Exception:  # the graph does not hold an object there; too late anyway
        pass
    assert UNPICKLED == ["payload ran"]

    check_program_safe(source)  # the real one passes
    with pytest.raises(BundleError, match=r"constants that are objects.*opaque_obj_0"):
        check_program_safe(crafted)

    # In a bundle whose checksums match, the runtime refuses it before anything is unpickled.
    folder = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    shutil.copy(crafted, folder / "vision.pt2")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["vision.pt2"]["sha256"] = sha256_file(folder / "vision.pt2")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    UNPICKLED.clear()
    with pytest.raises(BundleError, match="objects, not tensors"):
        RollingForecaster(folder, vision="torch")
    RollingForecaster(folder, vision="onnx")  # the ONNX vision path never loads vision.pt2
    assert UNPICKLED == []


@pytest.mark.parametrize(
    ("prefix", "flag", "message"),
    [
        ("custom_obj_", False, r"objects, not tensors.*custom_obj_0"),  # TorchScript's pickler
        ("tensor_", True, "pickled objects"),  # torch.load(weights_only=False)
    ],
)
def test_other_pickled_constants_are_refused(
    tiny_bundle: Path, tmp_path: Path, prefix: str, flag: bool, message: str
) -> None:
    crafted = tmp_path / "vision.pt2"
    add = [(f"data/constants/{prefix}0", pickle.dumps(Payload(), protocol=2))]
    _rewrite(tiny_bundle / "vision.pt2", crafted, _constant_as(prefix, flag), add=add)
    with pytest.raises(BundleError, match=message):
        check_program_safe(crafted)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # Legacy payloads and sample inputs: torch retries with weights_only=False on failure.
        ("data/constants/model.pt", "data/constants/model.pt, which a plain exported program"),
        ("data/sample_inputs/model.pt", "sample_inputs/model.pt, which is not plain tensors"),
        ("data/aotinductor/model/model.so", "AOTInductor package"),  # native code
    ],
)
def test_entries_that_torch_would_unpickle_or_run_are_refused(
    tiny_bundle: Path, tmp_path: Path, name: str, message: str
) -> None:
    crafted = tmp_path / "vision.pt2"
    payload = pickle.dumps(Payload(), protocol=2)

    def drop_same(entry: str, data: bytes) -> bytes | None:
        return None if entry.endswith(name) else data

    _rewrite(tiny_bundle / "vision.pt2", crafted, drop_same, add=[(name, payload)])
    with pytest.raises(BundleError, match=message):
        check_program_safe(crafted)


def _edit_program(edit: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    """An :func:`_rewrite` edit that changes the program's JSON (``models/model.json``)."""

    def rewrite(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()

    return rewrite


def _keep(name: str, data: bytes) -> bytes:
    return data


def _guards(program: dict) -> None:
    program["guards_code"] = ["True"]


def _call_torch_load(program: dict) -> None:
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.load"


@pytest.mark.parametrize(
    ("edit", "add", "message"),
    [
        (_keep, [("extra/notes.txt", b"hi")], "extra/notes.txt, which a plain exported program"),
        (_keep, [("data/weights/weight_99", b"\0" * 4)], "weights/weight_99, which a plain"),
        (_keep, [("archive_format", b"pt2")], r"entries twice \(\['vision/archive_format'\]\)"),
        (_edit_program(_guards), [], "holds guard code"),
        (_edit_program(_call_torch_load), [], "calls 'torch.load', not an ATen operator"),
    ],
)
def test_anything_but_a_plain_program_is_refused(
    tiny_bundle: Path, tmp_path: Path, edit, add, message: str
) -> None:
    """The check is an allowlist of what ``torch.export.save`` writes for one plain program:
    an unknown entry (even a harmless one), a payload no config names, an entry twice (zipfile
    and torch's reader may read different copies), guard code (``exec`` on ``.module()``) and
    calls of anything but ATen operators are refused, naming what was found."""
    crafted = tmp_path / "vision.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        _rewrite(tiny_bundle / "vision.pt2", crafted, edit, add=add)
    with pytest.raises(BundleError, match=message):
        check_program_safe(crafted)


def test_a_symbolic_size_that_runs_code_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """``torch.export.load`` evaluates every symbolic size with ``sympy.sympify`` (an eval): a
    program whose size expression is code runs it on load."""
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"

    def as_code(program: dict) -> None:
        values = program["graph_module"]["graph"]["sym_int_values"]
        next(iter(values.values()))["as_expr"]["expr_str"] = code

    crafted = tmp_path / "vision.pt2"
    _rewrite(tiny_bundle / "vision.pt2", crafted, _edit_program(as_code))
    with contextlib.suppress(Exception):  # what the check prevents
        torch.export.load(str(crafted))
    assert marker.read_text() == "ran"
    with pytest.raises(BundleError, match=r"symbolic expression .*__import__"):
        check_program_safe(crafted)


# ------------------------------------------------------------------------------ read once
class _SwapAfterHashing:
    """Stands in for the bundle reader's ``hashlib``: right after the digest of ``path``'s
    bytes is taken (the file was read and checked), the file on disk is replaced by
    ``swapped``. Works whether the reader hashes bytes or streams the file."""

    def __init__(self, path: Path, swapped: bytes) -> None:
        self.path, self.swapped = path, swapped
        self.target = hashlib.sha256(path.read_bytes()).hexdigest()
        self.swaps = 0

    def sha256(self, data: bytes = b"") -> _SwapAfterHashing._Digest:
        return self._Digest(self, hashlib.sha256(data))

    class _Digest:
        def __init__(self, owner: _SwapAfterHashing, digest) -> None:
            self.owner, self.digest = owner, digest

        def update(self, block: bytes) -> None:
            self.digest.update(block)

        def hexdigest(self) -> str:
            value = self.digest.hexdigest()
            if value == self.owner.target and not self.owner.swaps:
                self.owner.path.write_bytes(self.owner.swapped)
                self.owner.swaps += 1
            return value


def _malicious_program(bundle: Path, tmp_path: Path) -> bytes:
    """vision.pt2 with an opaque-object constant that records when unpickled."""
    crafted = tmp_path / "malicious.pt2"
    payload = pickle.dumps(Payload(), protocol=2)
    add = [("data/constants/opaque_obj_0", payload)]
    _rewrite(bundle / "vision.pt2", crafted, _constant_as("opaque_obj_", flag=False), add=add)
    return crafted.read_bytes()


@pytest.mark.parametrize(
    ("vision", "name", "swapped_with"),
    [
        ("onnx", "text.opt.onnx", lambda bundle, tmp: (bundle / "fusion.opt.onnx").read_bytes()),
        ("torch", "vision.pt2", _malicious_program),
    ],
)
def test_a_file_swapped_after_its_check_is_never_loaded(
    tiny_bundle: Path,
    signing_keys,
    etth1_splits,
    tmp_path: Path,
    monkeypatch,
    vision: str,
    name: str,
    swapped_with,
) -> None:
    """Whoever can write the bundle folder replaces a file right after the runtime read and
    checked it: the runtime loads the bytes it checked, so it forecasts as from the original
    bundle and never opens (or unpickles) the swapped file."""
    folder = _copy(tiny_bundle, tmp_path)
    swapped = swapped_with(tiny_bundle, tmp_path)
    reference = RollingForecaster(tiny_bundle, vision=vision, onnx_threads=1)
    swapper = _SwapAfterHashing(folder / name, swapped)
    monkeypatch.setattr(bundle_format, "hashlib", swapper)
    UNPICKLED.clear()
    loaded = RollingForecaster(folder, vision=vision, onnx_threads=1, trusted_key=signing_keys[1])
    assert swapper.swaps == 1 and (folder / name).read_bytes() == swapped  # it was swapped
    values = etth1_splits.test.values()[:120]
    np.testing.assert_array_equal(loaded.rolling(values), reference.rolling(values))
    assert UNPICKLED == []


# ------------------------------------------------------------------------------ signatures
def _copy(bundle: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(bundle, tmp_path / name))


def test_a_signed_bundle_loads_with_its_key(tiny_bundle: Path, signing_keys, etth1_splits):
    """conftest exports the bundle with `export --sign`; the signature file is no stray file."""
    private, public = signing_keys
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    manifest = read_manifest(tiny_bundle, trusted_key=public)
    assert manifest["signature"]["algorithm"] == "ed25519"
    signed = RollingForecaster(tiny_bundle, trusted_key=public, apply_scaler=False)
    unchecked = RollingForecaster(tiny_bundle, apply_scaler=False)  # no key: no check needed
    assert "signature verified" in signed.describe()
    assert "signature" not in unchecked.describe()
    values = etth1_splits.test.values()[:120]
    np.testing.assert_array_equal(signed.rolling(values), unchecked.rolling(values))
    with open(public, "rb") as handle:  # PEM bytes work as well as a path
        RollingForecaster(tiny_bundle, trusted_key=handle.read())


def test_a_trusted_key_without_checksums_is_refused(tiny_bundle: Path, signing_keys) -> None:
    """The signature covers the files through their checksums: with ``verify=False`` it would
    cover the manifest alone, yet ``describe()`` would say "signature verified"."""
    with pytest.raises(BundleSignatureError, match="verify=False with a trusted_key"):
        RollingForecaster(tiny_bundle, trusted_key=signing_keys[1], verify=False)


def test_a_changed_manifest_is_refused(tiny_bundle: Path, signing_keys, tmp_path: Path) -> None:
    """A scaler changed in the manifest passes every other check (it is the manifest that holds
    the checksums): only the signature catches it."""
    folder = _copy(tiny_bundle, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["scaler"]["mean"][0] += 100.0
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    RollingForecaster(folder)  # without a key, nothing notices
    with pytest.raises(BundleSignatureError, match="does not verify with the trusted key"):
        RollingForecaster(folder, trusted_key=signing_keys[1])


def test_a_changed_file_with_a_matching_checksum_is_refused(
    tiny_bundle: Path, signing_keys, tmp_path: Path
) -> None:
    folder = _copy(tiny_bundle, tmp_path)
    graph = folder / "fusion.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["fusion.onnx"].update(sha256=sha256_file(graph), bytes=graph.stat().st_size)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleSignatureError, match="does not verify"):
        RollingForecaster(folder, trusted_key=signing_keys[1])


def test_another_key_or_no_signature_is_refused(
    tiny_bundle: Path, signing_keys, tmp_path: Path
) -> None:
    other_private, other_public = tmp_path / "other.key", tmp_path / "other.pub"
    generate_key_pair(other_private, other_public)
    with pytest.raises(BundleSignatureError, match="does not verify .* another key signed it"):
        RollingForecaster(tiny_bundle, trusted_key=other_public)
    unsigned = _copy(tiny_bundle, tmp_path)
    (unsigned / SIGNATURE).unlink()
    with pytest.raises(BundleSignatureError, match=r"is not signed \(no manifest.sig\)"):
        RollingForecaster(unsigned, trusted_key=signing_keys[1])
    assert RollingForecaster(unsigned).signature_checked is False  # unsigned, no key: fine


def test_unusable_keys_are_clear_errors(signing_keys, tmp_path: Path) -> None:
    private, public = signing_keys
    with pytest.raises(BundleSignatureError, match="cannot read the trusted key"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(BundleSignatureError, match="cannot read the trusted key"):
        load_public_key(private)  # a private key where the public one belongs
    with pytest.raises(ExportError, match="refusing to replace a key file"):
        generate_key_pair(tmp_path / "new.key", public)
    assert not (tmp_path / "new.key").exists()


def test_export_signs_before_the_bundle_is_renamed_into_place(
    tiny_bundle: Path, tiny_model_path: Path, signing_keys, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The signature is written inside the temporary folder, so a bundle is never in place
    unsigned; a bad key fails before anything is written. The graph export is replaced by a
    copy of the tiny bundle's files (the real one runs in conftest's `export --sign`)."""

    def fake_write(model, folder: Path, scaler, opset, optimize, signing_key=None) -> dict:
        for path in tiny_bundle.iterdir():
            if path.name != SIGNATURE:
                shutil.copy(path, folder / path.name)
        return json.loads((folder / "manifest.json").read_text())

    renamed: list[bool] = []
    real_replace = atomic_files._replace_folder  # staged_folder's swap into place

    def spy(new: Path, target: Path) -> None:
        read_manifest(new, trusted_key=signing_keys[1])  # signed and valid before the rename
        renamed.append(True)
        real_replace(new, target)

    monkeypatch.setattr(writer, "_write_bundle", fake_write)
    monkeypatch.setattr(atomic_files, "_replace_folder", spy)
    out = tmp_path / "signed"
    assert main(["export", str(tiny_model_path), str(out), "--sign", str(signing_keys[0])]) == 0
    assert renamed == [True] and (out / SIGNATURE).is_file()
    assert "signed: manifest.sig (Ed25519" in capsys.readouterr().out

    with pytest.raises(ExportError, match="cannot read the signing key"):
        writer.export_bundle(tiny_model_path, tmp_path / "never", sign_key=signing_keys[1])
    assert renamed == [True] and not (tmp_path / "never").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signed"]


def test_stream_command_checks_the_trusted_key(
    tiny_bundle: Path, signing_keys, etth1, tmp_path: Path, capsys
) -> None:
    csv = tmp_path / "rows.csv"
    etth1.iloc[11424 : 11424 + 97].to_csv(csv, index=False)
    public = str(signing_keys[1])
    assert main(["stream", str(tiny_bundle), "--input", str(csv), "--trusted-key", public]) == 0
    err = capsys.readouterr().err
    assert "signature verified" in err and "wrote 2 forecast(s)" in err
    unsigned = _copy(tiny_bundle, tmp_path)
    (unsigned / SIGNATURE).unlink()
    assert main(["stream", str(unsigned), "--input", str(csv), "--trusted-key", public]) == 1
    assert "is not signed" in capsys.readouterr().err
