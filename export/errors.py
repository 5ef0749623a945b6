"""Errors of the export step and the runtime. All are ``ValueError`` subclasses, so the
``timesclip-darts`` command prints them as one ``error: ...`` line and exits 1."""

from __future__ import annotations


class ExportError(ValueError):
    """The model cannot be exported as asked (not fitted, unsupported option, bad OUT_DIR)."""


class BundleError(ValueError):
    """A bundle that is incomplete, damaged or not a bundle: missing or extra file, checksum
    mismatch, unreadable manifest, unsafe content."""


class BundleVersionError(BundleError):
    """A bundle written by another bundle format or by library versions this runtime cannot
    promise to run the same way."""


class BundleSignatureError(BundleError):
    """A trusted key was given and the bundle is unsigned, signed by another key, or changed
    after signing (or the key itself cannot be read, or checksums were turned off, so the
    signature would cover nothing but the manifest)."""


class InputError(ValueError):
    """Input windows or rows of the wrong shape, variate order, dtype, or with NaN/inf.

    ``row`` is the offending row of the call's input, when one row is to blame. ``reason`` is a
    short machine key for the problem (``"nan"``, ``"too_large"``, ``"dtype"``, ``"shape"``,
    ``"columns"``, ``"gap"``, ``"duplicate"``, ``"out_of_order"``, ``"timestamps"``), for callers
    that count or route refusals (``StreamPool``, the server).
    """

    default_reason = "input"

    def __init__(self, message: str, row: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.reason = reason or self.default_reason


class TimestampError(InputError):
    """Timestamps with a gap, a duplicate or a step back."""

    default_reason = "timestamps"


class SnapshotError(BundleError):
    """A ``StreamPool`` snapshot (:mod:`timesclip_export.service.stream_pool`) that cannot be
    restored: not a snapshot, damaged, another format version, or written for another bundle."""


class DeviceError(ValueError):
    """The requested device cannot be used (no CUDA in torch or in onnxruntime)."""
