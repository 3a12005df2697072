"""Where the rows of a version-3 atlas lie in the file, checked, and writing them there.

The writer (jaxvis/atlas/writer.py) commits a chunk with ``os.pwrite`` into bytes HDF5
allocated when the layer was created or grown (jaxvis/atlas/allocate.py), never through
HDF5. So before the first pwrite, :func:`layer_raw` reads where each dataset's HDF5
chunks are, and refuses what the writer could not write safely: compressed data, chunks
missing or of the wrong size, a commit record across a sector boundary, and
:func:`check_apart` any two pieces that overlap or lie outside the file. A file from
elsewhere can then never make a resume write over HDF5's metadata.
"""

from __future__ import annotations

import dataclasses
import math
import os

import h5py
import numpy as np

from jaxvis.atlas import format as fmt
from jaxvis.atlas.names import printable
from jaxvis.errors import JaxvisError

RECORD_DTYPE = np.dtype("<i8")
RECORD_BYTES = len(fmt.COMMITTED_FIELDS) * RECORD_DTYPE.itemsize


@dataclasses.dataclass(frozen=True)
class RowLayout:
    """Byte offsets of the HDF5 chunks of one dataset (int64 [chunks], in row order),
    each holding ``per_chunk`` rows of ``row_bytes``."""

    offsets: np.ndarray
    per_chunk: int
    row_bytes: int
    dtype: np.dtype

    def spans(self, start: int, n: int) -> list[tuple[int, int, int]]:
        """``(byte offset, first, end)`` pieces holding rows ``start .. start + n``, with
        ``first``/``end`` counted from ``start``: one piece per HDF5 chunk touched."""
        out, row = [], start
        while row < start + n:
            j, within = divmod(row, self.per_chunk)
            end = min(start + n, (j + 1) * self.per_chunk)
            out.append((int(self.offsets[j]) + within * self.row_bytes, row - start, end - start))
            row = end
        return out


@dataclasses.dataclass
class LayerRaw:
    """Where a layer's rows and its commit record lie, and the counts committed."""

    layouts: dict[str, RowLayout]
    record_offset: int
    counts: list[int]
    capacity: int


def layer_raw(path: str, name: str, group: h5py.Group) -> tuple[LayerRaw, list]:
    """Reads and checks where layer ``name``'s datasets and commit record lie; returns
    them and the raw pieces ``(offset, size, name)`` for :func:`check_apart`."""
    where = f"/{printable(name)}"
    layouts, pieces = {}, []
    for key in fmt.COUNTED_BY:
        if key in group:
            layouts[key], spans = _row_layout(path, f"{where}/{key}", group[key])
            pieces += [(start, size, f"{where}/{key}") for start, size in spans]
    record = group[fmt.COMMITTED]
    offset = _record_offset(path, f"{where}/{fmt.COMMITTED}", record)
    pieces.append((offset, RECORD_BYTES, f"{where}/{fmt.COMMITTED}"))
    counts = [int(c) for c in record[()]]
    return LayerRaw(layouts, offset, counts, int(group[fmt.IMAGES].shape[0])), pieces


def _row_layout(path: str, at: str, dset: h5py.Dataset):
    plist = dset.id.get_create_plist()
    if plist.get_nfilters():
        raise JaxvisError(
            f"{path}: {at} is compressed; a version-3 atlas stores its rows raw, so that "
            "they can be written in place"
        )
    capacity = dset.shape[0]
    row_bytes = math.prod(dset.shape[1:]) * dset.dtype.itemsize
    if plist.get_layout() == h5py.h5d.CONTIGUOUS:
        offset = dset.id.get_offset()
        if offset is None and capacity * row_bytes:
            raise JaxvisError(f"{path}: {at} has no storage allocated; expected preallocated rows")
        layout = RowLayout(
            np.array([offset or 0], np.int64), max(capacity, 1), row_bytes, dset.dtype
        )
        return layout, [(offset or 0, capacity * row_bytes)]
    if plist.get_layout() != h5py.h5d.CHUNKED or tuple(dset.chunks[1:]) != dset.shape[1:]:
        raise JaxvisError(
            f"{path}: {at} is not stored in whole rows; expected contiguous data or HDF5 "
            "chunks of whole rows"
        )
    per_chunk = dset.chunks[0]
    found = {}
    dset.id.chunk_iter(lambda info: found.__setitem__(info.chunk_offset[0] // per_chunk, info))
    n = -(-capacity // per_chunk)
    offsets = np.zeros(n, np.int64)
    for j in range(n):
        info = found.get(j)
        if info is None or info.byte_offset is None or info.size != per_chunk * row_bytes:
            raise JaxvisError(
                f"{path}: {at} has no bytes allocated from row {j * per_chunk}; expected every "
                "row's bytes allocated (a version-3 atlas writes them in place)"
            )
        offsets[j] = info.byte_offset
    spans = [(int(o), per_chunk * row_bytes) for o in offsets]
    return RowLayout(offsets, per_chunk, row_bytes, dset.dtype), spans


def _record_offset(path: str, at: str, dset: h5py.Dataset) -> int:
    plist = dset.id.get_create_plist()
    offset = dset.id.get_offset()
    if (
        plist.get_layout() != h5py.h5d.CONTIGUOUS
        or plist.get_nfilters()
        or offset is None
        or dset.dtype != RECORD_DTYPE
    ):
        raise JaxvisError(f"{path}: {at} is not a contiguous little-endian int64 dataset")
    if offset % fmt.SECTOR_BYTES + RECORD_BYTES > fmt.SECTOR_BYTES:
        raise JaxvisError(
            f"{path}: {at} crosses a {fmt.SECTOR_BYTES}-byte sector boundary (offset "
            f"{offset}), so its one write could tear; expected it within one sector"
        )
    return int(offset)


def check_apart(path: str, pieces: list[tuple[int, int, str]]) -> None:
    """Refuses raw pieces ``(offset, size, name)`` that overlap or leave the file."""
    end_of_file = os.path.getsize(path)
    pieces = sorted(p for p in pieces if p[1])
    for start, size, name in pieces:
        if start < 0 or start + size > end_of_file:
            raise JaxvisError(
                f"{path}: the data of {name} lies outside the file (bytes {start} to "
                f"{start + size} of {end_of_file}); it is damaged"
            )
    for (a, size, first), (b, _, second) in zip(pieces, pieces[1:], strict=False):
        if b < a + size:
            raise JaxvisError(
                f"{path}: the data of {first} and {second} overlap; it is damaged, and a "
                "resume would write over it"
            )


def pwrite(fd: int, data: memoryview, offset: int) -> None:
    """Writes all of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def pread(fd: int, size: int, offset: int) -> bytes:
    """Reads ``size`` bytes at ``offset``, or fewer at the end of the file."""
    parts, done = [], 0
    while done < size:
        part = os.pread(fd, size - done, offset + done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return b"".join(parts)
