"""Atomic snapshots of a file, and the lock that keeps one writer per file.

HDF5 updates its metadata in place, and a process killed in the middle of that can leave
a file that no longer opens. So HDF5 never changes an atlas on disk in place: each change
of its structure is made in a copy (``<atlas>.tmp``), which is flushed, fsynced and
closed, then moved over the atlas with ``os.replace`` (atomic on POSIX), and the
directory is fsynced. A kill at any moment leaves either the previous snapshot or the
new one, never a mix; the next writer deletes a stale ``.tmp``.

A snapshot costs one copy of the file, O(file size). Since format version 3 an atlas
takes one only for its creation, a new layer, growing a layer's capacity (by at least
2x) and a new device kind; chunks are committed in place, without HDF5
(jaxvis/atlas/commit.py). docs/atlas-format.md, "Crash safety" and "Cost", has the
measurements.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator

import h5py

from jaxvis.atlas import format as fmt
from jaxvis.errors import JaxvisError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per atlas is then on you.
    fcntl = None


# Headroom a snapshot asks for beyond the old file and the new rows: HDF5's metadata,
# B-tree nodes and chunk padding (a few hundred KB at most for the atlas layout).
_HEADROOM_BYTES = 256 * 1024


@contextlib.contextmanager
def snapshot(
    path: str,
    *,
    fresh: bool = False,
    new_bytes: int = 0,
    verify: Callable[[h5py.File], None] | None = None,
    aligned: bool = False,
) -> Iterator[h5py.File]:
    """Yields a writable copy of ``path`` (a new file if ``fresh``); on a clean exit the
    copy atomically replaces ``path``, on an exception it is deleted.

    A write error anywhere (data, metadata, flush, close, fsync, rename) aborts the
    commit: the live file stays as it was, the copy is removed, and the error is one
    line. HDF5 reports some write errors only when a file is closed, and then only as a
    warning, so the copy is also checked for room beforehand (``new_bytes``: the data
    about to be added) and, after closing, reopened and passed to ``verify``, which
    raises if the rows read back are not the rows written.

    ``aligned`` (atlases of version 3) places every HDF5 allocation on a
    :data:`format.SECTOR_BYTES` boundary, so the commit record never straddles a sector,
    and reserves the copy's blocks (``posix_fallocate``) before it replaces ``path``, so
    that rows written in place later cannot meet a full disk.
    """
    tmp = path + fmt.TMP_SUFFIX
    directory = os.path.dirname(os.path.abspath(path))
    try:
        _check_room(directory, (0 if fresh else os.path.getsize(path)) + new_bytes)
        if not fresh:
            shutil.copyfile(path, tmp)
        align = {"alignment_threshold": 1, "alignment_interval": fmt.SECTOR_BYTES}
        f = h5py.File(
            tmp,
            "w" if fresh else "r+",
            track_order=True,
            rdcc_nbytes=0,
            **(align if aligned else {}),
        )
        try:
            yield f
            f.flush()
        finally:
            f.close()
        if verify is not None:
            with h5py.File(tmp, "r") as check:
                verify(check)
        with open(tmp, "rb+") as fh:
            if aligned and hasattr(os, "posix_fallocate"):
                _reserve(fh.fileno())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, JaxvisError):
            raise write_error(path, directory, e) from None
        raise


def _reserve(fd: int) -> None:
    """Allocates the blocks of the whole file (HDF5 leaves unwritten rows as holes)."""
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _check_room(directory: str, need: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < need + _HEADROOM_BYTES:
        raise JaxvisError(
            f"no space left on {directory}: the next snapshot needs about "
            f"{_mb(need + _HEADROOM_BYTES)}, {_mb(free)} is free; free space and re-run to "
            "resume (the atlas holds every chunk finished so far)"
        )


def write_error(path: str, directory: str, e: BaseException) -> JaxvisError:
    """A write error as one line: no space left, or what failed (the atlas unchanged)."""
    text = str(e)
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "errno = 28" in text:
        return JaxvisError(
            f"no space left on {directory} while writing {path}; free space and re-run to "
            "resume (the atlas holds every chunk finished so far)"
        )
    reason = getattr(e, "strerror", None) or (text.splitlines() or [type(e).__name__])[0]
    return JaxvisError(
        f"could not write {path}: {reason}; the atlas is unchanged, re-run to resume"
    )


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


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
