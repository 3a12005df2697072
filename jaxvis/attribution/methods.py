"""Input-gradient attribution for ONE image: gradient, SmoothGrad, Integrated Gradients,
guided backpropagation. Pure functions of arrays, vmapped over images by
``jaxvis/attribution/program.py``.

Each returns the per-channel map [H, W, 3]; :func:`reduce_channels` turns it into
[H, W] unless ``keepdims``. The formulas and their papers are in docs/attribution.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis._types import Array, Params, PRNGKey
from jaxvis.models.taps import Taps
from jaxvis.objectives import Objective


@dataclasses.dataclass(frozen=True)
class Scorer:
    """The target's value for one image: the model run to ``stop_at``, then the objective.

    Attributes:
      apply: the model's ``apply(params, images, stop_at, taps=None)``.
      stop_at: the deepest layer the objective (and a CAM layer) needs.
      objective: the target's objective, evaluated on a batch of one, in float32.
    """

    apply: Callable
    stop_at: str
    objective: Objective

    def activations(self, params: Params, image: Array, taps: Taps | None = None, stop_at=None):
        """``{name: [1, h, w, C]}`` of one image [H, W, 3]; ``taps`` only when given, so a
        model without taps is called with three arguments."""
        args = (params, image[None], stop_at or self.stop_at)
        return self.apply(*args) if taps is None else self.apply(*args, taps)

    def score_and_acts(self, params: Params, image: Array, unit: Array, taps: Taps | None = None):
        """``(float32 [], activations)`` of the target on one image [H, W, 3]."""
        acts = self.activations(params, image, taps)
        value = self.objective(acts, image[None], unit)
        return jnp.asarray(value, jnp.float32), acts

    def score(self, params: Params, image: Array, unit: Array, taps: Taps | None = None) -> Array:
        """The target's value, float32 [], for one image [H, W, 3]."""
        return self.score_and_acts(params, image, unit, taps)[0]


def input_gradient(
    scorer: Scorer, params: Params, image: Array, unit: Array, *, guided: bool = False
) -> Array:
    """d target / d image, [H, W, 3]; with ``guided``, through guided ReLUs
    (Springenberg et al. 2015: a ReLU passes back g * (x > 0) * (g > 0))."""
    taps = Taps(guided_relu=True) if guided else None
    return jax.grad(lambda x: scorer.score(params, x, unit, taps))(image)


def batched_map(fn: Callable[[Array], Array], xs: Array, group: int) -> Array:
    """``fn`` over the leading axis of ``xs``, ``group`` at a time: one vmap when all fit
    (straight-line code, the fast case on XLA:CPU, benchmarks/README.md "while-loop
    convolutions"), else a loop over vmapped groups, which bounds memory."""
    if group >= xs.shape[0]:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=group)


_COMBINE = {"mean": lambda g: g, "abs": jnp.abs, "square": jnp.square}


def smoothgrad(
    scorer: Scorer,
    params: Params,
    image: Array,
    unit: Array,
    key: PRNGKey,
    *,
    noise: float,
    samples: int,
    combine: str,
    group: int,
) -> Array:
    """SmoothGrad (Smilkov et al. 2017), [H, W, 3]: the mean over ``samples`` noisy copies
    ``x + sigma * z_s`` of combine(gradient), with ``sigma = noise * (max(x) - min(x))``
    over the whole image and ``z_s`` from ``fold_in(key, s)``, so that a sample's noise
    depends on (seed, image index, sample) alone. Noisy images are not clipped.

    The noisy image is ``x + round32(sigma * z)``: the barrier keeps XLA from fusing the
    two into one multiply-add, so the same noise added in float32 anywhere else (numpy,
    the ``saliency`` package) gives the same image to the last bit.
    """
    sigma = noise * (jnp.max(image) - jnp.min(image))

    def one(s):
        z = jax.random.normal(jax.random.fold_in(key, s), image.shape, jnp.float32)
        noisy = image + jax.lax.optimization_barrier(sigma * z)
        return _COMBINE[combine](input_gradient(scorer, params, noisy, unit))

    return jnp.mean(batched_map(one, jnp.arange(samples, dtype=jnp.uint32), group), axis=0)


def path_grid(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, weights)``, each float32 [steps], of the path integral's quadrature.

    ``right``: alpha = k/m, k = 1..m (the Riemann sum of Sundararajan et al. 2017);
    ``left``: k = 0..m-1; ``midpoint``: (k + 1/2)/m; ``trapezoid``: m points from 0 to 1,
    the ends weighted half; ``linspace``: m points from 0 to 1, each weighted 1/m (what
    the ``saliency`` package does: ``np.linspace(0, 1, x_steps)``, summed, divided by
    ``x_steps``).
    """
    m = steps
    if rule == "right":
        alphas, weights = np.arange(1, m + 1) / m, np.full(m, 1 / m)
    elif rule == "left":
        alphas, weights = np.arange(m) / m, np.full(m, 1 / m)
    elif rule == "midpoint":
        alphas, weights = (np.arange(m) + 0.5) / m, np.full(m, 1 / m)
    elif rule == "linspace":
        alphas, weights = np.linspace(0, 1, m), np.full(m, 1 / m)
    elif m == 1:  # trapezoid with one point: the midpoint rule's only choice
        alphas, weights = np.array([0.5]), np.array([1.0])
    else:
        alphas, weights = np.linspace(0, 1, m), np.full(m, 1 / (m - 1))
        weights[[0, -1]] /= 2
    return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(
    scorer: Scorer,
    params: Params,
    image: Array,
    unit: Array,
    baseline: Array,
    *,
    steps: int,
    rule: str,
    group: int,
) -> Array:
    """Integrated Gradients (Sundararajan et al. 2017), [H, W, 3]:
    ``(x - x') * sum_k w_k * grad(x' + alpha_k (x - x'))`` with :func:`path_grid`."""
    alphas, weights = path_grid(steps, rule)
    diff = image - baseline

    def one(alpha):
        return input_gradient(scorer, params, baseline + alpha * diff, unit)

    grads = batched_map(one, jnp.asarray(alphas), group)
    return diff * jnp.tensordot(jnp.asarray(weights), grads, axes=1)


def reduce_channels(per_channel: Array, how: str) -> Array:
    """[H, W, C] -> [H, W]: ``max_abs`` (max over C of |v|, Simonyan et al. 2014, sec. 3.1),
    ``sum_abs`` (the ``saliency`` package's grayscale view) or ``sum`` (signed; for
    Integrated Gradients the map then sums to F(x) - F(x'))."""
    if how == "max_abs":
        return jnp.max(jnp.abs(per_channel), axis=-1)
    if how == "sum_abs":
        return jnp.sum(jnp.abs(per_channel), axis=-1)
    return jnp.sum(per_channel, axis=-1)
