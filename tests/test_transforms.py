"""Golden values, shapes and jit/vmap/grad behaviour of jaxvis.transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxvis import transforms as T
from jaxvis.errors import JaxvisError

# A 1x5x5x3 image whose every value is distinct.
X = np.arange(75, dtype=np.float32).reshape(1, 5, 5, 3)
KEYS = [jax.random.key(i) for i in range(6)]


def _words(key):
    """The documented draw of a random transform: two threefry words of its key."""
    return np.asarray(jax.random.bits(key, (2,), jnp.uint32)).astype(np.int64)


def _offsets(key, d):
    dy, dx = _words(key) % (2 * d + 1) - d
    return int(dy), int(dx)


def test_pad_constant_and_edge():
    out = np.asarray(T.pad(2)(KEYS[0], X))
    assert out.shape == (1, 9, 9, 3)
    np.testing.assert_array_equal(out[:, 2:7, 2:7], X)
    border = np.ones((9, 9), bool)
    border[2:7, 2:7] = False
    assert np.all(out[0][border] == 0.5)
    edge = np.asarray(T.pad(1, mode="edge")(KEYS[0], X))
    np.testing.assert_array_equal(edge[0, 0, 1:-1], X[0, 0])
    np.testing.assert_array_equal(edge[0, 0, 0], X[0, 0, 0])


def test_jitter_places_pixels_at_the_drawn_offset():
    seen = set()
    for key in KEYS:
        dy, dx = _offsets(key, 2)
        seen.add((dy, dx))
        rows = np.clip(np.arange(5) - dy, 0, 4)
        cols = np.clip(np.arange(5) - dx, 0, 4)
        expected = X[:, rows][:, :, cols]
        np.testing.assert_array_equal(np.asarray(T.jitter(2)(key, X)), expected)
        const = np.asarray(T.jitter(2, mode="constant", value=-1.0)(key, X))
        inside = (np.arange(5)[:, None] - dy >= 0) & (np.arange(5)[:, None] - dy < 5)
        inside = inside & ((np.arange(5)[None] - dx >= 0) & (np.arange(5)[None] - dx < 5))
        np.testing.assert_array_equal(const[0][inside], expected[0][inside])
        assert np.all(const[0][~inside] == -1.0)
    assert any(o != (0, 0) for o in seen)  # the test exercised real shifts


def test_roll_jitter_equals_np_roll():
    for key in KEYS:
        dy, dx = _offsets(key, 2)
        expected = np.roll(X, (dy, dx), axis=(1, 2))
        np.testing.assert_array_equal(np.asarray(T.roll_jitter(2)(key, X)), expected)


@pytest.mark.parametrize("make", [T.jitter, T.roll_jitter])
def test_jitter_offsets_cover_minus_d_to_d(make):
    delta = jnp.zeros((1, 7, 7, 1)).at[0, 3, 3, 0].set(1.0)
    keys = jax.random.split(jax.random.key(1), 200)
    out = jax.jit(jax.vmap(make(2), in_axes=(0, None)))(keys, delta)
    rows = np.argmax(np.asarray(out).reshape(200, 49), axis=1) // 7 - 3
    cols = np.argmax(np.asarray(out).reshape(200, 49), axis=1) % 7 - 3
    assert set(rows) == set(range(-2, 3)) and set(cols) == set(range(-2, 3))


def test_scale_one_and_rotate_zero_are_identity():
    np.testing.assert_allclose(T.random_scale([1.0])(KEYS[0], X), X, atol=1e-5)
    np.testing.assert_allclose(T.random_rotate([0])(KEYS[0], X), X, atol=1e-5)


@pytest.mark.parametrize("angle,k", [(90, 1), (-90, -1), (180, 2)])
def test_rotate_right_angles_equal_rot90(angle, k):
    out = T.random_rotate([angle])(KEYS[0], X)
    np.testing.assert_allclose(out, np.rot90(X, k=k, axes=(1, 2)), atol=1e-4)


def test_scale_about_centre_on_a_ramp():
    ramp = np.tile(np.arange(5, dtype=np.float32)[None, None, :, None], (1, 5, 1, 2))
    zoom_in = np.asarray(T.random_scale([2.0])(KEYS[0], ramp))
    np.testing.assert_allclose(zoom_in[0, 3, :, 1], [1.0, 1.5, 2.0, 2.5, 3.0], atol=1e-6)
    # Zooming out reads outside; mode "nearest" repeats the edge.
    zoom_out = np.asarray(T.random_scale([0.5])(KEYS[0], ramp))
    np.testing.assert_allclose(zoom_out[0, 1, :, 0], [0.0, 0.0, 2.0, 4.0, 4.0], atol=1e-6)
    const = np.asarray(T.random_scale([0.5], mode="constant", value=9.0)(KEYS[0], ramp))
    np.testing.assert_allclose(const[0, 2, :, 0], [9.0, 0.0, 2.0, 4.0, 9.0], atol=1e-6)


# jaxvis fill mode -> the SciPy mode with the same meaning (SciPy >= 1.6).
SCIPY_MODES = {"constant": "grid-constant", "nearest": "nearest", "wrap": "grid-wrap"}


@pytest.mark.parametrize("mode", T.RESAMPLE_MODES)
def test_rotation_matches_scipy_map_coordinates(mode):
    # An independent reference: SciPy's bilinear interpolation, plane by plane, at the
    # rotated source coordinates (the corners of a 33-degree turn fall outside).
    img = np.random.RandomState(5).rand(1, 6, 7, 3).astype(np.float32)
    got = T.random_rotate([33.0], mode=mode, value=0.25)(KEYS[0], img)
    theta = np.deg2rad(33.0)
    y, x = np.meshgrid(np.arange(6) - 2.5, np.arange(7) - 3.0, indexing="ij")
    src = [2.5 + y * np.cos(theta) + x * np.sin(theta), 3.0 + x * np.cos(theta) - y * np.sin(theta)]
    assert np.min(src) < -1 and np.max(src[1]) > 6  # beyond the last column, index 6
    ref = [
        ndimage.map_coordinates(img[0, ..., c], src, order=1, mode=SCIPY_MODES[mode], cval=0.25)
        for c in range(3)
    ]
    np.testing.assert_allclose(got[0], np.stack(ref, -1), atol=1e-5)


def test_random_choice_uses_the_documented_draw():
    scale = T.random_scale([1.0, 2.0])
    for key in KEYS:
        s = [1.0, 2.0][int(_words(key)[0] % 2)]
        expected = T.random_scale([s])(key, X)
        np.testing.assert_allclose(scale(key, X), expected, atol=1e-6)
    picks = {float(T.random_choice(k, [1.0, 2.0])) for k in KEYS}
    assert picks == {1.0, 2.0}


def test_center_crop():
    np.testing.assert_array_equal(T.center_crop(3)(KEYS[0], X), X[:, 1:4, 1:4])
    np.testing.assert_array_equal(T.center_crop(2, 4)(KEYS[0], X), X[:, 1:3, 0:4])
    with pytest.raises(JaxvisError, match="larger"):
        T.center_crop(6)(KEYS[0], X)


def test_compose_splits_keys_deterministically():
    a, b = T.jitter(2), T.roll_jitter(2)
    both = T.compose(a, b)
    for key in KEYS[:3]:
        k1, k2 = jax.random.split(key, 2)
        np.testing.assert_array_equal(both(key, X), b(k2, a(k1, X)))
    outs = {np.asarray(both(k, X)).tobytes() for k in KEYS}
    assert len(outs) > 1
    assert T.describe(both) == "compose(jitter(2, edge), roll_jitter(2))"
    np.testing.assert_array_equal(T.compose()(KEYS[0], X), X)


def test_standard_transforms_shapes_and_description():
    img = jnp.full((2, 16, 12, 3), 0.5)
    out = jax.jit(T.standard_transforms())(KEYS[0], img)
    assert out.shape == (2, 16, 12, 3)
    # A grey image stays grey: every fill is the 0.5 padding.
    np.testing.assert_allclose(out, 0.5, atol=1e-6)
    sized = jax.eval_shape(T.standard_transforms(10), KEYS[0], img)
    assert sized.shape == (2, 10, 10, 3)
    desc = T.describe(T.standard_transforms())
    assert desc.startswith("standard_transforms(pad(12, constant 0.5), jitter(4, edge)")
    assert T.LUCID_SCALES[0] == pytest.approx(0.9) and len(T.LUCID_ANGLES) == 26


@pytest.mark.parametrize("draws", ["shifts only", "quarter turns"])
def test_fused_standard_transforms_equal_the_chain_where_exact(monkeypatch, draws):
    # Integer shifts and 90-degree turns are exact in bilinear sampling, so there the
    # fused single resample must equal the five transforms applied one by one.
    monkeypatch.setattr(T, "LUCID_SCALES", (1.0,))
    monkeypatch.setattr(T, "LUCID_ANGLES", (0.0,) if draws == "shifts only" else (90.0, -90.0))
    img = jax.random.uniform(jax.random.key(3), (2, 14, 14, 3))
    fused, chain = T.standard_transforms(), T.standard_transforms(fused=False)
    for key in KEYS:
        np.testing.assert_allclose(fused(key, img), chain(key, img), atol=1e-5)
    assert "fused" in fused.description and "fused" not in chain.description


def test_fused_standard_transforms_close_to_the_chain():
    # With real scales and angles the chain interpolates twice; the fused map once.
    img = jax.image.resize(
        jax.random.uniform(jax.random.key(4), (1, 8, 8, 3)), (1, 32, 32, 3), "linear"
    )  # smooth, so double blur is small
    fused, chain = T.standard_transforms(), T.standard_transforms(fused=False)
    for key in KEYS:
        a, b = fused(key, img), chain(key, img)
        inner = np.s_[:, 6:-6, 6:-6]  # the corners differ where the chain smears edges
        assert np.abs(np.asarray(a - b))[inner].mean() < 0.02


def _all_transforms():
    return [
        T.pad(2),
        T.jitter(2),
        T.roll_jitter(2),
        T.random_scale([0.9, 1.1]),
        T.random_rotate([-10, 10]),
        T.center_crop(6),
        T.standard_transforms(),
        T.standard_transforms(fused=False),
    ]


@pytest.mark.parametrize("transform", _all_transforms(), ids=lambda t: t.description[:30])
def test_jit_vmap_and_finite_gradients(transform):
    images = jax.random.uniform(jax.random.key(0), (2, 1, 8, 8, 3))
    keys = jax.random.split(jax.random.key(2), 2)

    def out_and_grad(key, im):
        def loss(x):
            out = transform(key, x)
            return jnp.sum(out * out), out

        return jax.grad(loss, has_aux=True)(im)[::-1]

    batched = jax.jit(jax.vmap(out_and_grad))
    out, grad = batched(keys, images)
    assert out.shape[:2] == (2, 1) and out.shape[-1] == 3
    # vmap equals the loop: unit 0 against the plain call, and swapping the units swaps
    # the results (each unit sees only its own key and image).
    np.testing.assert_allclose(out[0], jax.jit(transform)(keys[0], images[0]), atol=1e-5)
    swapped, _ = batched(keys[::-1], images[::-1])
    np.testing.assert_allclose(swapped, out[::-1], atol=1e-6)
    assert grad.shape == images.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).sum()) > 0


def test_bad_config_raises():
    with pytest.raises(JaxvisError, match="valid"):
        T.pad(1, mode="bogus")
    with pytest.raises(JaxvisError):
        T.jitter(-1)
    with pytest.raises(JaxvisError):
        T.random_scale([])
    with pytest.raises(JaxvisError):
        T.random_scale([0.0])
    with pytest.raises(JaxvisError, match=r"\[B, H, W, C\]"):
        T.jitter(1)(KEYS[0], X[0])


def test_draws_are_uniform_over_their_range():
    # The remainder of a uint32 word (T.word_below): every shift and choice appears, each
    # about equally often; a remainder of the wrong n, or a draw that ignores its key,
    # leaves values out or piles them up.
    keys = jax.random.split(jax.random.key(7), 4000)
    shifts = np.asarray(jax.vmap(lambda k: T.random_offsets(k, 4))(keys)).ravel()
    counts = np.bincount(shifts + 4, minlength=9)
    assert counts.size == 9 and np.abs(counts / (shifts.size / 9) - 1).max() < 0.15, counts
    picks = np.asarray(jax.vmap(lambda k: T.random_choice(k, T.LUCID_ANGLES))(keys))
    share_of_zero = np.mean(picks == 0)  # 0 is 6 of the 26 angles
    assert set(picks.tolist()) == set(T.LUCID_ANGLES) and abs(share_of_zero - 6 / 26) < 0.03
