"""Checks of one chunk of an atlas before it is written: shapes, dtypes, ranges, no
filter twice, snapshots alike (the read-back after it is written: jaxvis/atlas/commit.py)."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from jaxvis.chunk import Chunk
from jaxvis.errors import JaxvisError


def check_chunk(layer: str, chunk: Chunk, num_filters: int, done: set[int], known):
    """Validates one chunk (its snapshots: :func:`check_snapshots`); returns the arrays in
    their stored dtypes, ``(filters, images, objective, history)``."""
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


def check_snapshots(layer: str, chunk: Chunk, images: np.ndarray, steps: int, known: int | None):
    """Validates a chunk's snapshots against its images [n, H, W, 3] and ``steps``.

    Args:
      known: the layer's ``snapshot_every`` once it has rows (0: rows without snapshots),
        None for a layer without rows yet. A chunk must match it: a layer's rows all have
        snapshots, with the same K, or none do.

    Returns:
      uint8 [n, S, H, W, 3] with S = steps // K, or None for a chunk without snapshots.
    """
    every, snaps = chunk.snapshot_every, chunk.snapshots
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 0:
        raise JaxvisError(f"snapshot_every must be an integer >= 0 (0: none); got {every!r}")
    if known is not None and known != every:
        raise JaxvisError(
            f"layer {layer!r} holds rows with snapshot_every {known} (0: no snapshots); a "
            f"chunk with snapshot_every {every} cannot join them"
        )
    if not every and snaps is None:
        return None
    if not 1 <= every <= steps:
        raise JaxvisError(f"snapshot_every must be from 1 to steps ({steps}); got {every}")
    want = [len(images), steps // every, *images.shape[1:]]
    snaps = np.asarray(snaps) if snaps is not None else None
    if snaps is None or snaps.dtype != np.uint8 or list(snaps.shape) != want:
        got = "none" if snaps is None else f"{snaps.dtype} {list(snaps.shape)}"
        raise JaxvisError(
            f"snapshots of {layer!r} must be uint8 {want} (steps // snapshot_every pictures "
            f"per filter); got {got}"
        )
    return snaps
