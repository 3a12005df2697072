"""VGG16 in Flax, with Keras's layer names and an explicitly truncated forward pass.

The architecture follows Keras ``applications/vgg16.py`` (Simonyan & Zisserman 2014,
configuration D): 13 3x3 'same' convolutions with ReLU in five blocks, each block ending
in a 2x2 max-pool, then optionally ``flatten``, ``fc1``, ``fc2`` and ``predictions``.

Activation names, as returned by :func:`features`:

* ``blockB_convC`` is the conv output after ReLU (as in Keras);
* ``blockB_convC:pre`` is the same conv before ReLU (the linear response), which the
  ascent engine maximizes by default;
* ``blockB_pool`` is the pooled output;
* ``flatten``, ``fc1``, ``fc2`` (after ReLU, with ``fc1:pre`` and ``fc2:pre``) and
  ``predictions``, which holds the pre-softmax logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxvis._types import Array, Params
from jaxvis.errors import JaxvisError, choices
from jaxvis.models.feature_model import PRE, LayerInfo
from jaxvis.models.taps import Taps, conv_channel, relu, selected, tapped

# (block, number of convs, filters). Keras applications/vgg16.py.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
HEAD_SIZE = 224  # The head's fc1 expects a 7x7x512 map, i.e. a 224x224 input.
MIN_SIZE = 32  # Five 2x2 pools need at least 32 px to leave one pixel.


def _conv_layers() -> list[LayerInfo]:
    out = []
    for block, convs, width in _BLOCKS:
        out += [
            LayerInfo(f"block{block}_conv{c}", "conv", width, pre=True) for c in range(1, convs + 1)
        ]
        out.append(LayerInfo(f"block{block}_pool", "pool", width))
    return out


FEATURE_LAYERS: tuple[LayerInfo, ...] = tuple(_conv_layers())
HEAD_LAYERS: tuple[LayerInfo, ...] = (
    LayerInfo("flatten", "flatten", 7 * 7 * 512),
    LayerInfo("fc1", "dense", 4096, pre=True),
    LayerInfo("fc2", "dense", 4096, pre=True),
    LayerInfo("predictions", "dense", 1000),
)
CONV_NAMES: tuple[str, ...] = tuple(la.name for la in FEATURE_LAYERS if la.kind == "conv")

# Per-source preprocessing of RGB images in [0, 1].
# torchvision: transforms.Normalize in the torchvision ImageNet reference scripts.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
# Caffe/Oxford: keras applications/imagenet_utils.py, mode="caffe" (BGR means).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESSING = ("torchvision", "caffe")


def preprocess(images: Array, preprocessing: str) -> Array:
    """Maps RGB images in [0, 1] to what the weights were trained on.

    Args:
      images: float [N, H, W, 3] RGB in [0, 1].
      preprocessing: ``"torchvision"`` (RGB, mean/std) or ``"caffe"`` (BGR, 0-255, mean
        subtraction).
    """
    if preprocessing == "torchvision":
        return (images - jnp.asarray(TORCH_MEAN)) / jnp.asarray(TORCH_STD)
    if preprocessing == "caffe":
        return images[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR)
    raise JaxvisError(f"unknown preprocessing {preprocessing!r}; valid: {choices(PREPROCESSING)}")


def max_pool_2x2(x: Array) -> Array:
    """2x2 stride-2 max-pool as reshape-and-max, flooring odd sizes like Keras 'valid'.

    Same forward result as ``lax.reduce_window``; its gradient is much cheaper on XLA:CPU
    (benchmarks/README.md, "max-pool gradient").
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG16(nn.Module):
    """The VGG16 network, run up to and including ``stop_at``.

    Attributes:
      dtype: compute dtype of convolutions and matmuls (params are cast to it).
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, stop_at: str, taps: Taps | None = None) -> dict[str, Array]:
        acts: dict[str, Array] = {}
        for layer in FEATURE_LAYERS + HEAD_LAYERS:
            if layer.kind == "conv":
                channel = selected(taps, layer.name)
                if channel is None:
                    pre = nn.Conv(
                        layer.num_filters,
                        (3, 3),
                        padding="SAME",
                        dtype=self.dtype,
                        name=layer.name,
                    )(x)
                else:  # one channel (taps.select), from the same params
                    p = self.variables["params"][layer.name]
                    pre = conv_channel(
                        x,
                        p["kernel"],
                        p["bias"],
                        channel,
                        strides=(1, 1),
                        padding="SAME",
                        dtype=self.dtype,
                    )
                acts[layer.name + PRE] = pre = tapped(taps, layer.name + PRE, pre)
                x = relu(pre, taps)
            elif layer.kind == "pool":
                x = max_pool_2x2(x)
            elif layer.kind == "flatten":
                x = x.reshape(x.shape[0], -1)  # channels-last order, as Keras flattens
            else:
                x = nn.Dense(layer.num_filters, dtype=self.dtype, name=layer.name)(x)
                if layer.name != "predictions":
                    acts[layer.name + PRE] = x = tapped(taps, layer.name + PRE, x)
                    x = relu(x, taps)
            acts[layer.name] = x = tapped(taps, layer.name, x)
            if layer.name == stop_at:
                return acts
        raise JaxvisError(f"unknown layer {stop_at!r}")


def layer_names(has_head: bool) -> list[str]:
    """Names accepted by ``stop_at``, in network order."""
    layers = FEATURE_LAYERS + (HEAD_LAYERS if has_head else ())
    return [la.name for la in layers]


def check_layer(name: str, has_head: bool) -> None:
    """Raises a one-line JaxvisError naming the valid layers if ``name`` is not one."""
    valid = layer_names(has_head)
    if name in valid or (name.endswith(PRE) and name[: -len(PRE)] in valid):
        return
    if not has_head and name in {la.name for la in HEAD_LAYERS}:
        raise JaxvisError(
            f"layer {name!r} needs the classifier head, but these weights have none; "
            "load a Keras file with the top (vgg16_weights_tf_dim_ordering_tf_kernels.h5)"
        )
    raise JaxvisError(f"unknown layer {name!r} for vgg16; valid layers: {choices(valid)}")


def check_images(images: Array, stop_at: str) -> None:
    """Raises a one-line JaxvisError for a wrong rank, channel count or size."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise JaxvisError(f"images must be [N, H, W, 3] RGB in [0, 1]; got shape {shape}")
    h, w = shape[1:3]
    if min(h, w) < MIN_SIZE:
        raise JaxvisError(f"images must be at least {MIN_SIZE}x{MIN_SIZE} px; got {h}x{w}")
    head = {la.name for la in HEAD_LAYERS}
    if stop_at in head and (h, w) != (HEAD_SIZE, HEAD_SIZE):
        raise JaxvisError(
            f"layer {stop_at!r} is in the classifier head, which needs "
            f"{HEAD_SIZE}x{HEAD_SIZE} images; got {h}x{w}"
        )


def features(
    params: Params,
    images: Array,
    stop_at: str,
    taps: Taps | None = None,
    *,
    preprocessing: str,
    dtype=jnp.float32,
) -> dict[str, Array]:
    """Pure VGG16 forward pass up to ``stop_at``; nothing deeper is computed.

    Args:
      params: ``{layer: {"kernel": HWIO or [in, out], "bias": [out]}}``.
      images: float32 [N, H, W, 3], RGB in [0, 1].
      stop_at: the deepest layer to compute (see the module docstring for names).
      taps: deltas to add to named activations and guided ReLUs, for attribution, and
        one channel of a conv to compute (``jaxvis/models/taps.py``); ``None`` runs the
        plain network.
      preprocessing: the weights' convention, ``"torchvision"`` or ``"caffe"``.
      dtype: compute dtype; ``jnp.bfloat16`` for the fast path on accelerators.

    Returns:
      ``{name: activation}`` for every layer up to ``stop_at``, each float [N, h, w, C]
      or [N, C].
    """
    check_layer(stop_at, has_head="fc1" in params)
    check_images(images, stop_at)
    x = preprocess(images.astype(jnp.float32), preprocessing).astype(dtype)
    return VGG16(dtype=dtype).apply({"params": params}, x, stop_at.removesuffix(PRE), taps)
