"""Class activation maps for ONE image at one layer: Grad-CAM, Grad-CAM++, Score-CAM.

The gradient with respect to the layer's activation A comes from the model's taps: a zero
delta is added to A (``Taps(deltas={layer: 0})``) and the target is differentiated with
respect to it, which is d target / d A (``jaxvis/models/taps.py``). No assumption is made
about the layer's class. Each function returns the map at the layer's resolution [h, w];
:func:`upsample` brings it to the image's. Formulas and papers: docs/attribution.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvis._types import Array, Params
from jaxvis.attribution.methods import Scorer, batched_map
from jaxvis.models.taps import Taps


def layer_gradient(
    scorer: Scorer, params: Params, image: Array, unit: Array, layer: str, shape: tuple
) -> tuple[Array, Array]:
    """``(A, dS/dA)``, each [h, w, K], of the target S at ``layer`` for one image.

    Args:
      shape: the layer's activation shape for one image, [1, h, w, K].
    """

    def score(delta):
        value, acts = scorer.score_and_acts(params, image, unit, Taps(deltas={layer: delta}))
        return value, acts[layer]

    grad, acts = jax.grad(score, has_aux=True)(jnp.zeros(shape, jnp.float32))
    return acts[0].astype(jnp.float32), grad[0]


def weighted_map(acts: Array, weights: Array) -> Array:
    """``ReLU(sum_k w_k A_k)``: [h, w, K] and [K] -> [h, w]."""
    return jax.nn.relu(jnp.tensordot(acts, weights, axes=1))


def gradcam(acts: Array, grads: Array) -> Array:
    """Grad-CAM (Selvaraju et al. 2017): w_k = the spatial mean of dS/dA_k."""
    return weighted_map(acts, jnp.mean(grads, axis=(0, 1)))


def gradcam_plus_plus(acts: Array, grads: Array) -> Array:
    """Grad-CAM++ (Chattopadhay et al. 2018, with the exponential score Y = exp(S), whose
    common factor exp(S) is dropped): ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (0
    where the denominator is 0) and ``w_k = sum_ij alpha_kij ReLU(g_kij)``. The alphas
    are not renormalized (tf-keras-vis renormalizes them; docs/attribution.md)."""
    g2 = grads * grads
    denom = 2.0 * g2 + jnp.sum(acts, axis=(0, 1)) * g2 * grads
    safe = jnp.where(denom != 0, denom, 1.0)
    alphas = jnp.where(denom != 0, g2 / safe, 0.0)
    return weighted_map(acts, jnp.sum(alphas * jax.nn.relu(grads), axis=(0, 1)))


def upsample(maps: Array, size: tuple[int, int]) -> Array:
    """[h, w, ...] -> [H, W, ...] by bilinear interpolation (``jax.image.resize``, half-pixel
    centres, edges clamped)."""
    return jax.image.resize(maps, tuple(size) + maps.shape[2:], "bilinear")


def _minmax(maps: Array) -> Array:
    """Each channel of [H, W, K] scaled to [0, 1]; a constant channel becomes 0."""
    lo, hi = jnp.min(maps, axis=(0, 1)), jnp.max(maps, axis=(0, 1))
    span = hi - lo
    return jnp.where(span > 0, (maps - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def scorecam(
    scorer: Scorer, params: Params, image: Array, unit: Array, layer: str, *, score_batch: int
) -> Array:
    """Score-CAM (Wang et al. 2020): ``w_k = S(x * M_k) - S(black)``, where M_k is channel
    k of A upsampled to the image and scaled to [0, 1]; the K masked passes run
    ``score_batch`` at a time. S is the raw target (no softmax; docs/attribution.md)."""
    acts = scorer.activations(params, image, stop_at=layer)[layer][0].astype(jnp.float32)
    masks = _minmax(upsample(acts, image.shape[:2]))
    baseline = scorer.score(params, jnp.zeros_like(image), unit)

    def masked(mask):
        return scorer.score(params, image * mask[..., None], unit)

    scores = batched_map(masked, jnp.moveaxis(masks, -1, 0), score_batch)
    return weighted_map(acts, scores - baseline)
