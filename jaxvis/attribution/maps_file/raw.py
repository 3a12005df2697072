"""Where a maps file's raw bytes lie, and writing them in place.

After creation HDF5 never opens a maps file for writing again (jaxvis/attribution/
maps_file/writer.py): a chunk's maps and the done mask are written with ``os.pwrite``
into the bytes HDF5 allocated for them. :func:`raw_layout` finds those bytes and checks
that they lie inside the file and apart, so that a resume of a file from elsewhere can
never write over HDF5's metadata.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from jaxvis.attribution.maps_file.format import DONE, MAPS, nbytes
from jaxvis.errors import JaxvisError


def raw_layout(path: str, f: h5py.File) -> tuple[np.ndarray, int]:
    """Byte offsets of each map (int64 [N]) and of the done mask, checked to be inside
    the file and apart, so that a resume's ``pwrite`` lands only on raw data HDF5
    allocated."""
    maps, done = f[MAPS], f[DONE]
    n, size = maps.shape[0], nbytes(maps.shape[1:])
    zeros = (0,) * (maps.ndim - 1)
    offsets = np.empty(n, np.int64)
    for i in range(n):
        info = maps.id.get_chunk_info_by_coord((i, *zeros))
        if info.byte_offset is None or info.size != size:
            raise JaxvisError(f"{path}: map {i} is not preallocated; it is not a maps file")
        offsets[i] = info.byte_offset
    done_offset = done.id.get_offset()
    if done.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS or done_offset is None:
        raise JaxvisError(f"{path}: /{DONE} is not stored contiguously; it is not a maps file")
    starts = np.append(offsets, done_offset)
    ends = starts + np.append(np.full(n, size), n)
    order = np.argsort(starts)
    if (
        starts.min() < 0
        or ends.max() > os.path.getsize(f.filename)
        or (np.any(starts[order][1:] < ends[order][:-1]))
    ):
        raise JaxvisError(f"{path}: its data overlaps or lies outside the file; it is damaged")
    return offsets, int(done_offset)


def pwrite(fd: int, data: bytes, offset: int) -> None:
    """Writes all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
