"""Atomic, locked writes: a reader sees the old file or the new one, never half of one.

Every file is written through a temp file `.NAME.writing.tmp` beside it and a rename. The writer
holds an exclusive lock on that temp file (POSIX `flock`) while it checks and writes, so two
runs writing the same file cannot interleave; a killed writer's lock dies with it, and the next
write of the same file reuses its leftover temp file instead of leaving it behind. Temp names
end in `.tmp` and start with a dot: nothing that looks for `*.txt` responses can mistake them
for one."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from .layout import temp_path
from .roots import StorageRefused, is_remote, space_for

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the rename still keeps writes atomic
    fcntl = None

# Lock errors of file systems without flock support (some network file systems): writing there
# without the lock would silently lose the write-once guarantee, so it refuses instead.
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_fd(fd: int, path: Path | str) -> None:
    """Take the exclusive lock on the open file `fd` (at `path`), or refuse with one sentence where
    the file system cannot lock."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in _NO_LOCKING:
            raise
        raise StorageRefused(
            f"the file system of {Path(path).parent} cannot lock files ({errno.errorcode.get(exc.errno, exc.errno)}), "
            "so paid answers could not be kept write-once there; use a local disk or an s3:// data root."
        ) from None


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file now at `path` (not one renamed away or unlinked)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[int]:
    """Hold the exclusive right to write `path`: an open, locked, empty `.NAME.writing.tmp`.

    Whoever locks the temp file while it is still in place owns it; a temp file that was renamed
    onto its target (or removed) while we waited for the lock is not ours, so we start over.
    The temp file is removed on the way out unless it was renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            lock_fd(fd, tmp)
            if _is_file_at(fd, tmp):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)  # a killed writer may have left part of a file here
        yield fd
    finally:
        try:
            if _is_file_at(fd, tmp):
                tmp.unlink()
        finally:
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the lock file at `path`, waiting for any other holder (in this
    process or another). The file is created if missing and never removed: removing it would let
    two holders lock two different files. A killed holder's lock dies with it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        lock_fd(fd, path)
        yield
    finally:
        os.close(fd)


def fill(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via `.NAME.writing.tmp` in the same folder and a rename: readers see old or new, never half.
    On object storage one PUT does the same."""
    if is_remote(path):
        path.write_bytes(data)
        return
    path = Path(path)
    with space_for(path, len(data)), claimed(path) as fd:
        fill(fd, data)
        os.replace(temp_path(path), path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
