"""One channel of the target conv (``Taps.select``) in the adapters for users' models:
Keras 3 (``jaxvis/models/keras_graph.py``) and Flax linen and NNX
(``jaxvis/models/flax_linen.py``, ``jaxvis/models/flax_nnx.py``), each against the full
conv it replaces, on tiny models with non-zero biases."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

import jaxvis  # noqa: E402
from jaxvis import conv_tune, engine, objectives, presets  # noqa: E402
from jaxvis.errors import JaxvisError  # noqa: E402
from jaxvis.inflight import run_chunk  # noqa: E402
from jaxvis.models.flax_model import from_flax  # noqa: E402
from jaxvis.models.taps import Taps  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("these tests need KERAS_BACKEND=jax", allow_module_level=True)

from jaxvis.models.keras_model import from_keras  # noqa: E402

L = keras.layers
SIZE = 24


def _randomized(model, seed: int):
    """A Keras model with random kernels and biases (Keras initializes biases to zero,
    which would hide a bias sliced to the wrong channel)."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        v.assign(rng.normal(0.0, 0.3, tuple(v.shape)).astype(v.dtype))
    return model


def _keras_cnn():
    x = inp = keras.Input((SIZE, SIZE, 3))
    x = L.Conv2D(5, 3, strides=2, activation="relu", name="k1")(x)
    x = L.Conv2D(6, 3, padding="valid", dilation_rate=2, name="k2")(x)
    x = L.Conv2D(7, 3, padding="same", activation="relu", name="k3")(x)
    return keras.Model(inp, x, name="kcnn")


def _keras_channels_first():
    cf = {"data_format": "channels_first"}
    x = inp = keras.Input((3, SIZE, SIZE))
    x = L.Conv2D(4, 3, strides=2, activation="relu", name="f1", **cf)(x)
    x = L.Conv2D(6, 3, dilation_rate=2, padding="same", name="f2", **cf)(x)
    return keras.Model(inp, x, name="kcf")


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(5, (3, 3), strides=2, name="a")(x))
        x = nn.relu(nn.Conv(6, (3, 3), padding="VALID", kernel_dilation=2, name="b")(x))
        return nn.Conv(7, (3, 3), padding=((2, 0), (1, 1)), name="c")(x)


class NnxCNN(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Conv(3, 5, (3, 3), strides=2, rngs=rngs)
        self.b = nnx.Conv(5, 6, (3, 3), padding="VALID", kernel_dilation=2, rngs=rngs)

    def __call__(self, x):
        return self.b(nnx.relu(self.a(x)))


def _noisy(tree, seed: int):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + 0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


@pytest.fixture(scope="module")
def models():
    """``{name: FeatureModel}``, built once for the module."""
    net = LinenCNN()
    variables = _noisy(net.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))), 1)
    graphdef, state = nnx.split(NnxCNN(nnx.Rngs(0)))
    return {
        "keras": from_keras(_randomized(_keras_cnn(), 0)),
        "keras_cf": from_keras(_randomized(_keras_channels_first(), 1)),
        "linen": from_flax(net, variables),
        "nnx": from_flax(nnx.merge(graphdef, _noisy(state, 2))),
    }


def _images(n=2, seed=3):
    return jax.random.uniform(jax.random.key(seed), (n, SIZE, SIZE, 3))


CASES = [
    ("keras", "k1"), ("keras", "k2"), ("keras", "k3"), ("keras_cf", "f1"), ("keras_cf", "f2"),
    ("linen", "a"), ("linen", "b"), ("linen", "c"), ("nnx", "a"), ("nnx", "b"),
]  # fmt: skip


@pytest.mark.parametrize("which, layer", CASES)
def test_one_channel_equals_that_channel_of_the_full_conv(models, which, layer):
    model = models[which]
    assert "select" in model.taps
    x = _images()
    params = _noisy(model.params, 5)  # not the model's own: both must read the arguments
    full = jax.jit(model.apply, static_argnums=2)(params, x, layer)

    @jax.jit
    def one(params, x, c):
        return model.apply(params, x, layer, Taps(select={layer: c}))

    for c in (0, 2, model.num_filters(layer) - 1):
        acts = one(params, x, jnp.int32(c))
        assert set(acts) == set(full)
        for name in [n for n in (layer, layer + ":pre") if n in full]:
            assert acts[name].shape == full[name].shape[:-1] + (1,), name
            np.testing.assert_allclose(acts[name][..., 0], full[name][..., c], rtol=1e-5, atol=1e-6)
        for name in [n for n in full if n.removesuffix(":pre") != layer]:  # layers below
            np.testing.assert_allclose(acts[name], full[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("which, layer", [("keras", "k3"), ("keras_cf", "f1"), ("linen", "c")])
def test_input_gradient_of_one_channel_matches(models, which, layer):
    model, c = models[which], 4 if which != "keras_cf" else 3
    name = layer + ":pre" if model.layer(layer).pre else layer
    x = _images(n=1)

    def full(img):
        return model.apply(model.params, img, layer)[name][..., c].mean()

    def one(img):
        return model.apply(model.params, img, layer, Taps(select={layer: c}))[name][..., 0].mean()

    g_full, g_one = jax.jit(jax.grad(full))(x), jax.jit(jax.grad(one))(x)
    np.testing.assert_allclose(g_one, g_full, atol=1e-5 * float(jnp.max(jnp.abs(g_full))))


@pytest.mark.parametrize("which, layer", [("keras", "k3"), ("linen", "c")])
def test_visualize_selects_and_gives_the_pictures_of_the_full_conv(models, which, layer):
    _same_pictures(models[which], layer, sliced=True)


def _flops(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


@pytest.mark.parametrize(
    "which, layer, taps", [("keras", "k3", 9 * 6), ("linen", "c", 9 * 6), ("nnx", "b", 9 * 5)]
)
def test_one_channel_saves_the_other_channels_of_the_conv(models, which, layer, taps):
    """XLA's count drops by the multiply-adds of every other channel of the target conv
    (``taps`` per output value, less those on 'same' padding, which XLA does not count:
    hence 0.7). Flax runs the model to its end with the
    full conv flowing on, so this also checks that XLA drops that full conv."""
    model, x = models[which], _images()
    goal = objectives.channel(layer, pre=False)
    narrowed = goal.on_unit_channel(layer)
    full = _flops(lambda p, x: goal(model.apply(p, x, layer), x, 2), model.params, x)
    one = _flops(
        lambda p, x, c: narrowed(model.apply(p, x, layer, Taps(select={layer: c})), x, c),
        model.params,
        x,
        jnp.int32(2),
    )
    n, h, w, channels = model.apply(model.params, x, layer)[layer].shape
    others = 2 * n * h * w * taps * (channels - 1)
    assert full - one >= 0.7 * others, (full, one, others)


def _same_pictures(model, layer, sliced: bool):
    """visualize() at the CPU default slices ``layer`` or not, as asked, and gives the
    pictures of the full conv. keras-vis's one roll compiles several times faster than
    lucid's five transforms, and slicing does not depend on the preset."""
    preset, units = presets.get("keras-vis"), np.array([0, 3])
    assert engine.program(model, layer, SIZE, preset, steps=4).ascent.select is sliced
    off = engine.program(model, layer, SIZE, preset, steps=4, select=False)
    ref = run_chunk(off, model.params, 0, layer, units, len(units))
    vis = jaxvis.visualize(model, layer, units, size=SIZE, steps=4, preset="keras-vis")
    np.testing.assert_allclose(vis.history, ref.history, rtol=1e-4, atol=1e-4)
    assert np.abs(vis.images.astype(int) - ref.images.astype(int)).max() <= 1


def test_keras_convs_that_cannot_slice_are_computed_whole():
    x = inp = keras.Input((SIZE, SIZE, 3))
    x = L.Conv2D(4, 3, activation="relu", name="plain")(x)
    x = L.DepthwiseConv2D(3, name="depth")(x)
    x = L.Conv2D(4, 3, name="after")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(3, name="dense")(x)
    model = from_keras(_randomized(keras.Model(inp, x, name="mixed"), 4))
    assert "select" in model.taps and model.unsliceable == {"depth"}
    assert not engine.selects(model, "depth", objectives.channel("depth"))
    # The plain convs around it still compute one channel.
    assert engine.selects(model, "plain", objectives.channel("plain"))
    _same_pictures(model, "after", sliced=True)
    _same_pictures(model, "depth", sliced=False)
    for layer in ("depth", "dense"):
        with pytest.raises(JaxvisError, match=f"'{layer}'.*cannot compute one channel") as err:
            model.apply(model.params, _images(), layer, Taps(select={layer: jnp.int32(0)}))
        assert "\n" not in str(err.value)
    with pytest.raises(JaxvisError, match="can only name the layer computed last"):
        model.apply(model.params, _images(), "depth", Taps(select={"plain": jnp.int32(0)}))


class LinenGrouped(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="plain")(x)
        x = nn.Conv(4, (3, 3), feature_group_count=2, name="grouped")(x)
        return nn.Dense(3, name="dense")(x.mean((1, 2)))


def test_flax_convs_that_cannot_slice_are_computed_whole():
    net = LinenGrouped()
    model = from_flax(net, net.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
    assert "select" in model.taps and model.unsliceable == {"grouped"}
    assert not engine.selects(model, "grouped", objectives.channel("grouped"))
    assert engine.selects(model, "plain", objectives.channel("plain"))
    _same_pictures(model, "grouped", sliced=False)
    for layer in ("grouped", "dense"):
        with pytest.raises(JaxvisError, match=f"'{layer}'.*cannot compute one channel") as err:
            model.apply(model.params, _images(), layer, Taps(select={layer: jnp.int32(0)}))
        assert "\n" not in str(err.value)


def test_conv_formulations_reach_a_keras_model(models):
    """jaxvis/conv_tune.py on a real Keras-on-JAX model: its 3x3 'same' stride-1 conv is
    found, computed by Winograd in the compiled program, and gives the model's own
    activations. (This module's Flax CNNs have no plain 3x3 'same' conv.)"""
    layer = "k3"
    model, x = models["keras"], _images()
    shapes = conv_tune.conv_shapes(model.apply, model.params, x, layer)
    assert shapes == [(2, 7, 7, 6, 7)]  # k3; k1 (stride 2) and k2 (dilated) are not plain
    formed = conv_tune.Formed(model.apply, tuple((s, "winograd") for s in shapes))
    stock = model.apply(model.params, x, layer)[layer]
    got = formed(model.params, x, layer)[layer]
    assert float(jnp.abs(got - stock).max()) <= 1e-5 * float(jnp.abs(stock).max())
    count = jax.jit(lambda x: formed(model.params, x, layer)[layer]).lower(x).as_text()
    stock_count = jax.jit(lambda x: model.apply(model.params, x, layer)[layer]).lower(x).as_text()
    key = "stablehlo.convolution"
    assert stock_count.count(key) - count.count(key) == len(shapes)
