"""Optional Ed25519 signatures of bundles (``cryptography``, imported only when used).

How it works:

- ``timesclip-darts keygen PRIVATE PUBLIC`` writes a key pair as PEM files: the private key in
  PKCS#8 (unencrypted, mode 0600: keep it on the machine that exports), the public key as
  SubjectPublicKeyInfo (give it to the machines that run bundles).
- ``timesclip-darts export MODEL OUT --sign PRIVATE`` signs the exact bytes of the bundle's
  ``manifest.json`` and writes the 64-byte raw signature to ``manifest.sig``, inside the atomic
  export (before the bundle is renamed into place). The manifest lists every other file's
  sha256, so the signature covers every file: a changed file fails its checksum, a changed
  checksum fails the signature.
- ``RollingForecaster(bundle, trusted_key=PUBLIC)`` / ``timesclip-darts stream --trusted-key
  PUBLIC`` refuse a bundle without ``manifest.sig`` or whose signature does not verify with that
  key (:class:`~timesclip_export.errors.BundleSignatureError`), before anything in it is parsed
  or loaded. ``manifest.json`` and ``manifest.sig`` are each read once and the bytes verified
  are the bytes parsed; every file loaded is read once, its bytes' sha256 checked against the
  signed manifest and loaded from those bytes, so a file swapped after the check is never
  loaded. ``verify=False`` with a trusted key is refused: without the checksums the signature
  covers nothing but the manifest. Without a trusted key, a signature is neither needed nor
  checked.

The signature can also be checked without this package: ``openssl pkeyutl -verify -pubin -inkey
PUBLIC -rawin -in manifest.json -sigfile manifest.sig``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from timesclip_export.errors import BundleSignatureError, ExportError

SIGNATURE = "manifest.sig"
ALGORITHM = "ed25519"


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


def generate_key_pair(private_path: str | Path, public_path: str | Path) -> str:
    """Write a new Ed25519 key pair (PEM) and return the public key's fingerprint. Refuses to
    replace existing files; the private key file is created readable by its owner only."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    serialization = _serialization()
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise ExportError("the private and the public key need two different files")
    for path in (private_path, public_path):
        if path.exists():
            raise ExportError(f"{path} exists; refusing to replace a key file")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return fingerprint(key.public_key())


def fingerprint(public_key: Any) -> str:
    """sha256 of the raw 32-byte public key, hex: names the key in manifests and messages."""
    serialization = _serialization()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_private_key(path: str | Path) -> Any:
    """The Ed25519 private key in the PEM (PKCS#8) file ``path``, or :class:`ExportError`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        key = _serialization().load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ExportError(f"cannot read the signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ExportError(f"{path} holds a {type(key).__name__}; signing needs an Ed25519 key")
    return key


def load_public_key(key: str | Path | bytes) -> Any:
    """An Ed25519 public key from a PEM file path or PEM bytes, or
    :class:`BundleSignatureError`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    where = "the trusted key" if isinstance(key, bytes) else f"the trusted key {key}"
    try:
        pem = key if isinstance(key, bytes) else Path(key).read_bytes()
        public = _serialization().load_pem_public_key(pem)
    except (OSError, ValueError, TypeError) as err:
        raise BundleSignatureError(f"cannot read {where}: {err}") from err
    if not isinstance(public, Ed25519PublicKey):
        raise BundleSignatureError(
            f"{where} is a {type(public).__name__}; bundles are signed with Ed25519"
        )
    return public


def signature_entry(private_key: Any) -> dict[str, str]:
    """What the manifest says about its signature (the key is named, not trusted, by it)."""
    return {
        "file": SIGNATURE,
        "algorithm": ALGORITHM,
        "covers": "the exact bytes of manifest.json, which lists every file's sha256",
        "public_key_sha256": fingerprint(private_key.public_key()),
    }


def sign_manifest(folder: Path, private_key: Any, manifest_name: str = "manifest.json") -> None:
    """Write ``manifest.sig``: the raw Ed25519 signature of the manifest's bytes."""
    data = (folder / manifest_name).read_bytes()
    (folder / SIGNATURE).write_bytes(private_key.sign(data))


def verify_manifest(
    manifest_bytes: bytes,
    signature: bytes | None,
    bundle: Path,
    trusted_key: str | Path | bytes,
) -> None:
    """Raise :class:`BundleSignatureError` unless ``signature`` (the bytes of ``bundle``'s
    ``manifest.sig``, ``None`` when it has none) is a valid signature of ``manifest_bytes`` by
    ``trusted_key``. The caller reads each file once and parses the manifest bytes checked here."""
    from cryptography.exceptions import InvalidSignature

    public = load_public_key(trusted_key)
    if signature is None:
        raise BundleSignatureError(
            f"bundle {bundle} is not signed (no {SIGNATURE}) and a trusted key was given; "
            "export it with --sign"
        )
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature as err:
        raise BundleSignatureError(
            f"the signature of bundle {bundle} does not verify with the trusted key "
            f"(sha256 {fingerprint(public)[:16]}...): the manifest was changed after signing, "
            "or another key signed it"
        ) from err
