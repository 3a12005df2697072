"""Creating a version-3 layer at a capacity, or growing it: inside a snapshot only.

Every dataset whose rows a chunk adds gets its bytes now (HDF5's early allocation, no
fill written), so that commits can write rows in place with ``os.pwrite``
(jaxvis/atlas/raw.py) and HDF5 never opens the atlas for writing between snapshots. The
snapshot then reserves the file's blocks (``posix_fallocate``,
jaxvis/atlas/snapshot.py), so a full disk shows at allocation, not mid-run.
"""

from __future__ import annotations

import h5py
import numpy as np

from jaxvis.atlas import format as fmt

# Entries per HDF5 chunk of the 1-D datasets, and of failure messages (200 bytes each).
ENTRIES_PER_CHUNK = 256
MESSAGES_PER_CHUNK = 64


def _early() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # every row's bytes, at creation/resize
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)  # rows past `committed` are never read
    return dcpl


def row_bytes(size: int, steps: int, every: int) -> int:
    """Bytes one unit takes in all of a layer's datasets (for the room check)."""
    pictures = size * size * 3 * (1 + (steps // every if every else 0))
    return pictures + 4 * steps + 4 * 5 + 8 + fmt.MESSAGE_BYTES


def ensure(group: h5py.Group, size: int, steps: int, every: int, capacity: int) -> None:
    """Creates the layer's datasets with ``capacity`` rows, or grows them to it."""
    if fmt.IMAGES in group:
        for key in fmt.COUNTED_BY:
            if key in group and group[key].shape[0] < capacity:
                group[key].resize(capacity, axis=0)
        return
    group.attrs[fmt.ATTR_IMAGE_SIZE] = np.int32(size)
    group.attrs[fmt.ATTR_STEPS] = np.int32(steps)
    pictures = {fmt.IMAGES: (size, size, 3)}
    if every:
        group.attrs[fmt.ATTR_SNAPSHOT_EVERY] = np.int32(every)
        pictures[fmt.SNAPSHOTS] = (steps // every, size, size, 3)
    for name, shape in pictures.items():  # one filter per HDF5 chunk: what readers fetch
        _create(group, name, (capacity, *shape), np.uint8, (1, *shape))
    hist_rows = max(1, min(1024, 16384 // max(steps, 1)))
    _create(group, fmt.HISTORY, (capacity, steps), np.float32, (hist_rows, max(steps, 1)))
    for name, dtype in [
        (fmt.FILTERS, np.int32),
        (fmt.OBJECTIVE, np.float32),
        (fmt.FAILED_FILTERS, np.int32),
        (fmt.SECONDS, np.float64),
        (fmt.CHUNK_SIZES, np.int32),
    ]:
        _create(group, name, (capacity,), dtype, (ENTRIES_PER_CHUNK,))
    text = np.dtype(f"S{fmt.MESSAGE_BYTES}")
    _create(group, fmt.FAILED_MESSAGES, (capacity,), text, (MESSAGES_PER_CHUNK,))
    record = group.create_dataset(fmt.COMMITTED, (3,), "<i8", dcpl=_early())
    record[:] = 0


def _create(group, name, shape, dtype, chunks) -> None:
    group.create_dataset(
        name,
        shape,
        dtype,
        chunks=chunks,
        maxshape=(None, *shape[1:]),
        compression=fmt.IMAGE_COMPRESSION,
        dcpl=_early(),
    )


def geometry(group: h5py.Group) -> tuple[int, int, int]:
    """``(image_size, steps, snapshot_every)`` a layer's datasets were allocated for."""
    return (
        int(group.attrs[fmt.ATTR_IMAGE_SIZE]),
        int(group.attrs[fmt.ATTR_STEPS]),
        int(group.attrs.get(fmt.ATTR_SNAPSHOT_EVERY, 0)),
    )


def grown(capacity: int, needed: int, num_filters: int) -> int:
    """The capacity after growing past ``capacity`` to hold ``needed`` rows: at least
    twice the old one (so a run's copies add up to a few times its size), at most the
    layer's filter count (each filter takes one row at most)."""
    return min(num_filters, max(needed, 2 * capacity))


def message_bytes(message: str) -> bytes:
    """``message`` as UTF-8, cut at a character boundary to :data:`fmt.MESSAGE_BYTES`."""
    data = str(message).encode("utf-8")
    if len(data) <= fmt.MESSAGE_BYTES:
        return data
    return data[: fmt.MESSAGE_BYTES].decode("utf-8", "ignore").encode("utf-8")


def fits(capacity: int, counts, rows: int, failed: int) -> bool:
    """Whether a chunk of ``rows`` written and ``failed`` units fits in ``capacity``."""
    need = (counts[0] + rows, counts[1] + failed, counts[2] + 1)
    return max(need) <= capacity


def needed(counts, rows: int, failed: int) -> int:
    return max(counts[0] + rows, counts[1] + failed, counts[2] + 1)
