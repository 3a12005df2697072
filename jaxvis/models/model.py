"""The model object that the engine and the CLI work with.

Any model the engine can visualize follows one small protocol (see
:class:`FeatureModel`): a pure ``apply(params, images, stop_at) -> {name: activation}``
that computes nothing beyond ``stop_at``, its ``params``, and an ordered ``layers`` list
of :class:`LayerInfo` with filter counts. VGG16 is one such model; a user's own Flax CNN
is another (see README, "Your own models").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxvis._types import Array, Params
from jaxvis.errors import JaxvisError, choices
from jaxvis.models import vgg16 as _vgg
from jaxvis.models import weights as _weights
from jaxvis.models.vgg16 import LayerInfo
from jaxvis.models.weights import WeightsInfo


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureModel:
    """A model the engine can visualize.

    Attributes:
      name: short model name, recorded in atlases.
      apply: pure ``(params, images [N,H,W,3] RGB in [0,1], stop_at) -> {name: [N,h,w,C]}``.
        It must compute nothing beyond ``stop_at``. Conv layers should also expose the
        pre-ReLU response as ``name + ":pre"`` if they want it to be the default target.
      params: the weights pytree, passed to ``apply`` as an argument (never closed over).
      layers: ordered layers that ``stop_at`` accepts, with their filter counts.
      info: provenance of the weights.
      min_size: smallest accepted image side in pixels.
      unavailable: ``{layer: reason}`` for layers this instance cannot compute (a head
        asked of headless weights), so the error can say why.
      dtype: compute dtype name, recorded in atlases (bf16 and fp32 pictures differ).

    Equality is identity, so a model can key the engine's compile cache.
    """

    name: str
    apply: Callable[[Params, Array, str], dict[str, Array]]
    params: Params
    layers: Sequence[LayerInfo]
    info: WeightsInfo | None = None
    min_size: int = 1
    unavailable: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"

    def layer(self, name: str) -> LayerInfo:
        """The named layer, or a one-line error listing the valid ones."""
        for la in self.layers:
            if la.name == name:
                return la
        if name in self.unavailable:
            raise JaxvisError(f"layer {name!r} {self.unavailable[name]}")
        raise JaxvisError(
            f"unknown layer {name!r} for {self.name}; valid layers: "
            f"{choices(la.name for la in self.layers)}"
        )

    def num_filters(self, layer: str) -> int:
        """Number of filters (channels or units) of ``layer``."""
        return self.layer(layer).filters

    def features(self, images: Array, stop_at: str) -> dict[str, Array]:
        """Activations up to ``stop_at`` for float32 [N, H, W, 3] RGB images in [0, 1]."""
        self.layer(stop_at.removesuffix(":pre"))
        return self.apply(self.params, jnp.asarray(images, jnp.float32), stop_at)

    @property
    def conv_layers(self) -> list[str]:
        return [la.name for la in self.layers if la.kind == "conv"]


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
    apply = functools.partial(_vgg.features, preprocessing=info.preprocessing, dtype=dtype)
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
    )
