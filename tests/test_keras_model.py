"""``jaxvis.models.keras_model``: Keras 3 models as FeatureModels, checked against Keras.

Every numeric reference is Keras itself on the same random weights: a sub-model
``keras.Model(inputs, layer.output).predict(x)`` (for a nested model, the inner
sub-model on the outer model's intermediate output), a copy of a layer with a linear
activation for ``:pre``, and a Keras head model ``keras.Model(layer.output, out)`` for
deltas. Relative error is ``max |jaxvis - keras| / max |keras|``.

Models are built with deferred variables (``keras.StatelessScope``) and given random
values from numpy, including BatchNormalization's moving statistics, so that a layer run
in training mode, or a variable read from the wrong place, shows. That also skips
Keras's per-shape initializer compiles, which took most of a ResNet50's build time.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import hashlib  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxvis  # noqa: E402
from jaxvis import engine, presets  # noqa: E402
from jaxvis.errors import JaxvisError  # noqa: E402
from jaxvis.models import keras_model  # noqa: E402
from jaxvis.models.keras_model import from_keras, load_keras  # noqa: E402
from jaxvis.models.taps import Taps  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("these tests need KERAS_BACKEND=jax", allow_module_level=True)

from keras.src.backend.common import global_state  # noqa: E402

L = keras.layers
TOL = 1e-5


def randomize(model, seed: int = 0):
    """Random values for every variable: He-scaled kernels, non-zero biases, and moving
    statistics far from BatchNormalization's (0, 1) defaults."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        shape = tuple(v.shape)
        if not jnp.issubdtype(v.dtype, jnp.floating):
            value = np.zeros(shape)
        elif v.name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) <= 1:
            value = rng.normal(0.0, 0.2, shape)
        else:
            fan_in = np.prod(shape[:2]) if v.name == "depthwise_kernel" else np.prod(shape[:-1])
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        v.assign(value.astype(v.dtype))
    return model


def build(make, seed: int = 0):
    """``make()`` with deferred variables, then :func:`randomize` d."""
    with keras.StatelessScope(initialize_variables=False):
        model = make()
    global_state.set_global_attribute("uninitialized_variables", [])
    return randomize(model, seed)


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def keras_outputs(inputs, tensors, x) -> list[np.ndarray]:
    """Keras's own values of ``tensors`` (a sub-model up to them) on ``x``."""
    out = keras.Model(inputs, tensors).predict(x, verbose=0)
    return out if isinstance(out, list) else [out]


def outputs_of(model, names, prefix: str = "") -> dict:
    """``{jaxvis name: Keras tensor}`` for layers of ``model``."""
    return {prefix + n: model.get_layer(n).output for n in names}


def run(fm, x, stop_at: str, deltas=None, guided: bool = False) -> dict:
    """``fm.apply`` under jit, with taps: one compile instead of one per op and shape in
    eager mode (``features`` itself is checked eagerly in test_functional_cnn_...)."""

    def forward(params, x, deltas):
        return fm.apply(params, x, stop_at, Taps(deltas=deltas, guided_relu=guided))

    return jax.jit(forward)(fm.params, jnp.asarray(x), deltas or {})


def check_layers(fm, x, expected: dict, inputs, fed=None, tol: float = TOL) -> dict:
    """``fm``'s activations equal Keras's values of the ``expected`` tensors, computed by
    a sub-model from ``inputs`` on ``fed`` (``x`` by default)."""
    order = [la.name for la in fm.layers]
    acts = run(fm, x, max(expected, key=order.index))
    refs = keras_outputs(inputs, list(expected.values()), x if fed is None else fed)
    for name, ref in zip(expected, refs, strict=True):
        assert acts[name].dtype == jnp.float32
        assert rel_err(acts[name], ref) <= tol, (name, rel_err(acts[name], ref))
    return acts


# --- models ---------------------------------------------------------------------------


def _functional_cnn():
    x = inp = keras.Input((24, 24, 3))
    x = L.Conv2D(8, 3, activation="relu", name="c1")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Dropout(0.5, name="drop")(x)
    x = L.RandomFlip(name="flip")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Conv2D(32, 3, name="c2")(x)
    x = L.ReLU(name="relu")(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="c3")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(6, activation="softmax", name="out")(x)
    return keras.Model(inp, x, name="cnn")


def _sequential_cnn():  # free input size: min_size by bisection
    return keras.Sequential(
        [
            keras.Input((None, None, 3)),
            L.Conv2D(8, 3, activation="relu", name="s1"),
            L.MaxPooling2D(name="spool"),
            L.SeparableConv2D(8, 3, activation="relu", name="s2"),
            L.DepthwiseConv2D(3, padding="same", name="s3"),
            L.Activation("relu", name="sact"),
            L.GlobalAveragePooling2D(name="sgap"),
            L.Dense(4, name="slogits"),
        ],
        name="seq",
    )


def _channels_first_cnn():
    cf = {"data_format": "channels_first"}
    x = inp = keras.Input((3, 16, 16))
    x = L.Conv2D(6, 3, activation="relu", name="f1", **cf)(x)
    x = L.BatchNormalization(axis=1, name="fbn")(x)
    x = L.MaxPooling2D(name="fpool", **cf)(x)
    x = L.Conv2D(5, 3, padding="same", name="f2", **cf)(x)
    x = L.GlobalAveragePooling2D(name="fgap", **cf)(x)
    x = L.Dense(3, name="fout")(x)
    return keras.Model(inp, x, name="cf")


def _vgg_transfer():
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    x = inp = keras.Input((None, None, 3))
    x = L.Rescaling(2.0, offset=-1.0, name="rescale")(x)
    x = base(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(5, activation="softmax", name="dense")(x)
    return keras.Model(inp, x, name="transfer")


@pytest.fixture(scope="module")
def cnn():
    model = build(_functional_cnn)
    return model, from_keras(model)


@pytest.fixture(scope="module")
def seq():
    model = build(_sequential_cnn, seed=1)
    return model, from_keras(model)


@pytest.fixture(scope="module")
def nested():
    outer = build(_vgg_transfer, seed=2)
    return outer, outer.get_layer("vgg16"), from_keras(outer)


# --- numerics against Keras -------------------------------------------------------------


def test_functional_cnn_matches_keras(cnn):
    model, fm = cnn
    names = ["c1", "bn", "pool", "relu", "flat", "out"]
    x = images(2, 24)
    acts = check_layers(fm, x, outputs_of(model, names), model.input)
    eager = fm.features(x, "out")
    assert set(eager) == set(acts)
    for name in names:
        np.testing.assert_allclose(eager[name], acts[name], rtol=1e-5, atol=1e-6)
    assert [la.name for la in fm.layers] == [la.name for la in model.layers[1:]]
    kinds = {la.name: la.kind for la in fm.layers}
    assert kinds == {
        "c1": "conv", "bn": "other", "drop": "other", "flip": "other", "pool": "pool",
        "c2": "conv", "relu": "other", "c3": "conv", "flat": "flatten", "out": "dense",
    }  # fmt: skip
    assert fm.num_filters("flat") == 9 * 9 * 32 and fm.num_filters("c2") == 32
    assert (fm.min_size, fm.logits, fm.dtype, fm.name) == (24, "out:pre", "float32", "cnn")
    assert fm.taps == {"deltas", "guided_relu", "select"}


def test_sequential_cnn_matches_keras(seq):
    model, fm = seq
    names = ["s1", "s2", "s3", "sact", "slogits"]
    check_layers(fm, images(2, 20), outputs_of(model, names), model.inputs)
    assert [la.name for la in fm.layers] == [la.name for la in model.layers]
    assert [la.pre for la in fm.layers] == [True, False, True, False, False, False, False]
    # 3x3 valid conv, 2x2 pool, 3x3 valid separable conv: (s - 2) // 2 - 2 >= 1 at s = 8.
    assert fm.min_size == 8
    fm.check_runs("s3", 8)
    assert fm.logits == "slogits"  # linear final Dense: its own output


def test_channels_first_cnn_matches_keras():
    model = build(_channels_first_cnn, seed=3)
    fm = from_keras(model)
    x = images(2, 16)
    acts = fm.features(x, "fout")
    names = ("f1", "fbn", "f2")
    refs = keras_outputs(
        model.input, [model.get_layer(n).output for n in names], x.transpose(0, 3, 1, 2)
    )
    for name, ref in zip(names, refs, strict=True):
        assert acts[name].shape[-1] == ref.shape[1]  # channels-last, as objectives read
        assert rel_err(acts[name], ref.transpose(0, 2, 3, 1)) <= TOL
    assert [fm.num_filters(n) for n in ("f1", "fbn", "fpool", "f2")] == [6, 6, 6, 5]
    # A channels-last delta lands on the right channels of the NCHW map.
    delta = np.random.default_rng(0).normal(size=acts["fpool"].shape).astype(np.float32)
    tapped = run(fm, x, "fout", {"fpool": delta})
    np.testing.assert_allclose(tapped["fpool"] - acts["fpool"], delta, atol=1e-5)
    head = keras.Model(model.get_layer("fpool").output, model.output)
    fed = (np.asarray(acts["fpool"]) + delta).transpose(0, 3, 1, 2)
    assert rel_err(tapped["fout"], head.predict(fed, verbose=0)) <= TOL


def test_nested_transfer_model_matches_keras(nested):
    outer, base, fm = nested
    x = images(2, 32)
    inner = outputs_of(base, ["block1_conv2", "block3_conv3", "block5_conv3"], "vgg16/")
    fed = keras_outputs(outer.input, [outer.get_layer("rescale").output], x)[0]
    check_layers(fm, x, inner, base.input, fed=fed)  # the inner model on the outer's input
    check_layers(fm, x, outputs_of(outer, ["rescale", "gap", "dense"]), outer.input)
    order = [la.name for la in fm.layers]
    assert order[:3] == ["rescale", "vgg16/block1_conv1", "vgg16/block1_conv2"]
    assert order[-3:] == ["vgg16", "gap", "dense"]
    assert fm.layer("vgg16/block5_conv3").pre and fm.num_filters("vgg16/block5_conv3") == 512
    assert fm.min_size == 32  # five 2x2 pools, found by bisection (free input size)
    assert fm.logits == "dense:pre" and fm.info.has_head


def _deeply_nested():
    block = keras.Sequential(
        [keras.Input((None, None, 4)), L.Conv2D(4, 3, activation="relu", name="conv")],
        name="block",
    )
    x = inp = keras.Input((None, None, 3))
    y = block(L.Conv2D(4, 1, name="stem")(x))
    middle = keras.Model(inp, L.Add(name="sum")([y, L.Conv2D(4, 3, name="side")(x)]), name="mid")
    return keras.Sequential([keras.Input((12, 12, 3)), middle, L.GlobalMaxPooling2D(name="gmp")])


def test_nested_models_are_named_recursively():
    outer = build(_deeply_nested, seed=8)
    fm = from_keras(outer)
    middle = outer.get_layer("mid")
    block = middle.get_layer("block")
    assert [la.name for la in fm.layers] == [
        "mid/stem", "mid/block/conv", "mid/block", "mid/side", "mid/sum", "mid", "gmp"
    ]  # fmt: skip
    assert fm.layer("mid/block/conv").pre and fm.min_size == 12
    x = images(2, 12)
    fed = keras_outputs(middle.input, [middle.get_layer("stem").output], x)[0]
    check_layers(fm, x, {"mid/block/conv": block.get_layer("conv").output}, block.inputs, fed=fed)
    check_layers(fm, x, outputs_of(middle, ["side", "sum"], "mid/"), middle.input)
    check_layers(fm, x, outputs_of(outer, ["gmp"]), outer.inputs)


def test_a_layer_called_twice_is_named_per_call():
    def make():
        conv = L.Conv2D(3, 3, padding="same", name="shared")
        x = inp = keras.Input((8, 8, 3))
        return keras.Model(inp, conv(L.ReLU(name="r")(conv(x))), name="twice")

    model = build(make, seed=9)
    fm = from_keras(model)
    assert [la.name for la in fm.layers] == ["shared", "r", "shared@1"]
    x = images(1, 8)
    check_layers(fm, x, {"r": model.get_layer("r").output, "shared@1": model.output}, model.input)


def test_resnet50_matches_keras_with_caffe_preprocessing():
    app = keras.applications.ResNet50
    model = build(lambda: app(weights=None, include_top=False, input_shape=(32, 32, 3)), seed=4)
    fm = from_keras(model, preprocess="caffe")
    x = images(2, 32)
    fed = keras.applications.imagenet_utils.preprocess_input(x * 255.0, mode="caffe")
    names = ["conv1_relu", "conv2_block1_add", "conv2_block3_out", "conv3_block1_out"]
    check_layers(fm, x, outputs_of(model, names), model.input, fed=fed)
    assert fm.info.preprocessing == "caffe" and fm.logits is None and not fm.info.has_head
    assert "guided_relu" in fm.taps  # every ReLU is Activation("relu")


def test_mobilenetv2_matches_keras_with_tf_preprocessing():
    app = keras.applications.MobileNetV2
    model = build(lambda: app(weights=None, include_top=False, input_shape=(32, 32, 3)), seed=5)
    fm = from_keras(model, preprocess="tf")
    x = images(2, 32)
    fed = keras.applications.mobilenet_v2.preprocess_input(x * 255.0)
    names = ["Conv1", "expanded_conv_project", "block_1_expand_relu", "block_2_add"]
    check_layers(fm, x, outputs_of(model, names), model.input, fed=fed)
    assert fm.taps == {"deltas", "select"}  # relu6 cannot be guided
    depthwise = {la.name for la in model.layers if isinstance(la, L.DepthwiseConv2D)}
    assert depthwise and fm.unsliceable == depthwise  # the plain Conv2Ds slice


def linear_copy(layer, input_shape):
    """A copy of ``layer`` with the same weights and a linear activation."""

    def make():
        copy = type(layer).from_config({**layer.get_config(), "activation": "linear"})
        copy.build(input_shape)
        return copy

    copy = build(make)
    copy.set_weights(layer.get_weights())
    return copy


def test_pre_is_the_linear_response(cnn):
    model, fm = cnn
    x = images(2, 24, seed=1)
    acts = run(fm, x, "out")
    tensors = [model.get_layer(n).output for n in ("relu", "flat")]
    relu, flat = keras_outputs(model.input, tensors, x)
    for name, fed in (("c1", x), ("c3", relu), ("out", flat)):
        linear = linear_copy(model.get_layer(name), fed.shape)
        assert rel_err(acts[name + ":pre"], linear(fed)) <= TOL
        assert not np.allclose(acts[name + ":pre"], acts[name])  # the activation does act
    assert "c2:pre" not in acts and not fm.layer("c2").pre  # linear activation: no :pre
    with pytest.raises(JaxvisError, match="unknown layer 'c2:pre'"):
        fm.apply(fm.params, jnp.asarray(x), "c2:pre")


def test_mixed_precision_computes_like_keras():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build(_functional_cnn, seed=6)
    finally:
        keras.config.set_dtype_policy("float32")
    fm = from_keras(model)
    assert fm.dtype == "bfloat16"
    x = images(2, 24, seed=2)
    acts = fm.features(x, "c3")
    # Keras eagerly, as features() runs: XLA's fusions under jit round bf16 differently.
    ref = keras.Model(model.input, model.get_layer("c3").output)(x, training=False)
    full = from_keras(build(_functional_cnn, seed=6)).features(x, "c3")["c3"]  # fp32
    assert acts["c3"].dtype == jnp.float32
    assert rel_err(acts["c3"], ref) <= TOL  # bf16 as Keras computes it
    assert rel_err(full, ref) > 1e-3  # which fp32 compute would not pass


# --- params, truncation ---------------------------------------------------------------


def test_params_are_arguments_not_constants(cnn):
    _, fm = cnn
    jaxpr = jax.make_jaxpr(lambda p, x: fm.apply(p, x, "out"))(fm.params, images(1, 24))
    assert not [c for c in jaxpr.consts if np.size(c) > 1]
    assert "c1/kernel" in fm.params and "bn/moving_mean" in fm.params
    assert fm.info.sha256 == keras_model.params_sha256(fm.params)
    assert fm.info.source == "keras-model" and fm.info.framework.startswith("keras 3.")


def names_up_to(fm, stop_at: str) -> set[str]:
    """The activation names of every layer up to ``stop_at``, ``:pre`` included."""
    names = set()
    for la in fm.layers:
        names |= {la.name, la.name + ":pre"} if la.pre else {la.name}
        if la.name == stop_at:
            return names
    raise AssertionError(stop_at)


def values(variables) -> list:
    return [v.value for v in variables]


def compiled_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def test_truncation_costs_no_more_than_a_truncated_keras_model(cnn):
    model, fm = cnn
    x = jnp.asarray(images(1, 24))
    names = ["c1", "bn", "drop", "flip", "pool"]
    sub = keras.Model(model.input, [model.get_layer(n).output for n in names])
    tv, ntv = values(sub.trainable_variables), values(sub.non_trainable_variables)
    acts = jax.eval_shape(lambda p, x: fm.apply(p, x, "pool"), fm.params, x)
    assert set(acts) == {"c1:pre", *names} == names_up_to(fm, "pool")  # stopped at pool

    def ref_one(tv, ntv, x):
        return sub.stateless_call(tv, ntv, x, training=False)[0][-1][..., 0].mean()

    def ref_all(tv, ntv, x):
        return sum(a.mean() for a in sub.stateless_call(tv, ntv, x, training=False)[0])

    def ours_one(p, x):
        return fm.apply(p, x, "pool")["pool"][..., 0].mean()

    def ours_all(p, x):
        return sum(a.mean() for a in fm.apply(p, x, "pool").values())

    mine = compiled_flops(ours_one, fm.params, x), compiled_flops(ours_all, fm.params, x)
    whole = compiled_flops(lambda p, x: fm.apply(p, x, "out")["out"].sum(), fm.params, x)
    one, every = compiled_flops(ref_one, tv, ntv, x), compiled_flops(ref_all, tv, ntv, x)
    assert abs(mine[0] / one - 1) < 0.05 and abs(mine[1] / every - 1) < 0.05
    assert whole > 3 * mine[1]  # the layers past pool are most of the network


def test_nested_truncation_costs_no_more_than_a_truncated_keras_model(nested):
    outer, base, fm = nested
    x = jnp.asarray(images(1, 32))
    layer = "vgg16/block2_conv2"
    inner = keras.Model(base.input, base.get_layer("block2_conv2").output)
    inp = keras.Input((None, None, 3))
    ref = keras.Model(inp, inner(L.Rescaling(2.0, offset=-1.0)(inp)))
    tv, ntv = values(ref.trainable_variables), values(ref.non_trainable_variables)

    def ref_one(tv, ntv, x):
        return ref.stateless_call(tv, ntv, x, training=False)[0][..., 0].mean()

    ours = compiled_flops(lambda p, x: fm.apply(p, x, layer)[layer][..., 0].mean(), fm.params, x)
    assert abs(ours / compiled_flops(ref_one, tv, ntv, x) - 1) < 0.05
    acts = jax.eval_shape(lambda p, x: fm.apply(p, x, layer), fm.params, x)
    assert set(acts) == names_up_to(fm, layer) and "vgg16/block2_pool" not in acts
    whole = compiled_flops(lambda p, x: fm.apply(p, x, "dense")["dense"].sum(), fm.params, x)
    assert whole > 2 * ours


# --- taps -------------------------------------------------------------------------------


def test_delta_gradient_equals_keras_head_gradient(cnn):
    model, fm = cnn
    x = jnp.asarray(images(2, 24, seed=3))
    acts = run(fm, x, "out")
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6)), jnp.float32)

    def ours(params, x, delta):  # the logits, weighted, with a delta on pool
        out = fm.apply(params, x, "out", Taps(deltas={"pool": delta}))
        return (out["out:pre"] * w).sum()

    head = keras.Model(model.get_layer("pool").output, model.get_layer("flat").output)
    tv, ntv = values(head.trainable_variables), values(head.non_trainable_variables)
    kernel, bias = model.get_layer("out").get_weights()

    def theirs(tv, ntv, a):  # Keras from pool to flat, then out's linear part
        flat = head.stateless_call(tv, ntv, a, training=False)[0]
        return ((flat @ kernel + bias) * w).sum()

    zero = jnp.zeros_like(acts["pool"])
    grad = jax.jit(jax.grad(ours, argnums=2))(fm.params, x, zero)
    want = jax.jit(jax.grad(theirs, argnums=2))(tv, ntv, acts["pool"])
    assert rel_err(grad, want) <= 1e-4 and float(jnp.abs(want).max()) > 0
    delta = 0.1 * jax.random.normal(jax.random.key(0), zero.shape)
    moved = run(fm, x, "out", {"pool": delta})
    full = keras.Model(model.get_layer("pool").output, model.output)
    assert rel_err(moved["out"], full.predict(np.asarray(acts["pool"] + delta), verbose=0)) <= TOL


def _one_relu_model():
    x = inp = keras.Input((10, 10, 3))
    x = L.Conv2D(6, 3, activation="relu", name="conv")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(4, name="head")(x)
    return keras.Model(inp, x, name="one_relu")


def test_guided_relu_masks_negative_gradients():
    fm = from_keras(build(_one_relu_model, seed=7))
    x = jnp.asarray(images(1, 10, seed=4))
    acts = run(fm, x, "head")

    def grads(guided: bool) -> dict:
        def target(deltas):
            return run(fm, x, "head", deltas, guided)["head"][0, 1]

        return jax.grad(target)({n: jnp.zeros_like(acts[n]) for n in ("conv:pre", "conv")})

    plain, guided = grads(False), grads(True)
    post = plain["conv"]  # nothing rectifies downstream, so guided's post gradient is plain's
    np.testing.assert_allclose(guided["conv"], post, atol=1e-7)
    on = acts["conv:pre"] > 0
    np.testing.assert_allclose(plain["conv:pre"], post * on, atol=1e-7)
    np.testing.assert_allclose(guided["conv:pre"], post * on * (post > 0), atol=1e-7)
    assert float(jnp.abs(guided["conv:pre"] - plain["conv:pre"]).max()) > 0


def test_guided_relu_changes_image_gradients(cnn):
    _, fm = cnn
    x = jnp.asarray(images(1, 24, seed=5))

    def grad(guided: bool):
        return jax.grad(lambda im: run(fm, im, "c3", guided=guided)["c3"][..., 1].mean())(x)

    np.testing.assert_array_equal(run(fm, x, "c3", guided=True)["c3"], run(fm, x, "c3")["c3"])
    plain = grad(False)
    assert float(jnp.abs(grad(True) - plain).max()) > 1e-3 * float(jnp.abs(plain).max())


def _convs(*, activation: str, after) -> keras.Model:
    x = inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, activation="relu")(x)
    return keras.Model(inp, after(L.Conv2D(4, 3, activation=activation)(x)))


@pytest.mark.parametrize(
    "rectifier",
    [L.LeakyReLU, lambda: L.ReLU(max_value=6.0), lambda: L.Activation("relu6"), L.ELU, L.PReLU],
    ids=["leaky", "relu6-layer", "relu6-act", "elu", "prelu"],
)
def test_guided_relu_absent_where_a_rectifier_cannot_be_intercepted(rectifier):
    fm = from_keras(build(lambda: _convs(activation="linear", after=rectifier())))
    assert fm.taps == {"deltas", "select"}


def test_guided_relu_absent_with_a_fused_relu6_or_a_custom_layer():
    class Scale(L.Layer):
        def call(self, x):
            return 2 * x

    fused = build(lambda: _convs(activation="relu6", after=lambda x: x))
    custom = build(lambda: _convs(activation="relu", after=Scale()))
    plain = build(lambda: _convs(activation="linear", after=L.ReLU()))
    assert from_keras(fused).taps == {"deltas", "select"}
    assert from_keras(custom).taps == {"deltas", "select"}
    assert from_keras(plain).taps == {"deltas", "guided_relu", "select"}


# --- engine, files ----------------------------------------------------------------------


def test_visualize_runs_and_second_call_traces_nothing(seq):
    _, fm = seq
    run = {"size": 32, "steps": 4}
    first = jaxvis.visualize(fm, "s2", range(4), **run)
    assert first.images.shape == (4, 32, 32, 3) and not first.failed
    prog = engine.program(fm, "s2", 32, presets.get("lucid"), steps=4)
    traces = prog.traces
    second = jaxvis.visualize(fm, "s2", range(4), **run)
    assert prog.traces == traces
    np.testing.assert_array_equal(first.images, second.images)


def test_load_keras_round_trip(cnn, tmp_path):
    model, fm = cnn
    path = tmp_path / "cnn.keras"
    model.save(path)
    loaded = load_keras(path, preprocess="torch")
    assert loaded.info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.info.path == str(path) and loaded.info.preprocessing == "torch"
    x = images(1, 24)
    plain = run(from_keras(model, preprocess="torch"), x, "out")["out"]
    np.testing.assert_allclose(run(loaded, x, "out")["out"], plain, atol=1e-6)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, JaxvisError) and "\n" not in message
    return message


def test_load_keras_refuses_lambda_and_bad_files(tmp_path):
    x = inp = keras.Input((8, 8, 3))
    x = L.Lambda(lambda t: t * 2.0)(L.Conv2D(2, 3)(x))
    path = tmp_path / "lambda.keras"
    keras.Model(inp, x).save(path)
    with pytest.raises(JaxvisError) as err:
        load_keras(path)
    assert "Lambda" in one_line(err) and "safe mode" in one_line(err)
    with pytest.raises(JaxvisError, match="no Keras model file") as err:
        load_keras(tmp_path / "missing.keras")
    one_line(err)
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    with pytest.raises(JaxvisError, match="is not a Keras model file") as err:
        load_keras(junk)
    one_line(err)


# --- errors -----------------------------------------------------------------------------


def test_errors_for_models_without_one_usable_graph():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    sub = Sub()
    with pytest.raises(JaxvisError, match="subclassed keras.Model.*Functional API") as err:
        from_keras(sub)  # unbuilt, and no graph even once built
    one_line(err)
    sub(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(JaxvisError, match="subclassed keras.Model.*Functional API") as err:
        from_keras(sub)
    one_line(err)
    with pytest.raises(JaxvisError, match="not built") as err:
        from_keras(keras.Sequential([L.Conv2D(2, 3)]))
    one_line(err)
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    with pytest.raises(JaxvisError, match="2 inputs") as err:
        from_keras(keras.Model([a, b], L.Add()([a, b])))
    one_line(err)
    u8 = keras.Input((8, 8, 3), dtype="uint8")
    with pytest.raises(JaxvisError, match="uint8 inputs") as err:
        from_keras(keras.Model(u8, L.Conv2D(2, 3)(L.Rescaling(1 / 255)(u8))))
    one_line(err)
    with pytest.raises(JaxvisError, match="needs a keras.Model"):
        from_keras("model.keras")
    gray = keras.Input((8, 8, 1))
    with pytest.raises(JaxvisError, match="1-channel inputs.*only 3-channel") as err:
        from_keras(keras.Model(gray, L.Conv2D(2, 3)(gray)))
    one_line(err)


def test_errors_for_layers_and_sizes(cnn):
    _, fm = cnn
    with pytest.raises(JaxvisError, match="unknown layer 'nope' for cnn; valid layers: c1, bn"):
        fm.features(images(1, 24), "nope")
    with pytest.raises(JaxvisError, match="built for 24x24 px") as err:
        fm.check_runs("out", 32)  # Flatten + Dense need the declared size
    assert "layer 'out' (Dense) failed" in one_line(err)
    fm.check_runs("c3", 32)  # the convolutions alone run at any size

    def make():
        x = inp = keras.Input((8, 8, 3))
        x = L.Reshape((36, 4), name="seq")(L.Conv2D(4, 3)(x))
        return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D(name="gap1d")(x)))

    odd = from_keras(build(make))
    names = [la.name for la in odd.layers]
    assert "seq" not in names and "seq" in odd.unavailable and "gap1d" in names
    with pytest.raises(JaxvisError, match=r"'seq' has output shape \('N', 36, 4\)") as err:
        odd.layer("seq")
    one_line(err)


def test_errors_without_keras_or_its_jax_backend(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(JaxvisError, match="KERAS_BACKEND=jax") as err:
        from_keras(None)
    one_line(err)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(JaxvisError, match=r'pip install "jaxvis\[keras\]"'):
        from_keras(None)


def test_tiling_max_pools_skip_reduce_window_and_match_keras():
    """A MaxPooling2D whose windows tile its input runs as reshape-and-max, whose gradient
    is cheap on XLA:CPU (benchmarks/README.md); an overlapping one stays Keras's own.
    Both equal Keras's values, channels_last and channels_first."""
    for fmt in ("channels_last", "channels_first"):

        def make(fmt=fmt):
            shape = (9, 9, 3) if fmt == "channels_last" else (3, 9, 9)
            x = inp = keras.Input(shape)
            x = L.Conv2D(4, 3, padding="same", data_format=fmt, name="c")(x)
            x = L.MaxPooling2D(2, data_format=fmt, name="tiled")(x)
            return keras.Model(inp, L.MaxPooling2D(3, 2, data_format=fmt, name="overlap")(x))

        km = build(make)
        fm = from_keras(km)
        x = images(2, 9)
        first = fmt == "channels_first"
        fed = x.transpose(0, 3, 1, 2) if first else x
        names = ("tiled", "overlap")
        refs = keras_outputs(km.input, [km.get_layer(n).output for n in names], fed)
        acts = fm.features(x, "overlap")
        for name, ref in zip(names, refs, strict=True):
            assert rel_err(acts[name], ref.transpose(0, 2, 3, 1) if first else ref) <= TOL

        def tiled_sum(im, fm=fm):
            return fm.apply(fm.params, im, "tiled")["tiled"].sum()

        grad = str(jax.make_jaxpr(jax.grad(tiled_sum))(jnp.asarray(x)))
        assert "reduce_window" not in grad and "select_and_scatter" not in grad
        full = str(jax.make_jaxpr(lambda im, fm=fm: fm.apply(fm.params, im, "overlap"))(x))
        assert "reduce_window" in full  # the overlapping pool: Keras's own op
