"""Building a :class:`jaxvis.chunk.Chunk` from plain arrays, for writer tests."""

import numpy as np

from jaxvis.chunk import Chunk


def make_chunk(layer, filters, images, objective, history, *, seconds=0.0, failed=None):
    return Chunk(
        layer=layer,
        filters=np.asarray(filters),
        images=np.asarray(images),
        objective=np.asarray(objective),
        history=np.asarray(history),
        failed=dict(failed or {}),
        seconds=float(seconds),
        compile_seconds=0.0,
    )
