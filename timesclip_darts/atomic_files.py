"""Atomic writes of files and folders: a reader, or a process restarted after a crash, a kill
or a power cut, finds either the previous version whole or the new one whole, never half a file.

The new content is written to a hidden temporary sibling in the same folder (the same file
system), flushed to disk, and renamed over the target (a rename is atomic on POSIX); the folder
is then flushed so that the rename itself is durable. A folder (an exported bundle) is staged
the same way; ``rename`` cannot replace a non-empty folder, so an old one is moved aside first
and deleted only once the new one is in place. A write that fails or is interrupted leaves at
most a stray ``.<name>.*.tmp`` beside the target.

One implementation for every writer in the project (model files, bundles, stream snapshots,
benchmark results); standard library only, so the deployment runtime can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "fsync_folder",
    "move_into_place",
    "staged_folder",
    "write_bytes_atomic",
    "write_text_atomic",
]

# fsync errors that mean "this file system cannot sync this file", not "the data is lost".
_SYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def fsync_folder(path: Path | str) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where the file
    system refuses to open or fsync folders."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _SYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _sibling(target: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """A new hidden ``.<name>.<random><suffix>`` beside ``target``, made by ``create`` (which
    must fail with ``FileExistsError`` if the name is taken)."""
    for _ in range(100):
        candidate = target.parent / f".{target.name}.{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name beside", str(target))


def _new_file(path: Path) -> None:
    # 0o666 less the umask, as open() gives a new file (mkstemp's would be private, 0o600).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _new_folder(path: Path) -> None:
    os.mkdir(path, 0o777)  # less the umask, as mkdir gives (mkdtemp's would be private, 0o700)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (an empty file, normal permissions) to write
    by any means (``torch.save``, ``safetensors``, ``np.savez`` to an open handle: given a
    path, NumPy would append ``.npz``); when the block ends normally the file is flushed to
    disk and renamed over ``target``, and the folder flushed. If the block raises, the
    temporary file is removed and ``target`` is untouched. Creates ``target``'s folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _sibling(target, ".tmp", _new_file)
    try:
        yield temporary
        move_into_place(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def move_into_place(staged: Path | str, target: Path | str) -> None:
    """Flush the complete file ``staged`` to disk, rename it over ``target`` (same file system)
    and flush the folder: for writers that must name their own files (Darts' ``save`` writes
    ``PATH`` and ``PATH.ckpt``) and stage them in a temporary folder beside the target."""
    _fsync_file(Path(staged))
    os.replace(staged, target)
    fsync_folder(Path(target).parent)


def write_bytes_atomic(target: Path | str, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (:func:`atomic_path`)."""
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(target: Path | str, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``target`` atomically (:func:`atomic_path`)."""
    with atomic_path(target) as temporary:
        temporary.write_text(text, encoding=encoding)


@contextlib.contextmanager
def staged_folder(target: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target`` (normal permissions) to fill; when
    the block ends normally every file in it and the folder are flushed to disk and it is
    renamed to ``target``. A folder already at ``target`` is replaced only with ``overwrite``
    (else ``FileExistsError``, checked before the block and again after it); it survives until
    the new one is in place, and is put back if the new one cannot be. If the block raises, the
    temporary folder is deleted and ``target`` is untouched. Creates ``target``'s folder."""
    target = Path(target)
    _check_folder_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = _sibling(target, ".tmp", _new_folder)
    try:
        yield staged
        _check_folder_target(target, overwrite)  # something may have appeared meanwhile
        _fsync_tree(staged)
        _replace_folder(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _check_folder_target(target: Path, overwrite: bool) -> None:
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(target))
    if not overwrite:
        raise FileExistsError(
            errno.EEXIST, "exists; pass overwrite=True to replace it", str(target)
        )


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                _fsync_file(path)
        fsync_folder(root)


def _replace_folder(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` to ``target``: two renames on the same file system.

    ``rename`` cannot replace a non-empty folder, so an old one is first renamed aside and
    removed only once the new one is in place (it is put back if the second rename fails)."""
    if target.exists():
        old = _sibling(target, ".old", _new_folder)
        os.replace(target, old)  # an empty folder can be replaced
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
    fsync_folder(target.parent)
