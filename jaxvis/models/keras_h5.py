"""Reads VGG16 weights from Keras HDF5 files into jaxvis's params tree.

Three layouts hold the same arrays (conv kernels HWIO, dense kernels [in, out], fc1's rows
in channels-last flatten order, as Keras's ``channels_last`` Flatten produces them):

* **Legacy Keras HDF5**, as in the official
  ``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5``: the root has a ``layer_names``
  attribute; each layer's group has a ``weight_names`` attribute whose entries are paths of
  datasets inside that group, kernel first, then bias. The official files name them
  ``block1_conv1_W_1:0``; Keras 2 writes ``block1_conv1/kernel:0`` and Keras 3
  ``block1_conv1/kernel``. Layers without weights (input, pools, flatten) have none.
* **A Keras full-model file** (``model.save("x.h5")``, Keras 2 or 3): the same, inside a
  ``model_weights`` group.
* **Keras 3's native** ``model.save_weights("x.weights.h5")``: ``layers/conv2d``,
  ``layers/conv2d_1``, ..., ``layers/dense_2``, each with ``vars/0`` (kernel) and ``vars/1``
  (bias). Keras numbers these per class in network order and matches them by position, so
  we do too: ``conv2d_k`` is the k-th conv layer and ``dense_k`` the k-th dense layer.

Layers are matched by name; a file that is not VGG16 gets one line naming the missing
layers, the extra ones and the wrong shapes. Channel order (channels-first Theano files)
cannot be told from shapes, so only the ``tf_dim_ordering_tf_kernels`` files are supported.
"""

from __future__ import annotations

import hashlib
import os
import re

import h5py
import numpy as np

from jaxvis.errors import JaxvisError
from jaxvis.models.vgg16 import CONV_NAMES, FEATURE_LAYERS, HEAD_LAYERS

_CHUNK = 1 << 20
# Keras 3 saving_lib: per-class names in network order, "conv2d", "conv2d_1", ...
_NATIVE_NAME = re.compile(r"^(conv2d|dense)(?:_(\d+))?$")


def _expected_shapes(head: bool) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{layer: (kernel shape, bias shape)}`` of VGG16, with or without the head."""
    shapes = {}
    fan_in = 3
    for layer in FEATURE_LAYERS:
        if layer.kind == "conv":
            shapes[layer.name] = ((3, 3, fan_in, layer.num_filters), (layer.num_filters,))
            fan_in = layer.num_filters
    fan_in = 7 * 7 * 512  # Keras applications/vgg16.py: Flatten of the 7x7x512 block5_pool.
    for layer in HEAD_LAYERS if head else ():
        if layer.kind == "dense":
            shapes[layer.name] = ((fan_in, layer.num_filters), (layer.num_filters,))
            fan_in = layer.num_filters
    return shapes


_DENSE_NAMES = [la.name for la in HEAD_LAYERS if la.kind == "dense"]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _strings(group: h5py.Group, name: str) -> list[str]:
    """A list-of-names attribute, joined if Keras split it into ``name0``, ``name1``, ...

    Keras's legacy writer chunks attributes above the 64 KB HDF5 header limit.
    """
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_legacy(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    """``{layer: [arrays in file order]}`` for every layer that has weights."""
    layers = {}
    for name in _strings(group, "layer_names"):
        if name not in group:
            raise JaxvisError(f"layer {name!r} is listed in layer_names but has no group")
        layer = group[name]
        arrays = [np.asarray(layer[w], np.float32) for w in _strings(layer, "weight_names")]
        if arrays:
            layers[name] = arrays
    return layers


def _native_name(key: str) -> str:
    """VGG16 name of a Keras 3 native group (``conv2d_10`` is ``block5_conv1``)."""
    match = _NATIVE_NAME.match(key)
    if match is None:
        return key
    names = CONV_NAMES if match[1] == "conv2d" else _DENSE_NAMES
    index = int(match[2] or 0)
    return names[index] if index < len(names) else key


def _read_native(group: h5py.Group) -> dict[str, list[np.ndarray]]:
    layers = {}
    for key, layer in group.items():
        arrays = layer.get("vars") if isinstance(layer, h5py.Group) else None
        if isinstance(arrays, h5py.Group) and len(arrays):
            order = sorted(arrays, key=int)
            layers[_native_name(key)] = [np.asarray(arrays[i], np.float32) for i in order]
    return layers


def _read(f: h5py.File) -> dict[str, list[np.ndarray]]:
    if "layer_names" in f.attrs or "layer_names0" in f.attrs:
        return _read_legacy(f)
    if isinstance(f.get("model_weights"), h5py.Group):
        return _read_legacy(f["model_weights"])
    if isinstance(f.get("layers"), h5py.Group):
        return _read_native(f["layers"])
    raise JaxvisError(
        "it is HDF5 but not a Keras weights file (no 'layer_names' attribute, "
        "'model_weights' group or 'layers' group)"
    )


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _problems(layers: dict[str, list[np.ndarray]], expected: dict) -> list[str]:
    """Human-readable mismatches between the file's layers and VGG16's."""
    missing = [name for name in expected if name not in layers]
    extra = [name for name in layers if name not in expected]
    wrong = []
    for name, (kernel, bias) in expected.items():
        if name not in layers:
            continue
        got = [a.shape for a in layers[name]]
        if len(got) != 2:
            wrong.append(f"{name} {len(got)} arrays {list(map(_fmt, got))} != kernel, bias")
            continue
        for what, shape, want in zip(("kernel", "bias"), got, (kernel, bias), strict=True):
            if shape != want:
                wrong.append(f"{name} {what} {_fmt(shape)} != {_fmt(want)}")
    parts = [("missing", missing), ("extra", extra), ("wrong shapes", wrong)]
    return [f"{label} [{', '.join(items)}]" for label, items in parts if items]


def load(path: str) -> tuple[dict, str]:
    """Loads VGG16 weights from a Keras HDF5 file.

    Args:
      path: a Keras ``.h5`` file: the official ``vgg16_weights_tf_dim_ordering_tf_kernels``
        file with or without ``_notop``, or what Keras 2 or 3 saves for ``VGG16()``.

    Returns:
      ``(params, sha256)``: params ``{layer: {"kernel": HWIO or [in, out] float32,
      "bias": [out] float32}}`` for the 13 conv layers and, if the file has the head,
      ``fc1``, ``fc2`` and ``predictions``; sha256 is the hex digest of the file.

    Raises:
      JaxvisError: one line, if the file is missing, not HDF5, truncated, not a Keras
        weights file, or not VGG16 (naming missing layers, extra layers, wrong shapes).
    """
    if not os.path.exists(path):
        raise JaxvisError(
            f"weights file {path} not found; valid weights: 'imagenet', None (random), "
            "or the path of a Keras VGG16 .h5 file"
        )
    if not os.path.isfile(path):
        raise JaxvisError(f"weights file {path} is not a file")
    try:
        with h5py.File(path, "r") as f:
            layers = _read(f)
    except JaxvisError as e:
        raise JaxvisError(f"cannot read weights file {path}: {e}") from None
    except (OSError, KeyError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise JaxvisError(
            f"cannot read weights file {path} as HDF5 ({reason}); is it a complete "
            "Keras .h5 download?"
        ) from None
    expected = _expected_shapes(head=any(la.name in layers for la in HEAD_LAYERS))
    problems = _problems(layers, expected)
    if problems:
        raise JaxvisError(f"weights file {path} does not match vgg16: {'; '.join(problems)}")
    params = {name: {"kernel": layers[name][0], "bias": layers[name][1]} for name in expected}
    return params, _sha256(path)
