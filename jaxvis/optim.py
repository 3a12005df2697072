"""Optimizers for the ascent, as plain ``optax.GradientTransformation`` s.

The engine differentiates the LOSS (= -objective) and applies
``params = optax.apply_updates(params, updates)``, so every transformation here returns
updates that decrease the loss.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

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


def _global_sum_squares(tree) -> tuple[jax.Array, int]:
    leaves = jax.tree.leaves(tree)
    total = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves)
    return total, sum(g.size for g in leaves)


def normalize_gradient(grad_norm: str = "rms") -> optax.GradientTransformation:
    """Scales the whole gradient pytree as keras-vis normalizes its input gradient.

    ``"rms"`` divides by ``sqrt(mean(g**2)) + K.epsilon()`` (keras-vis vis/optimizer.py),
    ``"l2"`` by the global L2 norm (``K.l2_normalize``), ``"none"`` changes nothing.
    Stateless; under the engine's vmap each unit is normalized on its own.
    """
    if grad_norm not in GRAD_NORMS:
        raise JaxvisError(f"unknown grad_norm {grad_norm!r}; valid: {choices(GRAD_NORMS)}")

    def update_fn(updates, state, params=None):
        del params
        if grad_norm == "none":
            return updates, state
        total, count = _global_sum_squares(updates)
        if grad_norm == "rms":
            factor = 1.0 / (jnp.sqrt(total / count) + KERAS_EPSILON)
        else:
            factor = jax.lax.rsqrt(jnp.maximum(total, _L2_EPSILON))
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def keras_vis_rmsprop(
    learning_rate: float = 1.0,
    decay: float = 0.95,
    eps: float = 1e-7,
    *,
    grad_norm: str = "rms",
) -> optax.GradientTransformation:
    """keras-vis's gradient step (vis/optimizer.py ``Optimizer``), as a chain of optax pieces.

    keras-vis facts relied on:

    * ``__init__`` normalizes the loss gradient over the whole input tensor (batch
      included): ``grads / (K.sqrt(K.mean(K.square(grads))) + K.epsilon())``, with
      ``K.epsilon() = 1e-7``. That is ``grad_norm="rms"``, the default (see
      :func:`normalize_gradient` for ``"l2"`` and ``"none"``).
    * ``_rmsprop`` with ``decay_rate=0.95``: ``cache = decay * cache + (1 - decay) * g**2``
      from a zero cache, ``step = -g / np.sqrt(cache + K.epsilon())``: optax's
      ``scale_by_rms`` with ``initial_scale=0`` and ``eps_in_sqrt=True``.
    * ``minimize`` adds the step to the 0-255 seed with no learning rate, hence the
      default ``learning_rate=1.0``; pair this with
      :func:`jaxvis.param.keras_vis_image`, whose raw values are 0-255 pixels.

    Args:
      learning_rate: multiplies the step.
      decay: RMSprop decay rate.
      eps: added to the cache under the square root.
      grad_norm: ``"rms"`` (keras-vis), ``"l2"`` or ``"none"``.

    Returns:
      A GradientTransformation whose updates decrease the loss.
    """
    return optax.chain(
        normalize_gradient(grad_norm),
        optax.scale_by_rms(decay=decay, eps=eps, initial_scale=0.0, eps_in_sqrt=True),
        optax.scale(-learning_rate),
    )


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer as data: an optax factory and its arguments.

    The description is made from the factory's full signature with every default filled
    in, so changing any knob (Adam's ``b2``, RMSProp's ``eps``) changes the atlas identity
    with no hand-kept string to forget. Build the transformation with :meth:`build`.

    Attributes:
      factory: a function returning an ``optax.GradientTransformation``.
      kwargs: its keyword arguments, as sorted ``(name, value)`` pairs (hashable).
    """

    factory: Callable[..., optax.GradientTransformation]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def build(self) -> optax.GradientTransformation:
        return self.factory(**dict(self.kwargs))

    @property
    def description(self) -> str:
        """E.g. ``"adam(learning_rate=0.05, b1=0.9, b2=0.999, eps=1e-08, ...)"``."""
        bound = inspect.signature(self.factory).bind(**dict(self.kwargs))
        bound.apply_defaults()
        args = ", ".join(f"{k}={_describe_value(v)}" for k, v in bound.arguments.items())
        return f"{self.factory.__name__}({args})"


def _describe_value(value: Any) -> str:
    if callable(value):  # a schedule: its own description, else its name
        return getattr(value, "description", getattr(value, "__name__", type(value).__name__))
    return repr(value)


def spec(factory: Callable[..., optax.GradientTransformation], **kwargs) -> OptimizerSpec:
    """``spec(optax.adam, learning_rate=0.01)``: an optimizer the atlas can identify.

    The arguments are checked against the factory's signature now, not at build time.
    """
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise JaxvisError(f"bad arguments for {factory.__name__}: {e}") from None
    return OptimizerSpec(factory, tuple(sorted(kwargs.items())))


#: Lucid's optimizer (see :data:`LUCID_ADAM_LR`).
LUCID_ADAM = spec(optax.adam, learning_rate=LUCID_ADAM_LR)
#: keras-vis's optimizer with its defaults.
KERAS_VIS_RMSPROP = spec(keras_vis_rmsprop)
