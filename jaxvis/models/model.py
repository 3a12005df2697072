"""Building :class:`FeatureModel` s: the VGG16 constructor.

The protocol itself (:class:`FeatureModel`, :class:`LayerInfo`) lives in
``jaxvis/models/feature_model.py``; this module turns a weights source into a model that
follows it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxvis.models import vgg16 as _vgg
from jaxvis.models import weights as _weights
from jaxvis.models.feature_model import FeatureModel, LayerInfo
from jaxvis.models.taps import CAPABILITIES
from jaxvis.models.weights_info import WeightsInfo

__all__ = ["FeatureModel", "LayerInfo", "WeightsInfo", "vgg16"]


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
