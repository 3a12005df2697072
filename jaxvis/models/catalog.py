"""Models by name, as the command line names them: ``vgg16``, ``alexnet`` or a ``.keras``
file.

Built-in models carry their own preprocessing; a Keras file's input convention is given
with ``preprocess`` (``jaxvis/models/conventions.py``). Only Keras 3's ``.keras`` format is
accepted as a model file, because it loads with ``safe_mode=True``: no lambda or other
code in the file runs. Legacy ``.h5`` whole-model files would load without that guard.
"""

from __future__ import annotations

import os

import jax.numpy as jnp

from jaxvis.errors import JaxvisError, choices
from jaxvis.models.feature_model import FeatureModel

BUILTIN = ("vgg16", "alexnet")
KERAS_SUFFIX = ".keras"
DEFAULT_WEIGHTS = "imagenet"


def load(
    spec: str,
    *,
    weights: str | None = DEFAULT_WEIGHTS,
    preprocess: str | None = None,
    dtype: str = "float32",
) -> FeatureModel:
    """The model named by ``spec``.

    Args:
      spec: ``"vgg16"``, ``"alexnet"`` or the path of a ``.keras`` file.
      weights: for the built-in models: ``"imagenet"``, ``None``/``"random"``, or (VGG16
        only) a Keras ``.h5`` weights file. A ``.keras`` file holds its own weights.
      preprocess: a ``.keras`` model's input convention: ``"caffe"``, ``"torch"``,
        ``"tf"`` or ``None`` (the model takes [0, 1] RGB). Built-in models know theirs.
      dtype: compute dtype of a built-in model; a Keras model computes in its own dtype
        policy.
    """
    if spec in BUILTIN:
        if preprocess is not None:
            raise JaxvisError(
                f"{spec} applies its own weights' preprocessing; --preprocess is for .keras files"
            )
        return _builtin(spec, weights, dtype)
    if spec.endswith(KERAS_SUFFIX):
        if weights not in (None, DEFAULT_WEIGHTS):
            raise JaxvisError(f"{spec} holds its own weights; --weights is for {choices(BUILTIN)}")
        if jnp.dtype(dtype) != jnp.float32:
            raise JaxvisError(
                f"a Keras model computes in its own dtype policy; --dtype {dtype} is for "
                f"{choices(BUILTIN)}"
            )
        if not os.path.isfile(spec):
            raise JaxvisError(f"no such model file: {spec}")
        from jaxvis.models.keras_model import load_keras

        return load_keras(spec, preprocess=preprocess)
    if spec.endswith(".h5"):
        raise JaxvisError(
            f"{spec}: model files must be Keras 3 .keras files (they load with safe_mode, so "
            "no code in them runs); re-save with model.save('model.keras'). A Keras VGG16 "
            "weights .h5 goes to --weights"
        )
    raise JaxvisError(
        f"unknown model {spec!r}; valid: {choices(BUILTIN)}, or the path of a .keras file"
    )


def _builtin(name: str, weights: str | None, dtype: str) -> FeatureModel:
    weights = None if weights == "random" else weights
    dtype = jnp.dtype(dtype)
    if name == "vgg16":
        from jaxvis.models.model import vgg16

        return vgg16(weights, dtype=dtype)
    if weights not in (None, DEFAULT_WEIGHTS):
        raise JaxvisError(f"alexnet takes --weights imagenet or random; got {weights!r}")
    from jaxvis.models.model import alexnet

    return alexnet(weights, dtype=dtype)
