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

A model's ``apply(params, images, stop_at, taps=None)`` takes a ``Taps`` as its optional
fourth argument; :attr:`FeatureModel.taps` lists which of ``"deltas"`` and
``"guided_relu"`` it honours, so that attribution refuses what it cannot do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxvis._types import Array

DELTAS = "deltas"
GUIDED_RELU = "guided_relu"
CAPABILITIES = (DELTAS, GUIDED_RELU)


@dataclasses.dataclass(frozen=True)
class Taps:
    """What to change in one forward pass. Built inside the traced function.

    Attributes:
      deltas: ``{activation name: array}``, each added to that activation (same shape;
        names as in the activation dict, ``":pre"`` included).
      guided_relu: run every ReLU the model can intercept as :func:`guided_relu`.
    """

    deltas: Mapping[str, Array] = dataclasses.field(default_factory=dict)
    guided_relu: bool = False


NONE = Taps()


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
