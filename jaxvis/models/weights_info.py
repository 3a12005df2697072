"""Where a model's weights came from: the provenance written into every atlas."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightsInfo:
    """Where a model's weights came from; written into every atlas.

    Attributes:
      source: ``"imagenet-torchvision"``, ``"keras-h5"`` or ``"random"``.
      sha256: hash of the file the weights came from ("" for random weights).
      preprocessing: ``"torchvision"`` or ``"caffe"``.
      has_head: whether ``fc1``, ``fc2`` and ``predictions`` are loaded.
      trained: False for random weights, so no picture is mistaken for a real one.
      path: the file read, or "".
      seed: the init seed for random weights, else None.
    """

    source: str
    sha256: str
    preprocessing: str
    has_head: bool
    trained: bool
    path: str = ""
    seed: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
