"""Optimizers for the ascent, as plain ``optax.GradientTransformation`` s.

The engine differentiates the LOSS (= -objective) and applies
``params = optax.apply_updates(params, updates)``, so every transformation here returns
updates that decrease the loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxvis.errors import JaxvisError, choices

# Lucid optvis/render.py: make_vis_T's default optimizer is tf.train.AdamOptimizer(0.05).
LUCID_ADAM_LR = 0.05
# Keras backend K.epsilon(), which keras-vis uses in its gradient normalization.
KERAS_EPSILON = 1e-7
# tf.nn.l2_normalize's default epsilon (what K.l2_normalize passes on).
_L2_EPSILON = 1e-12
GRAD_NORMS = ("rms", "l2", "none")


def default_optimizer() -> optax.GradientTransformation:
    """Adam with learning rate 0.05, Lucid's default (optvis/render.py)."""
    return optax.adam(LUCID_ADAM_LR)


class KerasVisRmspropState(NamedTuple):
    """RMSprop cache: running mean of squared normalized gradients, like ``params``."""

    cache: optax.Updates


def _global_sum_squares(tree) -> tuple[jax.Array, int]:
    leaves = jax.tree.leaves(tree)
    total = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves)
    return total, sum(g.size for g in leaves)


def _normalize(grads, grad_norm: str):
    """Scales the whole gradient pytree as keras-vis normalizes its input gradient."""
    if grad_norm == "none":
        return grads
    total, count = _global_sum_squares(grads)
    if grad_norm == "rms":
        factor = 1.0 / (jnp.sqrt(total / count) + KERAS_EPSILON)
    else:
        factor = jax.lax.rsqrt(jnp.maximum(total, _L2_EPSILON))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)


def keras_vis_rmsprop(
    learning_rate: float = 1.0,
    decay: float = 0.95,
    eps: float = 1e-7,
    *,
    grad_norm: str = "rms",
) -> optax.GradientTransformation:
    """keras-vis's gradient step (vis/optimizer.py ``Optimizer``), as optax.

    keras-vis facts relied on:

    * ``__init__`` normalizes the loss gradient over the whole input tensor (batch
      included): ``grads / (K.sqrt(K.mean(K.square(grads))) + K.epsilon())``, with
      ``K.epsilon() = 1e-7``. That is ``grad_norm="rms"``, the default. ``"l2"`` divides
      by the global L2 norm instead (``K.l2_normalize``, which some Keras
      activation-maximization scripts use), making each step sqrt(size) times smaller;
      ``"none"`` is keras-vis's ``norm_grads=False``.
    * ``_rmsprop`` with ``decay_rate=0.95``: ``cache = decay * cache + (1 - decay) * g**2``
      from a zero cache, ``step = -g / np.sqrt(cache + K.epsilon())``.
    * ``minimize`` adds the step to the 0-255 seed with no learning rate, hence the
      default ``learning_rate=1.0``; pair this with
      :func:`jaxvis.param.keras_vis_image`, whose raw values are 0-255 pixels.

    The normalization spans every leaf of one unit's parameters; under the engine's vmap
    each unit is normalized on its own, as keras-vis handles one filter per call.

    Args:
      learning_rate: multiplies the step.
      decay: RMSprop decay rate.
      eps: added to the cache under the square root.
      grad_norm: ``"rms"`` (keras-vis), ``"l2"`` or ``"none"``.

    Returns:
      A GradientTransformation whose updates decrease the loss.
    """
    if grad_norm not in GRAD_NORMS:
        raise JaxvisError(f"unknown grad_norm {grad_norm!r}; valid: {choices(GRAD_NORMS)}")

    def init_fn(params):
        return KerasVisRmspropState(cache=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        g = _normalize(updates, grad_norm)
        cache = jax.tree.map(lambda c, gi: decay * c + (1.0 - decay) * gi * gi, state.cache, g)
        steps = jax.tree.map(lambda gi, c: -learning_rate * gi / jnp.sqrt(c + eps), g, cache)
        return steps, KerasVisRmspropState(cache=cache)

    return optax.GradientTransformation(init_fn, update_fn)
