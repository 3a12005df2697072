"""Which layers a map can use, from the model's activation shapes (``jax.eval_shape``).

Nothing is assumed about layer classes: a CAM layer is any layer whose output is a
spatial map [1, h, w, K], and the default is the last one larger than 1x1 at the images'
size that comes before the target's layer, found by abstract evaluation of ``model.apply``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvis.attribution import memo
from jaxvis.errors import JaxvisError
from jaxvis.models.feature_model import PRE, FeatureModel

Shapes = dict[str, jax.ShapeDtypeStruct]


def shapes(model: FeatureModel, stop_at: str, hw: tuple[int, int]) -> Shapes:
    """Every activation up to ``stop_at`` for one image of ``hw`` px (no compute)."""
    image = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    return jax.eval_shape(lambda p, x: model.apply(p, x, stop_at), model.params, image)


def deepest_shapes(model: FeatureModel, hw: tuple[int, int]) -> tuple[str, Shapes]:
    """``(layer, shapes)`` for the deepest layer the model computes at ``hw``: the last
    layer, or the last before it that works (VGG16's head needs 224x224 images)."""
    key = ("deepest_shapes", memo.model_key(model), tuple(hw))
    return memo.memo(key, lambda: _deepest_shapes(model, tuple(hw)))


def _deepest_shapes(model: FeatureModel, hw: tuple[int, int]) -> tuple[str, Shapes]:
    error = None
    for info in reversed(model.layers):
        try:
            return info.name, shapes(model, info.name, hw)
        except (JaxvisError, TypeError, ValueError) as e:  # a head at the wrong size
            error = error or e
    raise JaxvisError(f"{model.name} computes no layer at {hw[0]}x{hw[1]} px: {error}")


def is_map(shape: jax.ShapeDtypeStruct) -> bool:
    """A spatial map larger than 1x1: [1, h, w, K] with h * w > 1."""
    return len(shape.shape) == 4 and shape.shape[1] * shape.shape[2] > 1


def default_layer(model: FeatureModel, all_shapes: Shapes, hw: tuple[int, int], before: str) -> str:
    """The last layer whose output is a spatial map larger than 1x1 at ``hw`` and that
    comes before ``before`` (the layer the target reads; its own map would only show the
    target's activation, or nothing for a pre-activation target). For a class logit that
    is VGG16's ``block5_pool``; for a channel of ``block5_conv3``, ``block5_conv2``."""
    order = [info.name for info in model.layers]
    for name in reversed(order[: order.index(before.removesuffix(PRE))]):
        if name in all_shapes and is_map(all_shapes[name]):
            return name
    raise JaxvisError(
        f"no layer of {model.name} before {before!r} has a spatial map larger than 1x1 at "
        f"{hw[0]}x{hw[1]} px; CAM methods need one (use larger images, or another method)"
    )


def check_layer(model: FeatureModel, layer, all_shapes: Shapes, hw: tuple[int, int]) -> str:
    """``layer`` if it is a spatial map larger than 1x1 at ``hw``, else a one-line error."""
    if not isinstance(layer, str):
        raise JaxvisError(f"layer must be a layer name; got {layer!r}")
    model.layer(layer.removesuffix(PRE))  # one-line error listing the valid layers
    shape = all_shapes.get(layer)
    if shape is None:
        raise JaxvisError(f"{model.name} gives no activation {layer!r} at {hw[0]}x{hw[1]} px")
    if not is_map(shape):
        raise JaxvisError(
            f"layer {layer!r} has no spatial map at {hw[0]}x{hw[1]} px (its output is "
            f"{list(shape.shape[1:])}); CAM methods need [h, w, C] with h*w > 1, e.g. "
            f"{_last_map(model, all_shapes)}"
        )
    return layer


def _last_map(model: FeatureModel, all_shapes: Shapes) -> str:
    names = [info.name for info in model.layers]
    maps = [n for n in names if n in all_shapes and is_map(all_shapes[n])]
    return maps[-1] if maps else "none at this size"


def check_order(model: FeatureModel, layer: str, target_layers: tuple[str, ...], reads=None):
    """A one-line error if the target does not depend on the CAM ``layer``: the layer
    comes after every layer the target reads, or the target reads the layer's own
    pre-activation ``reads`` (computed before the layer's output)."""
    order = {info.name: i for i, info in enumerate(model.layers)}
    deepest = model.deepest(target_layers)
    if order[layer.removesuffix(PRE)] > order[deepest]:
        raise JaxvisError(
            f"layer {layer!r} comes after the target's layer {deepest!r}, so the target does "
            "not depend on it; pass a layer at or before it, or the target to prepare()"
        )
    if reads == layer + PRE:
        raise JaxvisError(
            f"the target reads {reads!r}, which comes before {layer!r}'s output, so the map "
            f"would be zero; pass layer={reads!r} or an earlier layer"
        )
