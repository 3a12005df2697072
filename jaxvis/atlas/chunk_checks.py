"""Checks of one chunk of an atlas: before it is written (shapes, dtypes, ranges, no
filter twice) and after (the rows read back from the snapshot equal those written)."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import h5py
import numpy as np

from jaxvis.atlas import format as fmt
from jaxvis.chunk import Chunk
from jaxvis.errors import JaxvisError


def verify_rows(f: h5py.File, *, layer: str, rows: tuple[np.ndarray, ...]) -> None:
    """Reads back the rows a chunk just appended; raises if any differs from what was
    written (a write error HDF5 reported only as a warning at close)."""
    n = len(rows[0])
    if not n:
        return
    group = f[layer]
    for name, want in zip((fmt.FILTERS, fmt.IMAGES, fmt.OBJECTIVE, fmt.HISTORY), rows, strict=True):
        got = group[name][-n:]
        if got.shape != want.shape or not np.array_equal(got, want, equal_nan=True):
            raise JaxvisError(
                f"the rows just written to {layer}/{name} read back differently (a failed "
                "write); the atlas is unchanged, check the disk and re-run to resume"
            )


def check_chunk(layer: str, chunk: Chunk, num_filters: int, done: set[int], known):
    """Validates one chunk; returns the arrays in their stored dtypes."""
    failed = chunk.failed
    filters = np.asarray(chunk.filters, np.int64).reshape(-1)
    images = np.asarray(chunk.images)
    n = len(filters)
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[0] != n
        or images.shape[3] != 3
        or images.shape[1] != images.shape[2]
    ):
        raise JaxvisError(
            f"images must be uint8 [{n}, H, H, 3]; got {images.dtype} {list(images.shape)}"
        )
    objective = np.asarray(chunk.objective, np.float32).reshape(-1)
    history = np.asarray(chunk.history, np.float32)
    if objective.shape != (n,) or history.ndim != 2 or history.shape[0] != n:
        raise JaxvisError(
            f"objective must be [{n}] and history [{n}, steps]; got "
            f"{list(objective.shape)} and {list(history.shape)}"
        )
    everything = [*filters.tolist(), *failed]
    check_units(layer, everything, num_filters)
    counts = collections.Counter(everything)
    again = sorted(set(everything) & done) or sorted(i for i, c in counts.items() if c > 1)
    if again:
        raise JaxvisError(f"filters {again} of layer {layer!r} are already written")
    if known is not None and known != (num_filters, images.shape[1], history.shape[1]):
        raise JaxvisError(
            f"layer {layer!r} holds (filters, size, steps) = {known}; chunk "
            f"has {(num_filters, images.shape[1], history.shape[1])}"
        )
    return filters.astype(np.int32), images, objective, history


def check_units(layer: str, units: Sequence[int], num_filters: int) -> None:
    if not isinstance(layer, str) or not layer or "/" in layer or layer.startswith("."):
        raise JaxvisError(f"invalid layer name {layer!r}; it must be non-empty, without '/'")
    bad = [int(i) for i in units if not 0 <= int(i) < num_filters]
    if bad:
        raise JaxvisError(
            f"filters {bad} out of range for layer {layer!r} with {num_filters} filters"
        )
