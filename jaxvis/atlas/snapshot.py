"""Atomic snapshots of a file, and the lock that keeps one writer per file.

HDF5 updates its metadata in place, and a process killed in the middle of that can leave
a file that no longer opens. So an atlas on disk is never modified in place: each change
is made in a copy (``<atlas>.tmp``), which is flushed, fsynced and closed, then moved
over the atlas with ``os.replace`` (atomic on POSIX), and the directory is fsynced. A
kill at any moment leaves either the previous snapshot or the new one, never a mix; the
next writer deletes a stale ``.tmp``. Readers that opened the old file keep reading it
unchanged, since the rename gives the new snapshot a new inode.

The price is one copy of the file per change, O(file size); docs/atlas-format.md,
"Crash safety", has the measurements.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import h5py

from jaxvis.atlas import format as fmt
from jaxvis.errors import JaxvisError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per atlas is then on you.
    fcntl = None


@contextlib.contextmanager
def snapshot(path: str, *, fresh: bool = False) -> Iterator[h5py.File]:
    """Yields a writable copy of ``path`` (a new file if ``fresh``); on a clean exit the
    copy atomically replaces ``path``, on an exception it is deleted."""
    tmp = path + fmt.TMP_SUFFIX
    try:
        if not fresh:
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "w" if fresh else "r+", track_order=True) as f:
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def remove_stale(path: str) -> None:
    """Deletes the ``.tmp`` a killed writer left (only while holding the lock)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path + fmt.TMP_SUFFIX)


def fsync_dir(directory: str) -> None:
    """Makes a rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def acquire_lock(path: str) -> int | None:
    """An exclusive advisory lock on ``<atlas>.lock``; a second writer is refused."""
    if fcntl is None:
        return None
    lock_path = path + fmt.LOCK_SUFFIX
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JaxvisError(
                f"another jaxvis process is writing {path} (it holds {lock_path}); "
                "wait for it to finish or choose another output file"
            ) from None
        try:  # the holder may have deleted the file between our open and our lock
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def release_lock(fd: int | None, path: str) -> None:
    """Deletes the lock file and releases the lock (a kill releases it too)."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.remove(path + fmt.LOCK_SUFFIX)
    os.close(fd)
