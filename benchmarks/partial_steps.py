"""Stand-ins for ``engine.Program`` that run only part of an ascent step, k times.

The throughput breakdown times them next to the full step; the gaps between the rows are
what the missing parts cost. Each has ``init``, ``block`` and ``block_steps`` like a
Program, so ``benchmarks.cases.prepare`` compiles and times them the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _gray_images(size: int):
    return jax.jit(lambda keys: jnp.full((keys.shape[0], 1, size, size, 3), 0.5))


class ModelOnly:
    """The model's forward + input gradient for a chunk, k times, with no ascent around it.

    Like the engine it keeps each step's objective value (so no forward conv is dead code)
    and moves the image by 1e-3 * gradient so the k steps stay dependent.
    """

    no_convs = False

    def __init__(self, model, layer: str, size: int, k: int):
        self.block_steps = k
        target = layer + ":pre"

        def objective(params, image, unit):
            return model.apply(params, image, layer)[target][..., unit].mean()

        grad = jax.vmap(jax.value_and_grad(objective, argnums=1), in_axes=(None, 0, 0))

        def block(params, images, keys, units, start):
            values = []
            for _ in range(k):
                value, g = grad(params, images, units)
                images = images + 1e-3 * g
                values.append(value)
            return images, jnp.stack(values, axis=1)

        self.init = _gray_images(size)
        self.block = jax.jit(block, donate_argnums=(1,))


class TransformsOnly:
    """The preset's transforms alone, forward + gradient, k times: their cost per step."""

    no_convs = True

    def __init__(self, transform, size: int, k: int):
        self.block_steps = k

        def seen_sum(image, key):
            return transform(key, image).sum()

        grad = jax.vmap(jax.grad(seen_sum))

        def block(params, images, keys, units, start):
            for j in range(k):
                step_keys = jax.vmap(lambda key, j=j: jax.random.fold_in(key, j))(keys)
                images = images + 1e-3 * grad(images, step_keys)
            return images, jnp.zeros((images.shape[0], k), jnp.float32)

        self.init = _gray_images(size)
        self.block = jax.jit(block, donate_argnums=(1,))
