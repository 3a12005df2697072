"""Committing a chunk to a version-3 atlas in place, without HDF5.

A chunk's rows go with ``os.pwrite`` into bytes HDF5 allocated (jaxvis/atlas/raw.py),
past the layer's commit record; they are fsynced and read back, and only then is the
record (int64 ``[rows, failed, chunks]``, within one 512-byte sector) rewritten and
fsynced. Readers take only the rows the record counts, so a kill at any moment leaves
the previous chunk count or the new one: rows past the record are ignored, and the next
commit (a resume's) writes over them. A write error, or rows that read back wrong, stop
the commit before the record moves, so the atlas still reads as before.
"""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np

from jaxvis.atlas import allocate
from jaxvis.atlas import format as fmt
from jaxvis.atlas.raw import RECORD_DTYPE, LayerRaw, check_apart, layer_raw, pread, pwrite
from jaxvis.atlas.snapshot import write_error
from jaxvis.errors import JaxvisError


class InPlace:
    """The atlas opened for ``pwrite``, and where each layer's rows lie.

    Reopened (:meth:`attach`) after every snapshot, which replaces the file's inode.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.layers: dict[str, LayerRaw] = {}
        self.geometry: dict[str, tuple[int, int, int]] = {}  # size, steps, every

    def attach(self) -> None:
        """Reads and checks the raw layout of every layer with rows, then opens the file."""
        self.close()
        pieces = []
        with h5py.File(self.path, "r", locking=False) as f:
            for name, group in f.items():
                if isinstance(group, h5py.Group) and fmt.COMMITTED in group:
                    self.layers[name], found = layer_raw(self.path, name, group)
                    self.geometry[name] = allocate.geometry(group)
                    pieces += found
        check_apart(self.path, pieces)
        self.fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None
        self.layers, self.geometry = {}, {}

    def commit(self, layer: str, parts: dict[str, np.ndarray]) -> None:
        """Writes ``{dataset: rows}`` after the layer's committed rows, then the record.

        Each dataset's rows start at the count of its own record entry
        (:data:`format.COUNTED_BY`).
        """
        raw = self.layers[layer]
        added = [0, 0, 0]
        writes = []
        for name, rows in parts.items():
            field = fmt.COUNTED_BY[name]
            layout = raw.layouts[name]
            data = memoryview(np.ascontiguousarray(rows, layout.dtype).tobytes())
            added[field] = len(rows)
            for offset, first, end in layout.spans(raw.counts[field], len(rows)):
                writes.append(
                    (name, offset, data[first * layout.row_bytes : end * layout.row_bytes])
                )
        counts = [c + a for c, a in zip(raw.counts, added, strict=True)]
        directory = os.path.dirname(self.path)
        try:
            write_rows(self.fd, writes)
            os.fsync(self.fd)
            _verify(self.fd, layer, writes)
            write_record(self.fd, raw.record_offset, counts)
            os.fsync(self.fd)
        except OSError as e:
            raise write_error(self.path, directory, e) from None
        raw.counts = counts


def write_rows(fd: int, writes: list[tuple[str, int, memoryview]]) -> None:
    """The rows' pwrites, ``(dataset, offset, bytes)`` each."""
    for _, offset, data in writes:
        pwrite(fd, data, offset)


def write_record(fd: int, offset: int, counts: list[int]) -> None:
    """The commit record: one 24-byte ``pwrite`` within one sector (jaxvis/atlas/raw.py
    checks that it does not straddle one). Should the disk still tear it, each of its
    three int64 fields lies whole in the sector and counts a prefix of its own datasets,
    all written before, so any mix of old and new fields is a valid atlas."""
    data = np.array(counts, RECORD_DTYPE).tobytes()
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(errno.EIO, "short write of the commit record")


def _verify(fd: int, layer: str, writes) -> None:
    for name, offset, data in writes:
        if pread(fd, len(data), offset) != data:
            raise JaxvisError(
                f"the rows just written to {layer}/{name} read back differently (a failed "
                "write); the atlas is unchanged, check the disk and re-run to resume"
            )
