"""What the site shows of one atlas layer, read once through jaxvis/atlas/reader.py.

Pictures and snapshots stay lazy (h5py datasets, read a block at a time); the small
per-unit arrays are read whole.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvis.atlas.names import printable
from jaxvis.atlas.reader import LayerView
from jaxvis.errors import JaxvisError


@dataclasses.dataclass(frozen=True)
class LayerData:
    """One layer, as the site needs it.

    Attributes:
      name: the layer's name (any text; escaped wherever it is shown).
      stem: its file stem (jaxvis/site/names.py).
      filters: int [N], the unit of each row; objective: float [N]; history: float
        [N, steps]; images: uint8 [N, H, W, 3] or [N, B, H, W, 3], lazy.
      failed: ``{unit: message}`` for units without a picture.
      snapshots: uint8 [N, S, H, W, 3], lazy, or None; snapshot_every: K (0 if none).
    """

    name: str
    stem: str
    objective_description: str
    num_filters: int
    num_requested: int
    image_size: int
    steps: int
    seconds: float
    filters: np.ndarray
    objective: np.ndarray
    history: np.ndarray
    images: object
    failed: dict[int, str]
    snapshots: object
    snapshot_every: int

    @property
    def images_per_unit(self) -> int:
        """B: 1, or the number of diversity images of each unit."""
        return int(self.images.shape[1]) if len(self.images.shape) == 5 else 1

    @property
    def num_snapshots(self) -> int:
        """S, the snapshots of each unit (0 when the atlas has none)."""
        return 0 if self.snapshots is None else int(self.snapshots.shape[1])


def layer_data(view: LayerView, stem: str) -> LayerData:
    """Reads the per-unit arrays of ``view``; pictures and snapshots stay lazy."""
    snapshots, every = _snapshots(view)
    return LayerData(
        name=view.name,
        stem=stem,
        objective_description=view.objective_description,
        num_filters=view.num_filters_in_layer,
        num_requested=view.num_requested,
        image_size=view.image_size,
        steps=view.steps,
        seconds=float(view.seconds.sum()),
        filters=view.filters,
        objective=view.objective,
        history=view.history,
        images=view.images,
        failed=view.failed,
        snapshots=snapshots,
        snapshot_every=every,
    )


def _snapshots(view: LayerView) -> tuple[object, int]:
    """``(snapshots, K)`` or ``(None, 0)``, as the snapshots contract has them: dataset
    ``snapshots`` uint8 [N, S, H, W, 3] and attribute ``snapshot_every`` = K."""
    data, every = getattr(view, "snapshots", None), int(getattr(view, "snapshot_every", 0))
    if data is None or every <= 0:
        return None, 0
    want = (len(view), view.image_size, view.image_size, 3)
    shape = tuple(data.shape)
    if data.dtype != np.uint8 or len(shape) != 5 or shape[0] != want[0] or shape[2:] != want[1:]:
        raise JaxvisError(
            f"/{printable(view.name)}/snapshots is {data.dtype} {list(shape)}; expected "
            f"uint8 [{want[0]}, S, {want[1]}, {want[2]}, 3], a row per unit"
        )
    return (data, every) if shape[1] else (None, 0)
