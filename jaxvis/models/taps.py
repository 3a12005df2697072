"""Changes to a forward pass that attribution needs: :class:`Taps`.

Attribution asks two things of a model that activation maximization does not:

* the gradient of a target with respect to an intermediate activation (Grad-CAM's
  ``d y / d A``). A model honours ``taps.deltas`` by adding ``deltas[name]`` to the output
  named ``name`` before the rest of the network uses it. With zero deltas the forward pass
  is unchanged, and the gradient with respect to the delta is the gradient with respect to
  that activation.
* guided backpropagation (Springenberg et al. 2015): a ReLU whose backward pass lets
  through only positive gradients at positive inputs. A model honours
  ``taps.guided_relu`` by running its ReLUs through :func:`relu`.

Activation maximization asks one thing more, for speed:

* one channel of the target conv (``taps.select``). A channel objective reads one output
  channel of the layer it targets, yet the conv computes all of them; a model honours
  ``taps.select[name] = c`` (``c`` a traced int32) by computing that conv with its kernel
  and bias sliced to channel ``c`` (:func:`one_channel`), so that ``name`` and
  ``name + ":pre"`` hold ``[N, h, w, 1]``. The engine asks for it only where the
  objective reads nothing else of that layer (``Objective.on_unit_channel``).

A model's ``apply(params, images, stop_at, taps=None)`` takes a ``Taps`` as its optional
fourth argument; :attr:`FeatureModel.taps` lists which of ``"deltas"``,
``"guided_relu"`` and ``"select"`` it honours, so that attribution refuses what it cannot
do and the engine slices only models that can.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxvis._types import Array

DELTAS = "deltas"
GUIDED_RELU = "guided_relu"
SELECT = "select"
CAPABILITIES = (DELTAS, GUIDED_RELU, SELECT)


@dataclasses.dataclass(frozen=True)
class Taps:
    """What to change in one forward pass. Built inside the traced function.

    Attributes:
      deltas: ``{activation name: array}``, each added to that activation (same shape;
        names as in the activation dict, ``":pre"`` included).
      guided_relu: run every ReLU the model can intercept as :func:`guided_relu`.
      select: ``{conv layer name (no ":pre"): int32 channel}``: compute only that output
        channel of that conv, which then holds ``[N, h, w, 1]``.
    """

    deltas: Mapping[str, Array] = dataclasses.field(default_factory=dict)
    guided_relu: bool = False
    select: Mapping[str, Array] = dataclasses.field(default_factory=dict)


NONE = Taps()


def selected(taps: Taps | None, name: str) -> Array | None:
    """The channel ``taps.select`` asks of layer ``name``, or None for all of them."""
    if taps is None:
        return None
    return taps.select.get(name)


def one_channel(kernel: Array, bias: Array | None, channel: Array) -> tuple:
    """``(kernel[..., c:c+1], bias[c:c+1])`` for a traced channel ``c``: a conv kernel
    (output channels last, as HWIO) and its bias, sliced to one output channel."""
    k = jax.lax.dynamic_slice_in_dim(kernel, channel, 1, axis=kernel.ndim - 1)
    b = None if bias is None else jax.lax.dynamic_slice_in_dim(bias, channel, 1, axis=0)
    return k, b


def conv_channel(
    x: Array, kernel: Array, bias: Array, channel: Array, *, strides, padding, dtype
) -> Array:
    """Output channel ``channel`` of a channels-last 2-D conv (HWIO kernel), [N, h, w, 1]:
    what ``flax.linen.Conv`` computes for that channel, with input, kernel and bias cast to
    ``dtype`` as it casts them."""
    k, b = one_channel(kernel, bias, channel)
    x, k, b = (a.astype(dtype) for a in (x, k, b))
    y = jax.lax.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + b


def tapped(taps: Taps | None, name: str, x: Array) -> Array:
    """``x`` plus ``taps.deltas[name]`` if that delta is given, else ``x``."""
    if taps is None or name not in taps.deltas:
        return x
    return x + taps.deltas[name].astype(x.dtype)


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """ReLU whose backward pass is ``g * (x > 0) * (g > 0)`` (Springenberg et al. 2015)."""
    return jnp.maximum(x, 0)


def _guided_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
    return (g * ((x > 0) & (g > 0)).astype(g.dtype),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


def relu(x: Array, taps: Taps | None) -> Array:
    """The model's ReLU: guided if ``taps`` asks for it, else ``jax.nn.relu``."""
    if taps is not None and taps.guided_relu:
        return guided_relu(x)
    return jax.nn.relu(x)
