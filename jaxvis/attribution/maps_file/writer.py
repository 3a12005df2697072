"""Creating, resuming and filling a maps file: :class:`MapsWriter`.

Creation is one atomic snapshot (jaxvis/atlas/snapshot.py) of the complete file, with
every map's bytes preallocated; a chunk's maps are then written in place and fsynced,
and only after them the done mask (jaxvis/attribution/maps_file/raw.py). A kill at any
point leaves a file that opens and holds every chunk committed so far
(docs/attribution-format.md, "Crash safety").
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import weakref

import h5py
import numpy as np

from jaxvis.atlas import format as atlas_format
from jaxvis.atlas.snapshot import acquire_lock, fsync_dir, release_lock, remove_stale, snapshot
from jaxvis.attribution.maps_file.check import check_maps, open_h5, strings
from jaxvis.attribution.maps_file.format import (
    DONE,
    F4,
    FAILED,
    FINISHED,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAPS,
    PATHS,
    SHA256,
    TARGETS,
    nbytes,
)
from jaxvis.attribution.maps_file.raw import pwrite, raw_layout
from jaxvis.attribution.maps_file.run import MapsRun, check_same
from jaxvis.errors import JaxvisError


class MapsWriter:
    """Creates or resumes a maps file and writes chunks of maps into it.

    Args:
      path: the ``.h5`` file. An existing maps file of the same run is resumed; one of
        another run is refused, naming the difference; any other file is never touched.
      run: the :class:`~jaxvis.attribution.maps_file.run.MapsRun`.
      overwrite: build a new file beside the old one (``<out>.new``), which replaces it
        at a clean :meth:`finish`, as atlases do (jaxvis/atlas/writer.py).

    The file itself is created at the first :meth:`write`, when the maps' shape is known;
    a run stopped before that leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike, run: MapsRun, *, overwrite: bool = False):
        path = os.fspath(path)
        check_out(path)
        self.live = self.path = os.path.realpath(path)
        self.run = run
        self.status = np.zeros(len(run.images), np.uint8)  # the done mask
        self._offsets: np.ndarray | None = None  # byte offset of each map, once created
        self._done_offset, self._map_shape = 0, ()
        self._fds: list[int] = []
        lock = acquire_lock(self.live)
        self._release = weakref.finalize(self, _cleanup, self._fds, lock, self.live)
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, overwrite: bool) -> None:
        exists = os.path.exists(self.live)
        if exists:
            with open_h5(self.live) as f:
                check_maps(self.live, f)  # refuses foreign files before anything is touched
        remove_stale(self.live)
        if exists and overwrite:
            self.path = self.live + atlas_format.NEW_SUFFIX
            remove_stale(self.path)
            if os.path.exists(self.path) and self._resumable():
                self._resume()
        elif exists:
            self._resume()

    def _resumable(self) -> bool:
        try:
            with open_h5(self.path) as f:
                self._check_same(f)
        except JaxvisError:
            return False
        return True

    def _resume(self) -> None:
        with open_h5(self.path) as f:
            self._check_same(f)
            self.status = f[DONE][()]
        self._attach()

    def _check_same(self, f: h5py.File) -> None:
        old = check_maps(self.path, f).provenance()
        lists = {"sha256": strings(f[SHA256]), "paths": strings(f[PATHS])}
        check_same(self.path, old, self.run, **lists, targets=strings(f[TARGETS]))

    def todo(self) -> np.ndarray:
        """int64 [M]: images not done yet (failed ones are tried again)."""
        return np.flatnonzero(self.status != FINISHED).astype(np.int64)

    def write(self, indices: np.ndarray, maps: np.ndarray) -> None:
        """Writes maps of images ``indices`` (int [n]; float32 [n, H, W] or [n, H, W, C])
        and then marks them done; a kill in between leaves them to do."""
        self._check_open()
        indices = _check_indices(indices, len(self.status))
        maps = np.ascontiguousarray(maps, F4)
        if maps.ndim not in (3, 4) or len(maps) != len(indices):
            raise JaxvisError(
                f"expected maps [{len(indices)}, H, W] for {len(indices)} images; got "
                f"{list(maps.shape)}"
            )
        if self._offsets is None:
            self._create(maps.shape[1:])
        if maps.shape[1:] != self._map_shape:
            raise JaxvisError(
                f"maps of shape {list(maps.shape[1:])} cannot go into {self.path}, which holds "
                f"maps of shape {list(self._map_shape)}"
            )
        fd = self._fds[0]
        for i, row in zip(indices.tolist(), maps, strict=True):
            pwrite(fd, row.tobytes(), int(self._offsets[i]))
        os.fsync(fd)
        self._mark(indices, FINISHED)

    def fail(self, indices) -> None:
        """Marks images as failed (their maps stay NaN; a resume tries them again)."""
        self._check_open()
        indices = _check_indices(indices, len(self.status))
        if self._offsets is None:  # not created yet: recorded at creation
            self.status[indices] = FAILED
            return
        self._mark(indices, FAILED)

    def _mark(self, indices: np.ndarray, value: int) -> None:
        self.status[indices] = value
        # The whole mask, N bytes: a torn write mixes old and new values, both valid.
        pwrite(self._fds[0], self.status.tobytes(), self._done_offset)
        os.fsync(self._fds[0])

    def _create(self, map_shape: tuple[int, ...]) -> None:
        n = len(self.status)
        verify = functools.partial(check_maps, self.path)  # the copy, before its rename
        with snapshot(self.path, fresh=True, new_bytes=n * nbytes(map_shape), verify=verify) as f:
            _write_root(f, self.run)
            _write_lists(f, self.run, self.status)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # every map's bytes, now
            shape = (n, *map_shape)
            f.create_dataset(
                MAPS, shape, F4, chunks=(1, *map_shape), maxshape=(None, *map_shape),
                fillvalue=np.nan, dcpl=dcpl,
            )  # fmt: skip
        self._attach()

    def _attach(self) -> None:
        """Reads where the raw bytes of the maps and the mask are, and opens the file for
        ``pwrite`` (HDF5 never opens it for writing again)."""
        with open_h5(self.path) as f:
            self._offsets, self._done_offset = raw_layout(self.path, f)
            self._map_shape = tuple(f[MAPS].shape[1:])
        self._fds.append(os.open(self.path, os.O_RDWR))

    def _check_open(self) -> None:
        if not self._release.alive:
            raise JaxvisError(f"the MapsWriter of {self.path} is closed; open a new one")

    def finish(self) -> None:
        """Makes an overwrite live: the new file replaces the old one, atomically."""
        self._check_open()
        if self.path != self.live and os.path.exists(self.path):
            os.replace(self.path, self.live)
            fsync_dir(os.path.dirname(self.live))
            self.path = self.live

    def close(self) -> None:
        """Releases the lock; an unfinished overwrite stays in ``<out>.new``."""
        self._release()

    def __enter__(self) -> MapsWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None and self._release.alive:
                self.finish()
        finally:
            self.close()


def _cleanup(fds: list[int], lock, path: str) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()
    release_lock(lock, path)


def check_out(path: str) -> None:
    """A one-line JaxvisError unless ``path`` can be a maps file to write (before any
    work is done)."""
    if not path or os.path.isdir(path):
        raise JaxvisError(f"{path!r} is not a file path; give the maps file like maps.h5")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise JaxvisError(f"cannot write {path}: directory {parent} does not exist")


def _check_indices(indices, n: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
        raise JaxvisError(f"image indices must be integers [n]; got {indices.dtype}")
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise JaxvisError(f"image indices must be in [0, {n}); got {int(indices.max())}")
    return indices


def _write_root(f: h5py.File, run: MapsRun) -> None:
    from jaxvis import __version__

    skipped = [list(s) for s in run.images.skipped]
    f.attrs.update(
        {
            "format": FORMAT_NAME,
            "format_version": np.int32(FORMAT_VERSION),
            "jaxvis_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds"),
            "model": run.model,
            "weights": json.dumps(run.weights, sort_keys=True),
            "model_dtype": run.dtype,
            "method": str(run.description.get("method", "")),
            "description": json.dumps(run.description, sort_keys=True, default=str),
            "image_size": np.int32(run.size),
            "skipped": json.dumps(skipped),
        }
    )


def _write_lists(f: h5py.File, run: MapsRun, status: np.ndarray) -> None:
    text = h5py.string_dtype()
    f.create_dataset(DONE, data=status.astype(np.uint8))  # contiguous: one offset
    f.create_dataset(PATHS, data=np.array(run.images.paths, dtype=object), dtype=text)
    f.create_dataset(SHA256, data=np.array(run.images.sha256, dtype=object), dtype=text)
    f.create_dataset(TARGETS, data=np.array(run.targets, dtype=object), dtype=text)
