"""What identifies a maps file's run, and the check that a resume is the same run.

A file is identified by the model, its weights (jaxvis/atlas/identity.py) and dtype, the
attributor's ``description``, the image size, the images' SHA-256 in order, and each
image's target. Paths may move; the batch size is not part of it (maps do not depend on
chunking).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from jaxvis.atlas.identity import check_same_run, normalized_provenance
from jaxvis.atlas.names import printable
from jaxvis.attribution.images import ImageList
from jaxvis.attribution.maps_file.format import AGAIN
from jaxvis.errors import JaxvisError


@dataclasses.dataclass(frozen=True)
class MapsRun:
    """Everything a maps file records about its run.

    Attributes:
      model: ``model.name``.
      weights: ``model.info.to_dict()``.
      dtype: the model's compute dtype (bf16 and fp32 maps differ).
      description: the attributor's ``description`` (method, layer, seed, every option).
      size: image side in pixels.
      images: the :class:`~jaxvis.attribution.images.ImageList`.
      targets: one target description per image, [N].
    """

    model: str
    weights: dict
    dtype: str
    description: dict
    size: int
    images: ImageList
    targets: tuple[str, ...]

    def provenance(self) -> dict:
        """The identity in the atlas's terms (jaxvis/atlas/identity.py)."""
        return provenance(self.model, self.weights, self.dtype, self.description, self.size)


def provenance(model: str, weights: dict, dtype: str, description: dict, size: int) -> dict:
    """``{"model", "weights", "config"}``: the attributor's description, the image size and
    the dtype are the config; batch size and the like (``RUN_ONLY_CONFIG_KEYS``) are not."""
    config = {**description, "image_size": size, "dtype": dtype}
    return normalized_provenance({"model": model, "weights": weights, "config": config})


def check_same(
    path: str,
    old: dict,
    run: MapsRun,
    *,
    sha256: Sequence[str],
    paths: Sequence[str],
    targets: Sequence[str],
) -> None:
    """A one-line JaxvisError naming the first difference between a file and ``run``.

    Args:
      path: the file, for the message.
      old: the file's provenance (``Header.provenance()``).
      run: the run that would resume it.
      sha256, paths, targets: the file's lists, [N] each.
    """
    attrs = {"model": old["model"], "weights": json.dumps(old["weights"])}
    check_same_run(path, {**attrs, "config": json.dumps(old["config"])}, run.provenance())
    _same_list(path, "image", sha256, run.images.sha256, paths)
    _same_list(path, "target", targets, run.targets)


def _same_list(path: str, what: str, old, new, old_paths=None) -> None:
    if len(old) != len(new):
        raise JaxvisError(
            f"{path} was made with different settings ({len(old)} {what}s in the file, "
            f"{len(new)} now); {AGAIN}"
        )
    i = next((i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b), None)
    if i is not None:
        where = f" ({printable(old_paths[i])})" if old_paths else ""
        raise JaxvisError(
            f"{path} was made with different settings ({what} {i}{where}: "
            f"{printable(old[i])!r} in the file, {printable(new[i])!r} now); {AGAIN}"
        )
