"""keras_vis_rmsprop against a numpy re-implementation of keras-vis, and the default Adam."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvis import optim
from jaxvis.errors import JaxvisError

RNG = np.random.RandomState(0)
# Three loss gradients of very different sizes, like those of an ascent.
GRADS = [RNG.randn(1, 4, 4, 3) * s for s in (1e-3, 5.0, 0.2)]


def keras_vis_steps(grads, norm="rms", decay=0.95, eps=1e-7):
    """keras-vis vis/optimizer.py, in numpy: normalize, then _rmsprop from a zero cache."""
    cache, steps = np.zeros_like(grads[0]), []
    for g in grads:
        if norm == "rms":
            g = g / (np.sqrt(np.mean(np.square(g))) + 1e-7)
        elif norm == "l2":
            g = g / np.sqrt(max(np.sum(np.square(g)), 1e-12))
        cache = decay * cache + (1 - decay) * g**2
        steps.append(-g / np.sqrt(cache + eps))
    return steps


@pytest.mark.parametrize("norm", ["rms", "l2", "none"])
def test_matches_numpy_keras_vis_over_three_steps(norm):
    tx = optim.keras_vis_rmsprop(grad_norm=norm)
    state = tx.init(jnp.zeros((1, 4, 4, 3)))
    update = jax.jit(tx.update)
    for got_grad, want in zip(GRADS, keras_vis_steps(GRADS, norm), strict=True):
        step, state = update(jnp.asarray(got_grad, jnp.float32), state)
        np.testing.assert_allclose(step, want, rtol=2e-4, atol=1e-6)


def test_learning_rate_and_pytrees():
    tx = optim.keras_vis_rmsprop(learning_rate=0.5)
    tree = {"a": jnp.asarray(GRADS[1][..., :1]), "b": jnp.asarray(GRADS[1][..., 1:])}
    steps, _ = tx.update(tree, tx.init(tree))
    # The normalization spans the whole pytree, as keras-vis spans the whole input.
    want = 0.5 * keras_vis_steps(GRADS[1:2])[0]
    np.testing.assert_allclose(steps["a"], want[..., :1], rtol=2e-4)
    np.testing.assert_allclose(steps["b"], want[..., 1:], rtol=2e-4)


def test_decreases_a_quadratic_and_vmaps_over_units():
    target = jnp.asarray(RNG.randn(3, 4, 4, 3), jnp.float32)  # one target per unit
    tx = optim.keras_vis_rmsprop(learning_rate=0.02)

    def descend(goal):
        def loss(x):
            return jnp.sum((x - goal) ** 2)

        def step(carry, _):
            x, state = carry
            updates, state = tx.update(jax.grad(loss)(x), state)
            return (optax.apply_updates(x, updates), state), loss(x)

        x0 = jnp.zeros_like(goal)
        (x, _), losses = jax.lax.scan(step, (x0, tx.init(x0)), length=60)
        return loss(x), losses[0]

    final, first = jax.jit(jax.vmap(descend))(target)
    assert bool(jnp.all(final < 0.05 * first))
    single = jax.jit(descend)(target[1])[0]
    np.testing.assert_allclose(final[1], single, rtol=1e-4)


def test_default_optimizer_is_lucid_adam():
    tx = optim.default_optimizer()
    g = jnp.asarray([2.0, -0.5, 1e-3])
    step, _ = tx.update(g, tx.init(g))
    # Adam's first step is -lr * g / (|g| + eps): -0.05 * sign(g) for |g| >> 1e-8.
    np.testing.assert_allclose(step, -0.05 * np.sign(g), rtol=1e-4)


def test_bad_grad_norm():
    with pytest.raises(JaxvisError, match="valid: rms, l2, none"):
        optim.keras_vis_rmsprop(grad_norm="max")
