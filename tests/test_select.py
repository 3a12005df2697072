"""One channel of the target conv (``Taps.select``): the built-in models, the narrowed
objectives and the engine's choice, each against the full conv it replaces."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvis
from jaxvis import engine, objectives, presets
from jaxvis.inflight import run_chunk
from jaxvis.models.taps import Taps

SIZE = 32


@pytest.fixture(scope="module")
def vgg():
    return jaxvis.vgg16(None)


@pytest.fixture(scope="module")
def alexnet():
    return jaxvis.alexnet(None)


def _images(size, n=2, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


@pytest.mark.parametrize(
    "model_name, layer, size",
    [("vgg", "block1_conv2", SIZE), ("vgg", "block2_conv1", SIZE), ("alexnet", "conv2", 64)],
)
def test_one_channel_equals_that_channel_of_the_full_conv(request, model_name, layer, size):
    model = request.getfixturevalue(model_name)
    x = _images(size)
    full = model.apply(model.params, x, layer)
    for c in (0, 5, model.num_filters(layer) - 1):
        one = model.apply(model.params, x, layer, Taps(select={layer: jnp.int32(c)}))
        for name in (layer, layer + ":pre"):
            assert one[name].shape == full[name].shape[:-1] + (1,)
            np.testing.assert_allclose(one[name][..., 0], full[name][..., c], rtol=1e-5, atol=1e-5)
        shallower = [k for k in full if not k.startswith(layer)]
        for name in shallower:  # the layers below are untouched
            np.testing.assert_array_equal(one[name], full[name])


def test_input_gradient_of_one_channel_matches(vgg):
    layer, c = "block2_conv1", 17
    x = _images(SIZE, n=1)

    def full(img):
        return vgg.apply(vgg.params, img, layer)[layer + ":pre"][..., c].mean()

    def one(img):
        acts = vgg.apply(vgg.params, img, layer, Taps(select={layer: jnp.int32(c)}))
        return acts[layer + ":pre"][..., 0].mean()

    g_full, g_one = jax.grad(full)(x), jax.grad(one)(x)
    scale = float(jnp.max(jnp.abs(g_full)))
    np.testing.assert_allclose(g_one, g_full, atol=1e-5 * scale)


def test_which_objectives_narrow():
    L, M = "block3_conv3", "block2_conv1"
    ch = objectives.channel(L)
    assert ch.on_unit_channel(L) is not None
    penalized = ch - 0.5 * objectives.lp_norm() - objectives.total_variation() / 4
    assert penalized.on_unit_channel(L) is not None
    assert (-ch).on_unit_channel(L) is not None
    assert objectives.neuron(L).on_unit_channel(L) is not None
    assert (ch + objectives.channel(M, 3)).on_unit_channel(L) is not None  # M is not sliced
    # each of these needs more of L than the traced unit's channel
    assert objectives.channel(L, 5).on_unit_channel(L) is None
    assert (ch + objectives.diversity(L)).on_unit_channel(L) is None
    assert (ch - objectives.channel(L, 2)).on_unit_channel(L) is None
    assert objectives.direction(L, np.ones(256)).on_unit_channel(L) is None
    # an objective that does not read the layer is unaffected
    tv = objectives.total_variation()
    assert tv.on_unit_channel(L) is tv


def test_narrowed_objective_gives_the_same_value(vgg):
    layer, c = "block1_conv2", 9
    x = _images(SIZE)
    goal = objectives.channel(layer) - 0.1 * objectives.lp_norm()
    full = goal(vgg.apply(vgg.params, x, layer), x, jnp.int32(c))
    acts = vgg.apply(vgg.params, x, layer, Taps(select={layer: jnp.int32(c)}))
    one = goal.on_unit_channel(layer)(acts, x, jnp.int32(c))
    np.testing.assert_allclose(one, full, rtol=1e-5)


def test_engine_selects_only_where_it_is_exact(vgg):
    lucid = presets.get("lucid")
    assert engine.program(vgg, "block1_conv2", SIZE, lucid, steps=2).ascent.select  # CPU
    assert not engine.program(vgg, "block1_conv2", SIZE, lucid, steps=2, select=False).ascent.select
    assert not engine.selects(vgg, "block1_pool", objectives.channel("block1_pool"))
    assert not engine.selects(vgg, "block1_conv2", objectives.channel("block1_conv2", 3))
    plain = dataclasses.replace(vgg, taps=frozenset())  # a model that cannot slice
    assert not engine.selects(plain, "block1_conv2", objectives.channel("block1_conv2"))
    gpu = engine.program(vgg, "block1_conv2", SIZE, lucid, steps=2, platform="gpu")
    assert not gpu.ascent.select  # unmeasured on accelerators: the vendor's full conv


def test_atlas_pictures_unchanged_by_selecting(vgg):
    layer, units = "block2_conv1", np.array([0, 7, 127])
    lucid = presets.get("lucid")
    runs = {}
    for select in (False, True):
        prog = engine.program(vgg, layer, SIZE, lucid, steps=4, select=select)
        assert prog.ascent.select == select
        runs[select] = run_chunk(prog, vgg.params, 0, layer, units, len(units))
    a, b = runs[False], runs[True]
    np.testing.assert_allclose(b.history, a.history, rtol=1e-4, atol=1e-4)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1


def test_a_model_that_ignores_select_fails_loudly(vgg):
    def deaf(params, images, stop_at, taps=None):
        return vgg.apply(params, images, stop_at)  # lists "select" but drops the taps

    liar = dataclasses.replace(vgg, apply=deaf)
    with pytest.raises(jaxvis.JaxvisError, match="one channel of 'block1_conv2'"):
        jaxvis.visualize(liar, "block1_conv2", [3], size=SIZE, steps=2)
