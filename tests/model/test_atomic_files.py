"""timesclip_darts.atomic_files: a file or folder is replaced whole or not at all, also when
the writing process is killed mid-write, and nothing temporary is left behind by a failure."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from timesclip_darts import atomic_files
from timesclip_darts.atomic_files import (
    atomic_path,
    fsync_folder,
    staged_folder,
    write_bytes_atomic,
    write_text_atomic,
)

ROOT = Path(__file__).resolve().parents[2]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ----------------------------------------------------------------------------------- files
def test_a_file_lands_whole_with_normal_permissions_and_nothing_left(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "result.json"  # the folders are created
    write_text_atomic(target, '{"mse": 0.39, "label": "±"}')
    assert target.read_bytes() == '{"mse": 0.39, "label": "±"}'.encode()
    assert _mode(target) == 0o666 & ~_umask()  # not mkstemp's private 0o600
    write_bytes_atomic(target, b"\x00\x01second")  # over an existing file
    assert target.read_bytes() == b"\x00\x01second"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]

    with atomic_path(target) as temporary:  # any writer: it gets a path in the same folder
        assert temporary.parent == target.parent and temporary != target
        assert temporary.name.startswith(".result.json.") and temporary.name.endswith(".tmp")
        assert temporary.read_bytes() == b""
        assert target.read_bytes() == b"\x00\x01second"  # untouched until the block ends
        with open(temporary, "wb") as handle:
            handle.write(b"third")
    assert target.read_bytes() == b"third"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "model.safetensors"
    write_bytes_atomic(target, b"previous")
    with pytest.raises(type(error)):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half a fi")
            raise error
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]

    with pytest.raises(RuntimeError):  # where there was none, there is none
        with atomic_path(tmp_path / "fresh.bin") as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fds through /proc")
def test_the_file_is_on_disk_before_the_rename_and_the_rename_after(
    tmp_path: Path, monkeypatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_files.os, "fsync", fsync)
    monkeypatch.setattr(atomic_files.os, "replace", replace)
    folder = tmp_path / "out"
    write_bytes_atomic(folder / "a.bin", b"a")
    (synced_file, _), *rest = events
    assert synced_file == "fsync" and events[0][1].startswith(".a.bin.")
    assert rest == [("replace", "a.bin"), ("fsync", "out")]
    events.clear()
    fsync_folder(folder)
    fsync_folder(tmp_path / "missing")  # refused: no error
    assert events == [("fsync", "out")]


# --------------------------------------------------------------------------------- folders
def test_a_folder_replaces_the_old_one_only_once_complete(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with staged_folder(target) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".bundle.")
        assert list(staged.iterdir()) == [] and not target.exists()
        (staged / "manifest.json").write_text("v1")
    assert (target / "manifest.json").read_text() == "v1"
    assert _mode(target) == 0o777 & ~_umask()  # not mkdtemp's private 0o700
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]

    with staged_folder(target, overwrite=True) as staged:
        (staged / "manifest.json").write_text("v2")
        (staged / "sub").mkdir()
        (staged / "sub" / "weights.bin").write_bytes(b"w")
        assert [p.name for p in target.iterdir()] == ["manifest.json"]
        assert (target / "manifest.json").read_text() == "v1"  # the old one until the end
    assert (target / "manifest.json").read_text() == "v2"
    assert (target / "sub" / "weights.bin").read_bytes() == b"w"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # the old one is deleted


def test_a_folder_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    with pytest.raises(FileExistsError, match="bundle"):
        with staged_folder(target):
            pytest.fail("the block must not run")
    with pytest.raises(FileExistsError, match="late"):  # one that appears meanwhile too
        with staged_folder(tmp_path / "late") as staged:
            (staged / "manifest.json").write_text("new")
            (tmp_path / "late").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        with staged_folder(tmp_path / "file", overwrite=True):
            pytest.fail("the block must not run")
    assert (target / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "file", "late"]


def test_a_failed_folder_leaves_the_old_one_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with staged_folder(target) as staged:
        (staged / "manifest.json").write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with staged_folder(target, overwrite=True) as staged:
            (staged / "manifest.json").write_text("half")
            raise OSError(28, "No space left on device")
    assert [p.name for p in target.iterdir()] == ["manifest.json"]
    assert (target / "manifest.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_the_old_folder_is_put_back_if_the_new_cannot_be_renamed_in(
    tmp_path: Path, monkeypatch
) -> None:
    target = tmp_path / "bundle"
    with staged_folder(target) as staged:
        (staged / "manifest.json").write_text("old")
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(atomic_files.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="rename failed"):
        with staged_folder(target, overwrite=True) as staged:
            (staged / "manifest.json").write_text("new")
    aside = calls[0][1]
    assert calls == [("bundle", aside), (staged.name, "bundle"), (aside, "bundle")]
    assert (target / "manifest.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


# ----------------------------------------------------------------------------------- kills
KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from timesclip_darts.atomic_files import atomic_path, staged_folder, write_bytes_atomic

    kind, target = sys.argv[1], Path(sys.argv[2])
    first, chunk = bytes(range(256)) * 4096, b"x" * 65536  # 1 MiB whole, then 64 KiB pieces
    if kind == "file":
        write_bytes_atomic(target, first)
        with atomic_path(target) as temporary, open(temporary, "wb") as handle:
            for i in range(100_000):
                handle.write(chunk)
                handle.flush()
                if i == 0:
                    print("writing", flush=True)
                time.sleep(0.001)
    else:
        with staged_folder(target) as staged:
            for i in range(3):
                (staged / f"part{i}.bin").write_bytes(first)
        with staged_folder(target, overwrite=True) as staged:
            for i in range(100_000):
                (staged / f"part{i}.bin").write_bytes(chunk)
                if i == 3:
                    print("writing", flush=True)
                time.sleep(0.001)
    """
)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_kill_mid_write_leaves_the_first_version_whole(tmp_path: Path, kind: str) -> None:
    """SIGKILL while the second version is being written: no clean-up code runs, and the
    target is still the first version, byte for byte (a stray temporary is all that's left)."""
    target = tmp_path / ("result.bin" if kind == "file" else "bundle")
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, kind, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = process.stdout.readline()
        assert line.strip() == "writing", process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    first = bytes(range(256)) * 4096
    (stray,) = [p for p in tmp_path.iterdir() if p != target]
    assert stray.name.startswith(f".{target.name}.") and stray.name.endswith(".tmp")
    if kind == "file":
        assert target.read_bytes() == first
        assert 0 < stray.stat().st_size and stray.read_bytes()[:1] == b"x"
    else:
        assert sorted(p.name for p in target.iterdir()) == ["part0.bin", "part1.bin", "part2.bin"]
        assert all(p.read_bytes() == first for p in target.iterdir())
        assert len(list(stray.iterdir())) >= 4
