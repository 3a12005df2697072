"""Shapes, ranges, hand-computed spectra and round trips of jaxvis.param."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvis import param as P
from jaxvis.errors import JaxvisError

KEY = jax.random.key(0)
# A target image with distinct values, kept away from 0 and 1 (the sigmoid's clip).
TARGET = np.random.RandomState(0).uniform(0.05, 0.95, (6, 7, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "param,raw_shape",
    [
        (P.pixel_image((6, 5), batch=2, decorrelate=True), (2, 6, 5, 3)),
        (P.fft_image((6, 7), batch=2), (2, 2, 3, 6, 4)),
        (P.keras_vis_image((6, 5)), (1, 6, 5, 3)),
    ],
    ids=lambda p: getattr(p, "description", ""),
)
def test_shapes_range_and_key_dependence(param, raw_shape):
    raw = param.init(KEY)
    assert raw.shape == raw_shape
    img = param.to_image(raw)
    assert img.ndim == 4 and img.shape[-1] == 3 and img.dtype == jnp.float32
    assert img.shape[0] == raw_shape[0]
    shown = P.to_display(param, raw)
    assert bool(jnp.all((shown >= 0) & (shown <= 1)))
    np.testing.assert_array_equal(param.init(KEY), raw)
    assert not np.array_equal(param.init(jax.random.key(1)), raw)


def test_sigmoid_images_are_in_unit_range_even_for_large_raw():
    for param in (P.pixel_image(8), P.fft_image(8)):
        img = param.to_image(100.0 * param.init(KEY))
        assert bool(jnp.all((img >= 0) & (img <= 1)))
        assert float(img.max() - img.min()) > 0.5  # far from the grey start


def test_fft_spectrum_scaling_matches_hand_computation():
    param = P.fft_image(4, decorrelate=False, sigmoid=False)
    n = np.arange(4)
    # Real coefficient at (fy=0, fx=1): |f| = 1/4, scale = sqrt(16) / (1/4) = 16; irfft2
    # gives 16 * 2 cos(2 pi n / 4) / 16, then / 4: 0.5 cos(pi n / 2) along each row.
    raw = jnp.zeros((1, 2, 3, 4, 3)).at[0, 0, 0, 0, 1].set(1.0)
    np.testing.assert_allclose(
        param.to_image(raw)[0, :, :, 0] - 0.5,
        np.tile(0.5 * np.cos(np.pi * n / 2), (4, 1)),
        atol=1e-6,
    )
    # The DC term's frequency is floored at 1 / max(h, w): scale 16, image 16 / 16 / 4.
    raw = jnp.zeros((1, 2, 3, 4, 3)).at[0, 0, 1, 0, 0].set(1.0)
    np.testing.assert_allclose(param.to_image(raw)[0, :, :, 1], 0.75, atol=1e-6)
    # Imaginary coefficient at (1, 1) with decay_power 2: |f|^2 = 1/8, scale = 4 * 8 = 32;
    # irfft2 gives 2 * Re(32i e^{i phi}) / 16 = -4 sin(phi), phi = pi (m + n) / 2; / 4.
    param2 = P.fft_image(4, decay_power=2.0, decorrelate=False, sigmoid=False)
    raw = jnp.zeros((1, 2, 3, 4, 3)).at[0, 1, 2, 1, 1].set(1.0)
    m = np.arange(4)[:, None]
    np.testing.assert_allclose(
        param2.to_image(raw)[0, :, :, 2] - 0.5, -np.sin(np.pi * (m + n) / 2), atol=1e-6
    )
    np.testing.assert_allclose(P.spectrum_scale(4, 4)[0], [16.0, 16.0, 8.0], rtol=1e-6)


def test_decorrelated_colour_matrix():
    c = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    largest = np.sqrt(0.26**2 + 0.27**2 + 0.27**2)  # the first column has the largest norm
    raw = jnp.zeros((1, 2, 2, 3)).at[..., 0].set(1.0).at[0, 1, 1].set([0.0, 2.0, -1.0])
    linear = P.pixel_image(2, decorrelate=True, sigmoid=False).to_image(raw)
    expected = np.asarray(raw) @ (c / largest).T
    np.testing.assert_allclose(linear, expected + np.array(P.COLOR_MEAN), atol=1e-6)
    squashed = P.pixel_image(2, decorrelate=True).to_image(raw)
    np.testing.assert_allclose(squashed, 1 / (1 + np.exp(-expected)), atol=1e-6)
    plain = P.pixel_image(2, sigmoid=False).to_image(raw)
    np.testing.assert_allclose(plain, np.asarray(raw) + 0.5, atol=1e-7)


@pytest.mark.parametrize("fft", [True, False])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_from_image_round_trip(fft, decorrelate):
    param = P.from_image(TARGET, fft=fft, decorrelate=decorrelate)
    raw = param.init(KEY)
    np.testing.assert_allclose(param.to_image(raw)[0], TARGET, atol=1e-5)
    # The raw value lives in the same space as the matching random parameterization.
    make = P.fft_image if fft else P.pixel_image
    twin = make((6, 7), decorrelate=decorrelate)
    assert twin.init(KEY).shape == raw.shape
    np.testing.assert_allclose(twin.to_image(raw)[0], TARGET, atol=1e-5)


def test_from_image_clips_and_validates():
    img = np.zeros((4, 4, 3), np.float32)
    img[0, 0] = 1.0
    out = P.from_image(img).to_image(P.from_image(img).init(KEY))
    np.testing.assert_allclose(out[0], np.clip(img, 1e-3, 1 - 1e-3), atol=1e-5)
    with pytest.raises(JaxvisError, match="shape"):
        P.from_image(np.zeros((4, 4)))


def test_keras_vis_image_statistics_and_display():
    param = P.keras_vis_image(32)
    raw = np.asarray(param.init(KEY), np.float64)
    assert raw.mean() == pytest.approx(127.5, abs=1e-3)
    assert raw.std() == pytest.approx(12.75, rel=1e-4)
    # Standardized uniform noise spans about +-sqrt(3) sd (3072 samples reach the ends);
    # normal noise would reach beyond 3 sd.
    half_range = np.sqrt(3) * 12.75
    assert np.abs(raw - 127.5).max() < 1.02 * half_range
    assert raw.max() - raw.min() > 0.98 * 2 * half_range
    np.testing.assert_allclose(param.to_image(raw), raw / 255.0, rtol=1e-6)
    wild = (raw - 127.5) * 20 + 127.5  # beyond 0..255: to_image does not clip
    outside = param.to_image(jnp.asarray(wild))
    assert float(outside.min()) < 0 and float(outside.max()) > 1
    shown = np.asarray(param.display(jnp.asarray(wild, jnp.float32)))
    ref = np.clip((wild - wild.mean()) / (wild.std() + 1e-7) * 0.1 + 0.5, 0, 1)
    np.testing.assert_allclose(shown, ref, atol=1e-5)
    np.testing.assert_allclose(P.to_display(param, jnp.asarray(wild, jnp.float32)), ref, atol=1e-5)


def test_descriptions_and_bad_sizes():
    assert P.fft_image((6, 7)).description == (
        "fft_image(6x7, batch=1, sd=0.01, decay_power=1, decorrelate=True, sigmoid=True)"
    )
    assert P.keras_vis_image(8).description.startswith("keras_vis_image(8x8")
    for bad in (0, (4,), (4, -1), 2.5):
        with pytest.raises(JaxvisError, match="size"):
            P.pixel_image(bad)
    with pytest.raises(JaxvisError, match="batch"):
        P.fft_image(8, batch=0)
