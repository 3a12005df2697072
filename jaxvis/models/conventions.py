"""Input conventions: maps from jaxvis's RGB [0, 1] images to what a model was trained on.

Every image outside a model is float32 NHWC RGB in [0, 1]. A model's ``preprocess`` turns
that into its own input. The named conventions are those of Keras
``applications/imagenet_utils.py`` (``preprocess_input(x, mode=...)``, which takes RGB in
[0, 255]):

* ``"caffe"``: RGB to BGR, scaled to [0, 255], minus the ImageNet BGR means;
* ``"torch"``: ``(x - mean) / std`` with the torchvision ImageNet mean and std;
* ``"tf"``: scaled to [-1, 1];
* ``None``: the model takes [0, 1] RGB as it is.

A callable ``images -> images`` is accepted too; it is recorded by its qualified name.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from jaxvis._types import Array
from jaxvis.errors import JaxvisError, choices

# Keras applications/imagenet_utils.py, _preprocess_symbolic_input / _preprocess_numpy_input.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
NAMED = ("caffe", "torch", "tf")

Preprocess = Callable[[Array], Array]


def _caffe(x: Array) -> Array:
    return x[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR, x.dtype)


def _torch(x: Array) -> Array:
    return (x - jnp.asarray(TORCH_MEAN, x.dtype)) / jnp.asarray(TORCH_STD, x.dtype)


def _tf(x: Array) -> Array:
    return x * 2.0 - 1.0


def _identity(x: Array) -> Array:
    return x


_FUNCTIONS = {"caffe": _caffe, "torch": _torch, "tf": _tf, None: _identity}


def resolve(preprocess: str | Preprocess | None) -> tuple[Preprocess, str]:
    """``(function, description)`` for a named convention, ``None`` or a callable.

    The description is what atlases record: the name, ``"none"`` (the model takes [0, 1]
    RGB), or ``"callable:<module>.<qualname>"``.
    """
    if preprocess is None or (isinstance(preprocess, str) and preprocess in NAMED):
        return _FUNCTIONS[preprocess], preprocess or "none"
    if callable(preprocess):
        module = getattr(preprocess, "__module__", None) or "?"
        name = getattr(preprocess, "__qualname__", None) or type(preprocess).__qualname__
        return preprocess, f"callable:{module}.{name}"
    raise JaxvisError(
        f"unknown preprocess {preprocess!r}; valid: {choices(NAMED)}, None (the model "
        "takes [0, 1] RGB) or a callable images -> images"
    )
