"""jaxvis attribution against the PyPI ``saliency`` package (``saliency.core``) on VGG16.

The model is ``jaxvis.vgg16(None)`` (random He-initialised weights, no head) on two real
photos from scikit-image shrunk to 32x32. The target is the spatial mean of channel 7
of ``block3_conv3:pre``; Grad-CAM reads ``block2_conv2`` (16x16). ``saliency`` drives the
model through a plain numpy callback whose gradients come from ``jax.grad`` of that mean
written out here, directly on ``model.apply`` (with a zero delta at the Grad-CAM layer
for its gradient), not through jaxvis.attribution or jaxvis.objectives.

Noise: ``saliency``'s SmoothGrad draws ``np.random.normal(0, stdev, shape)`` once per
sample. The test replaces ``np.random.normal`` during that call with the standard normal
samples that jaxvis documents, ``jax.random.normal(fold_in(fold_in(key(seed), index),
sample))``, times ``stdev`` in float32; so both sum the same noisy images, and the test
also checks that jaxvis draws its noise as documented. The noise level is 0.125 rather
than the default 0.15 because 0.125 is exact in float32: both then compute the same
sigma, and the same noisy image to the last bit. That matters: a ReLU network's gradient
jumps where a unit crosses zero, and a one-ulp change of one pixel moved one sample's
gradient of this model by 1%.

Error measure: max |jaxvis - saliency| / max |saliency| per map, at most 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import saliency.core as saliency
import skimage.data
import skimage.transform

import jaxvis
from jaxvis import attribution
from jaxvis.models.taps import Taps

SIZE = 32
LAYER, UNIT = "block3_conv3:pre", 7
TARGET = f"channel:{LAYER}:{UNIT}"
CAM_LAYER = "block2_conv2"
TOL = 1e-5
SEED = 3


def rel_error(got, want) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def model():
    return jaxvis.vgg16(None)


@pytest.fixture(scope="module")
def images():
    photos = [skimage.data.chelsea(), skimage.data.coffee()]
    small = [skimage.transform.resize(p, (SIZE, SIZE), anti_aliasing=True) for p in photos]
    return np.clip(np.stack(small), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def call_model(model):
    """``saliency``'s call_model_function, from jax.grad on model.apply."""

    def scores(params, x, taps=None):
        acts = model.apply(params, x, "block3_conv3", taps)
        return acts[LAYER][..., UNIT].mean(axis=(1, 2)), acts

    grad = jax.jit(jax.grad(lambda p, x: scores(p, x)[0].sum(), argnums=1))

    @jax.jit
    def cam_parts(params, x):
        zero = jnp.zeros(model.shapes(CAM_LAYER, SIZE, len(x))[CAM_LAYER].shape)

        def total(delta):
            s, acts = scores(params, x, Taps(deltas={CAM_LAYER: delta}))
            return s.sum(), acts[CAM_LAYER]

        g, acts = jax.grad(total, has_aux=True)(zero)
        return acts, g

    def call(x_batch, call_model_args=None, expected_keys=None):
        x = jnp.asarray(x_batch, jnp.float32)
        if saliency.INPUT_OUTPUT_GRADIENTS in expected_keys:
            return {saliency.INPUT_OUTPUT_GRADIENTS: np.asarray(grad(model.params, x))}
        acts, g = cam_parts(model.params, x)
        return {
            saliency.CONVOLUTION_LAYER_VALUES: np.asarray(acts),
            saliency.CONVOLUTION_OUTPUT_GRADIENTS: np.asarray(g),
        }

    return call


def test_vanilla_gradient(model, images, call_model):
    ours = attribution.attribute(model, images, method="gradient", target=TARGET, keepdims=True)
    for i, x in enumerate(images):
        ref = saliency.GradientSaliency().GetMask(x, call_model)
        assert rel_error(ours[i], ref) <= TOL


@pytest.mark.parametrize("combine, magnitude", [("square", True), ("mean", False)])
def test_smoothgrad(model, images, call_model, monkeypatch, combine, magnitude):
    samples, spread = 4, 0.125  # 0.125 is exact in float32, so both get the same sigma
    ours = attribution.attribute(
        model,
        images,
        method="smoothgrad",
        target=TARGET,
        keepdims=True,
        seed=SEED,
        samples=samples,
        noise=spread,
        combine=combine,
    )
    for i, x in enumerate(images):
        key = jax.random.fold_in(jax.random.key(SEED), i)
        drawn = iter(range(samples))

        def normal(loc, scale, size, key=key, drawn=drawn):
            z = jax.random.normal(jax.random.fold_in(key, next(drawn)), size, jnp.float32)
            return np.float32(loc) + np.float32(scale) * np.asarray(z)  # float32, as jaxvis

        monkeypatch.setattr(np.random, "normal", normal)
        ref = saliency.GradientSaliency().GetSmoothedMask(
            x, call_model, stdev_spread=spread, nsamples=samples, magnitude=magnitude
        )
        monkeypatch.undo()
        assert next(drawn, None) is None  # saliency drew exactly `samples` noises
        assert rel_error(ours[i], ref) <= TOL


def test_integrated_gradients(model, images, call_model):
    """The ``saliency`` package averages m points np.linspace(0, 1, m), ends included:
    jaxvis's ``rule="linspace"``. With m = 5 the points (0, 1/4, ..., 1) are exact in
    float32, so saliency's float64 path and jaxvis's float32 one meet the same images."""
    steps = 5
    ours = attribution.attribute(
        model, images, method="ig", target=TARGET, keepdims=True, steps=steps, rule="linspace"
    )
    for i, x in enumerate(images):
        ref = saliency.IntegratedGradients().GetMask(x, call_model, x_steps=steps, batch_size=steps)
        assert rel_error(ours[i], ref) <= TOL


def test_gradcam_before_resizing(model, images, call_model):
    ours = attribution.attribute(
        model, images, method="gradcam", target=TARGET, layer=CAM_LAYER, resize=False
    )
    assert ours.shape == (2, 16, 16)
    for i, x in enumerate(images):
        ref = saliency.GradCam().GetMask(x, call_model, should_resize=False, three_dims=False)
        assert 0 < np.mean(ref > 0) < 1  # the ReLU keeps some positions, not all
        assert rel_error(ours[i], ref) <= TOL
