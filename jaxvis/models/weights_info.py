"""Where a model's weights came from: the provenance written into every atlas."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightsInfo:
    """Where a model's weights came from; written into every atlas.

    Attributes:
      source: ``"imagenet-torchvision"``, ``"keras-h5"``, ``"random"``, ``"keras-model"``
        or ``"flax-model"``.
      sha256: hash of the file the weights came from ("" for random weights); for a model
        passed in memory, the hash of its variables' bytes in a fixed order.
      preprocessing: the input convention (``jaxvis/models/conventions.py``):
        ``"torchvision"`` or ``"caffe"`` for the built-in VGG16, else ``"caffe"``,
        ``"torch"``, ``"tf"``, ``"none"`` or ``"callable:<qualified name>"``.
      has_head: whether ``fc1``, ``fc2`` and ``predictions`` are loaded.
      trained: False for random weights, so no picture is mistaken for a real one.
      path: the file read, or "".
      seed: the init seed for random weights, else None.
      framework: the library and version that defined the model, e.g. ``"keras 3.15.1"``
        ("" for the built-in models).
    """

    source: str
    sha256: str
    preprocessing: str
    has_head: bool
    trained: bool
    path: str = ""
    seed: int | None = None
    framework: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
