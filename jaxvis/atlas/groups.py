"""What the writer puts in an atlas besides rows: the root attributes, the device kinds,
layer groups; and the check of an output path before anything is written."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping

import h5py
import numpy as np

from jaxvis.atlas import format as fmt
from jaxvis.errors import JaxvisError


def check_target(path: str) -> None:
    if not path:
        raise JaxvisError("the atlas path is empty; give a file path like out.h5")
    if os.path.isdir(path):
        raise JaxvisError(f"{path} is a directory; the atlas must be a file path like out.h5")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise JaxvisError(f"cannot write {path}: directory {parent} does not exist")


def write_root(f: h5py.File, prov: Mapping) -> None:
    from jaxvis import __version__

    weights = prov["weights"]
    attrs = {
        fmt.ATTR_FORMAT: fmt.FORMAT_NAME,
        fmt.ATTR_VERSION: np.int32(fmt.FORMAT_VERSION),
        fmt.ATTR_JAXVIS_VERSION: __version__,
        fmt.ATTR_CREATED: datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds"),
        fmt.ATTR_MODEL: str(prov["model"]),
        fmt.ATTR_WEIGHTS_SOURCE: str(weights.get("source", "")),
        fmt.ATTR_WEIGHTS_SHA256: str(weights.get("sha256", "")),
        fmt.ATTR_WEIGHTS_TRAINED: bool(weights.get("trained", True)),
        fmt.ATTR_PREPROCESSING: str(weights.get("preprocessing", "")),
        fmt.ATTR_WEIGHTS: json.dumps(weights, sort_keys=True),
        fmt.ATTR_CONFIG: json.dumps(prov["config"], sort_keys=True),
        fmt.ATTR_DEVICE_KIND: str(prov["device_kind"]),
        fmt.ATTR_DEVICE_KINDS: json.dumps([prov["device_kind"]]),
    }
    f.attrs.update(attrs)


def add_device_kind(f: h5py.File, kind: str) -> None:
    kinds = json.loads(f.attrs.get(fmt.ATTR_DEVICE_KINDS, "[]"))
    f.attrs[fmt.ATTR_DEVICE_KINDS] = json.dumps([*kinds, kind])


def layer_group(f: h5py.File, layer: str, num_filters: int) -> h5py.Group:
    if layer in f:
        return f[layer]
    group = f.create_group(layer)
    group.attrs[fmt.ATTR_NUM_FILTERS] = np.int32(num_filters)
    return group


def drop_rows(group: h5py.Group) -> None:
    """Deletes a layer's empty datasets, to allocate them again for other pictures."""
    for key in [*fmt.COUNTED_BY, fmt.COMMITTED]:
        if key in group:
            del group[key]
    for key in (fmt.ATTR_IMAGE_SIZE, fmt.ATTR_STEPS, fmt.ATTR_SNAPSHOT_EVERY):
        if key in group.attrs:
            del group.attrs[key]
