"""The names and constants of the maps file format (docs/attribution-format.md), defined
once: the root attribute ``format``, the datasets and the values of the ``done`` mask."""

from __future__ import annotations

import numpy as np

FORMAT_NAME = "jaxvis-attribution-maps"
FORMAT_VERSION = 1
MAPS, DONE, PATHS, SHA256, TARGETS = "maps", "done", "paths", "sha256", "targets"
TODO, FINISHED, FAILED = 0, 1, 2  # values of the ``done`` mask
MAX_SIDE = 16384  # px; larger maps are refused as malformed
F4 = np.dtype("<f4")  # the maps' dtype: little-endian float32
AGAIN = "pass --overwrite to start it over, or choose another output file"


def nbytes(map_shape) -> int:
    """Bytes of one map of ``map_shape`` ([H, W] or [H, W, C])."""
    return int(np.prod(map_shape)) * F4.itemsize
