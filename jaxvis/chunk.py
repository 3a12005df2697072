"""One chunk of finished units: what the engine yields and the atlas writer stores.

Numpy only (no jax), so that the atlas side of jaxvis can name it without importing jax.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Chunk:
    """The results of one compiled chunk of units of one layer.

    Attributes:
      layer: the layer the units belong to.
      filters: int [n], the units that succeeded, in request order.
      images: uint8 [n, H, W, 3] (or [n, B, H, W, 3] for B images per unit).
      objective: float32 [n], the objective of each final image without transforms.
      history: float32 [n, steps], the objective at every step, before its update.
      failed: ``{filter: message}`` for units whose objective or image became non-finite;
        they have no row in the arrays above.
      seconds: the device time attributable to the chunk, compile time excluded: from
        when the device could start it to when its outputs were ready
        (jaxvis/inflight.py, ``fetch_chunk``); the host's fetch and write are not in it.
      compile_seconds: time spent tracing and compiling for this chunk.
      snapshots: uint8 [n, S, H, W, 3] (or [n, S, B, H, W, 3]): snapshot s of a unit is
        its picture after step ``(s + 1) * snapshot_every``, so ``S = steps //
        snapshot_every``; None without snapshots.
      snapshot_every: the steps between snapshots, K; 0 without snapshots.
    """

    layer: str
    filters: np.ndarray
    images: np.ndarray
    objective: np.ndarray
    history: np.ndarray
    failed: dict[int, str]
    seconds: float
    compile_seconds: float
    snapshots: np.ndarray | None = None
    snapshot_every: int = 0

    @property
    def units(self) -> int:
        """How many units this chunk finished, failed ones included."""
        return len(self.filters) + len(self.failed)
