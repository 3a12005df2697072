"""Values, traced units, composition and keras-vis normalisations of jaxvis.objectives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvis import objectives as O
from jaxvis.errors import JaxvisError

_PRE = np.random.RandomState(0).randn(2, 5, 4, 3).astype(np.float32)
ACTS = {
    "conv:pre": jnp.asarray(_PRE),
    "conv": jnp.asarray(np.maximum(_PRE, 0)),
    "pool": jnp.asarray(np.abs(_PRE[:, ::2, ::2])),
}
IMAGES = jnp.asarray(np.random.RandomState(1).rand(2, 6, 6, 3).astype(np.float32))


def test_channel_with_traced_unit_under_jit_and_vmap():
    obj = O.channel("conv")
    assert obj.uses_unit and obj.layers == ("conv",)
    run = jax.jit(obj.fn)
    looped = [float(run(ACTS, IMAGES, jnp.int32(u))) for u in range(3)]
    np.testing.assert_allclose(looped, _PRE.mean(axis=(0, 1, 2)), rtol=1e-6)
    vmapped = jax.jit(jax.vmap(obj.fn, in_axes=(None, None, 0)))(ACTS, IMAGES, jnp.arange(3))
    np.testing.assert_allclose(vmapped, looped, rtol=1e-6)
    fixed = [float(O.channel("conv", u)(ACTS, IMAGES, jnp.int32(0))) for u in range(3)]
    np.testing.assert_allclose(fixed, looped, rtol=1e-6)


def test_fixed_unit_ignores_the_traced_one_and_is_range_checked():
    obj = O.channel("conv", 2)
    assert not obj.uses_unit and obj.description == "channel(conv:pre, 2)"
    assert float(obj(ACTS, IMAGES, jnp.int32(0))) == pytest.approx(_PRE[..., 2].mean())
    with pytest.raises(JaxvisError, match="out of range"):
        O.channel("conv", 3)(ACTS, IMAGES, jnp.int32(0))
    with pytest.raises(JaxvisError):
        O.channel("conv", -1)


def test_pre_versus_post_relu():
    unit = jnp.int32(1)
    post = float(O.channel("conv", pre=False)(ACTS, IMAGES, unit))
    pre = float(O.channel("conv")(ACTS, IMAGES, unit))
    assert post == pytest.approx(np.maximum(_PRE[..., 1], 0).mean())
    assert pre == pytest.approx(_PRE[..., 1].mean()) and pre != pytest.approx(post)
    assert O.channel("conv:pre", pre=False).description == "channel(conv:pre)"
    assert O.channel("conv:pre").layers == ("conv",)
    # No "pool:pre" in the dict: pre=True falls back to the layer itself.
    pool = float(O.channel("pool")(ACTS, IMAGES, unit))
    assert pool == pytest.approx(np.abs(_PRE[:, ::2, ::2, 1]).mean())
    with pytest.raises(JaxvisError, match="hold only"):
        O.channel("block9_conv1")(ACTS, IMAGES, unit)


def test_neuron_centre_and_position():
    unit = jnp.int32(2)
    centre = float(O.neuron("conv")(ACTS, IMAGES, unit))  # 5x4 -> row 2, column 2
    assert centre == pytest.approx(_PRE[:, 2, 2, 2].mean())
    corner = float(O.neuron("conv", x=3, y=0, pre=False)(ACTS, IMAGES, unit))
    assert corner == pytest.approx(np.maximum(_PRE[:, 0, 3, 2], 0).mean())
    vmapped = jax.vmap(O.neuron("conv").fn, in_axes=(None, None, 0))(ACTS, IMAGES, jnp.arange(3))
    np.testing.assert_allclose(vmapped, _PRE[:, 2, 2, :].mean(axis=0), rtol=1e-6)
    with pytest.raises(JaxvisError, match="outside"):
        O.neuron("conv", x=4)(ACTS, IMAGES, unit)


def test_class_logit():
    obj = O.class_logit()
    assert obj.layers == ("predictions",) and obj.uses_unit and obj.description == "class_logit()"
    acts = {"predictions": jnp.asarray([[1.0, 5.0, -3.0], [3.0, 1.0, -1.0]])}
    per_unit = jax.vmap(obj.fn, in_axes=(None, None, 0))(acts, IMAGES, jnp.arange(3))
    np.testing.assert_allclose(per_unit, [2.0, 3.0, -2.0])  # batch means
    fixed = O.class_logit(1)
    assert not fixed.uses_unit and fixed.description == "class_logit(1)"
    assert float(fixed(acts, IMAGES, jnp.int32(0))) == pytest.approx(3.0)


def test_direction_dot_and_cossim():
    v = np.array([1.0, -2.0, 0.5], np.float32)
    obj = O.direction("conv", v)
    assert not obj.uses_unit
    assert float(obj(ACTS, IMAGES, jnp.int32(0))) == pytest.approx((_PRE @ v).mean(), rel=1e-5)
    dot = _PRE @ v
    cos = dot / (1e-4 + np.linalg.norm(_PRE, axis=-1)) / (1e-4 + np.linalg.norm(v))
    expected = (dot * np.maximum(0.1, cos) ** 2).mean()
    got = O.direction("conv", v, cossim_pow=2)(ACTS, IMAGES, jnp.int32(0))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(JaxvisError, match="3 channels"):
        O.direction("conv", [1.0, 2.0])(ACTS, IMAGES, jnp.int32(0))


def test_arithmetic_values_and_descriptions():
    a, b = O.channel("conv"), O.channel("pool", 1, pre=False)
    tv = O.total_variation()
    unit = jnp.int32(1)
    va, vb, vt = (float(o(ACTS, IMAGES, unit)) for o in (a, b, tv))
    combo = a - 10 * tv
    assert combo.description == "channel(conv:pre) - 10*total_variation()"
    assert float(combo(ACTS, IMAGES, unit)) == pytest.approx(va - 10 * vt, rel=1e-5)
    assert combo.layers == ("conv",) and combo.uses_unit
    neg = -(a + b)
    assert neg.description == "-(channel(conv:pre) + channel(pool, 1))"
    assert float(neg(ACTS, IMAGES, unit)) == pytest.approx(-(va + vb), rel=1e-5)
    assert neg.layers == ("conv", "pool") and neg.uses_unit
    scaled = (a * 2 - b / 4) * 0.5
    assert scaled.description == "0.5*(2*channel(conv:pre) - channel(pool, 1)/4)"
    assert float(scaled(ACTS, IMAGES, unit)) == pytest.approx(va - vb / 8, rel=1e-5)
    assert (
        a - (b - tv)
    ).description == "channel(conv:pre) - (channel(pool, 1) - total_variation())"
    total = sum([a, b, tv])
    assert float(total(ACTS, IMAGES, unit)) == pytest.approx(va + vb + vt, rel=1e-5)
    assert not (b + tv).uses_unit
    with pytest.raises(TypeError):
        a * a
    with pytest.raises(JaxvisError):
        a / 0


def _tv_loops(x, beta):
    """keras-vis TotalVariation, written as plain loops over one [H, W, C] image."""
    h, w, c = x.shape
    total = 0.0
    for i in range(h - 1):
        for j in range(w - 1):
            for k in range(c):
                d = (x[i + 1, j, k] - x[i, j, k]) ** 2 + (x[i, j + 1, k] - x[i, j, k]) ** 2
                total += d ** (beta / 2)
    return total / (h * w * c)


def test_total_variation_keras_vis_normalisation():
    one = jnp.asarray([[[[1.0], [2.0]], [[4.0], [8.0]]]])  # 1x2x2x1: only pixel (0, 0) counts
    assert float(O.total_variation().fn({}, one, 0)) == pytest.approx((3**2 + 1**2) / 4)
    x = np.asarray(IMAGES)
    for beta in (2.0, 1.5):
        expected = np.mean([_tv_loops(255 * im, beta) for im in x])
        got = O.total_variation(beta=beta, scale=255)({}, IMAGES, 0)
        assert float(got) == pytest.approx(expected, rel=1e-4)
    grad = jax.grad(lambda im: O.total_variation(beta=1.0)({}, im, 0))(jnp.zeros((1, 3, 3, 3)))
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert O.total_variation(beta=1.5, scale=255).description == (
        "total_variation(beta=1.5, scale=255)"
    )


def test_lp_norm_keras_vis_normalisation():
    x = jnp.asarray([[[[1.0], [-2.0]], [[2.0], [0.0]]]])
    assert float(O.lp_norm(p=2).fn({}, x, 0)) == pytest.approx(3.0 / 4)
    assert float(O.lp_norm(p=float("inf")).fn({}, x, 0)) == pytest.approx(2.0 / 4)
    imgs = np.asarray(IMAGES, np.float64) * 255
    expected = np.mean([(np.abs(im) ** 6).sum() ** (1 / 6) / im.size for im in imgs])
    assert float(O.lp_norm(scale=255)({}, IMAGES, 0)) == pytest.approx(expected, rel=1e-5)
    # The gradient is that of the plain formula (the max-rescaling is exact).
    grad = jax.grad(lambda im: O.lp_norm(p=3)({}, im, 0))(IMAGES[:1])
    xi = np.asarray(IMAGES[:1], np.float64)
    ref = xi**2 * (xi**3).sum() ** (1 / 3 - 1) / xi.size
    np.testing.assert_allclose(grad, ref, rtol=1e-4)
    with pytest.raises(JaxvisError):
        O.lp_norm(p=0.5)


def test_blur_penalty_values_and_stopped_gradient():
    flat = jnp.full((1, 4, 4, 3), 0.3)
    assert float(O.blur_penalty()({}, flat, 0)) == pytest.approx(0.0, abs=1e-10)
    delta = np.zeros((1, 3, 3, 1), np.float32)
    delta[0, 1, 1, 0] = 1.0
    # Centre: (0.5 * 1 + 0.5 * 1) / (0.5 * 9 + 0.5) = 0.2. A corner pixel sees 4 pixels:
    # 0.5 / (0.5 * 4 + 0.5) = 0.2; an edge pixel sees 6: 0.5 / 3.5.
    blurred = np.asarray(O.blur(jnp.asarray(delta)))[0, :, :, 0]
    np.testing.assert_allclose(blurred[1, 1], 0.2, rtol=1e-6)
    np.testing.assert_allclose(blurred[0, 0], 0.2, rtol=1e-6)
    np.testing.assert_allclose(blurred[0, 1], 0.5 / 3.5, rtol=1e-6)
    expected = 0.5 * ((delta[0, :, :, 0] - blurred) ** 2).sum()
    assert float(O.blur_penalty()({}, jnp.asarray(delta), 0)) == pytest.approx(expected)
    grad = jax.grad(lambda im: O.blur_penalty()({}, im, 0))(jnp.asarray(delta))
    np.testing.assert_allclose(grad[0, :, :, 0], delta[0, :, :, 0] - blurred, atol=1e-6)


def test_diversity_prefers_different_images():
    obj = O.diversity("conv")
    same = {"conv": jnp.stack([ACTS["conv"][0], ACTS["conv"][0]])}
    assert float(obj(same, IMAGES, 0)) == pytest.approx(-1.0, abs=1e-5)
    different = float(obj(ACTS, IMAGES, 0))
    assert -1.0 < different <= 0.0
    # Reference: mean pairwise cosine of flattened Gram matrices, negated.
    grams = [a.reshape(-1, 3).T @ a.reshape(-1, 3) for a in np.asarray(ACTS["conv"])]
    g0, g1 = (g.ravel() / np.linalg.norm(g) for g in grams)
    assert different == pytest.approx(-(g0 @ g1), rel=1e-5)
    # Three images: the mean over the 6 ordered pairs (Lucid's sum / B would differ).
    three = jnp.concatenate([ACTS["conv"], ACTS["conv"][:1] ** 2])
    flat = [(a.reshape(-1, 3).T @ a.reshape(-1, 3)).ravel() for a in np.asarray(three)]
    flat = [g / np.linalg.norm(g) for g in flat]
    pairs = [flat[i] @ flat[j] for i in range(3) for j in range(3) if i != j]
    assert float(obj({"conv": three}, IMAGES, 0)) == pytest.approx(-np.mean(pairs), rel=1e-5)
    assert float(obj({"conv": ACTS["conv"][:1]}, IMAGES, 0)) == 0.0
    assert obj.layers == ("conv",) and not obj.uses_unit


def test_keras_vis_objective_preset():
    obj = O.keras_vis_objective("conv", 1)
    assert obj.description == (
        "channel(conv, 1) - 10*lp_norm(scale=255) - 10*total_variation(scale=255)"
    )
    value = float(obj(ACTS, IMAGES, 0))
    parts = [
        O.channel("conv", 1, pre=False),
        O.lp_norm(scale=255),
        O.total_variation(scale=255),
    ]
    act, lp, tv = (float(p(ACTS, IMAGES, 0)) for p in parts)
    assert value == pytest.approx(act - 10 * lp - 10 * tv, rel=1e-5)
