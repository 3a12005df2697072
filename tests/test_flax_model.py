"""from_flax: any linen or NNX model as a FeatureModel.

References are independent of the adapter: convolutions and batch norm written by hand
with ``lax``, the model's own submodules called by hand, and hand-truncated copies of the
models for XLA's FLOP count.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxvis
from jaxvis import engine, objectives, presets
from jaxvis.errors import JaxvisError
from jaxvis.models.flax_model import from_flax
from jaxvis.models.taps import Taps

EVAL = {"train": False}
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)  # Keras imagenet_utils.py
LINEN_LAYERS = [
    ("Conv_0", "conv", 8),
    ("block/conv", "conv", 16),
    ("block/bn", "other", 16),
    ("block", "other", 16),
    ("Conv_1", "conv", 24),
    ("Dropout_0", "other", 24),
    ("Dense_0", "dense", 10),
    ("output", "other", 10),
]
NNX_LAYERS = [
    ("conv1", "conv", 8),
    ("block/conv", "conv", 16),
    ("block/bn", "other", 16),
    ("block", "other", 16),
    ("layers/0", "conv", 24),
    ("drop", "other", 24),
    ("head", "dense", 10),
    ("output", "other", 10),
]


# --- the models -----------------------------------------------------------------------


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(self.features, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.relu(x)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = Block(16, name="block")(x, train)
        x = nn.relu(nn.Conv(24, (3, 3), strides=(2, 2))(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class LinenTruncated(nn.Module):
    """LinenCNN cut by hand after ``block/conv``."""

    @nn.compact
    def __call__(self, x):
        return nn.Conv(16, (3, 3), name="conv")(nn.relu(nn.Conv(8, (3, 3), name="c0")(x)))


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(8, 16, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class NnxCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.block = NnxBlock(rngs)
        self.layers = nnx.List([nnx.Conv(16, 24, (3, 3), strides=2, rngs=rngs)])
        self.drop = nnx.Dropout(0.5, deterministic=True, rngs=rngs)
        self.head = nnx.Linear(24, 10, rngs=rngs)

    def __call__(self, x):
        x = self.block(nnx.relu(self.conv1(x)))
        x = self.drop(nnx.relu(self.layers[0](x)))
        return self.head(x.mean(axis=(1, 2)))


class NnxTruncated(nnx.Module):
    """NnxCNN cut by hand after ``block/conv`` (sharing its convs)."""

    def __init__(self, model: NnxCNN):
        self.conv1, self.conv = model.conv1, model.block.conv

    def __call__(self, x):
        return self.conv(nnx.relu(self.conv1(x)))


def numpy_init(abstract, seed: int):
    """Random weights of the given shapes, scaled by 1/sqrt(fan-in), made with numpy:
    flax's initializers, run eagerly, compile every op and cost ~10 s of CPU here."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
        return jnp.asarray(rng.normal(size=leaf.shape).astype(np.float32) / np.sqrt(fan_in))

    return jax.tree_util.tree_map(fill, abstract)


def _batch_stats(seed, channels):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=channels).astype(np.float32)
    return jnp.asarray(mean), jnp.asarray(rng.uniform(0.5, 1.5, channels).astype(np.float32))


@pytest.fixture(scope="module")
def linen():
    net = LinenCNN()
    shapes = jax.eval_shape(
        lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    variables = numpy_init(shapes, 0)
    mean, var = _batch_stats(1, 16)
    variables["batch_stats"]["block"]["bn"] = {"mean": mean, "var": var}
    return net, variables, from_flax(net, variables, method_kwargs=EVAL)


@pytest.fixture(scope="module")
def nnx_net():
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: NnxCNN(nnx.Rngs(0))))
    net = nnx.merge(graphdef, numpy_init(shapes, 2))
    mean, var = _batch_stats(3, 16)
    net.block.bn.mean.set_value(mean)
    net.block.bn.var.set_value(var)
    return net, from_flax(net)


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))


# --- hand-written references ----------------------------------------------------------


def conv(x, kernel, bias, stride=1):
    y = jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + bias


def batch_norm(x, mean, var, scale, bias, eps=1e-5):  # flax's default epsilon
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def linen_reference(v, x):
    """The LinenCNN forward pass by hand: {layer: activation} for four layers."""
    p, s = v["params"], v["batch_stats"]
    c0 = conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
    bc = conv(jax.nn.relu(c0), p["block"]["conv"]["kernel"], p["block"]["conv"]["bias"])
    bn = batch_norm(bc, **s["block"]["bn"], **p["block"]["bn"])
    c1 = conv(jax.nn.relu(bn), p["Conv_1"]["kernel"], p["Conv_1"]["bias"], stride=2)
    out = jax.nn.relu(c1).mean(axis=(1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    return {"Conv_0": c0, "block/bn": bn, "Conv_1": c1, "output": out}


# --- layers, names, provenance ----------------------------------------------------------


def test_linen_layers_names_and_provenance(linen):
    net, variables, model = linen
    assert [(la.name, la.kind, la.num_filters) for la in model.layers] == LINEN_LAYERS
    assert not any(la.pre for la in model.layers)
    assert model.name == "LinenCNN" and model.logits == "output"
    assert model.taps == frozenset({"deltas", "select"})
    assert set(model.params["params"]) == {"Conv_0", "block", "Conv_1", "Dense_0"}
    info = model.info
    assert (info.source, info.preprocessing) == ("flax-model", "none")
    assert info.has_head and info.trained
    assert info.framework == f"flax {flax.__version__}"
    again = from_flax(net, variables, name="mine", method_kwargs=EVAL, layers=["Conv_0"])
    assert again.info.sha256 == info.sha256 and again.name == "mine"
    changed = jax.tree_util.tree_map(lambda a: a, variables)
    changed["params"]["Conv_0"]["bias"] = changed["params"]["Conv_0"]["bias"].at[0].add(1e-3)
    assert from_flax(net, changed, method_kwargs=EVAL).info.sha256 != info.sha256


def test_nnx_layers_names_and_provenance(nnx_net):
    net, model = nnx_net
    assert [(la.name, la.kind, la.num_filters) for la in model.layers] == NNX_LAYERS
    assert model.name == "NnxCNN" and model.logits == "output"
    assert model.info.sha256 == from_flax(net).info.sha256
    assert len(model.info.sha256) == 64


def test_restricted_layers_and_no_head(linen):
    net, variables, _ = linen
    model = from_flax(net, variables, layers=["block/conv", "Conv_0"], method_kwargs=EVAL)
    assert [la.name for la in model.layers] == ["Conv_0", "block/conv"]
    assert model.logits is None and not model.info.has_head
    with pytest.raises(JaxvisError, match="unknown layer 'Conv_1'.*valid layers: Conv_0, blo"):
        model.layer("Conv_1")


# --- numerics -----------------------------------------------------------------------------


def test_linen_activations_match_hand_forward_and_flax(linen, images):
    net, variables, model = linen
    assert list(model.features(images, "block/bn")) == ["Conv_0", "block/conv", "block/bn"]
    acts = model.features(images, "output")
    assert list(acts) == [name for name, _, _ in LINEN_LAYERS]
    assert all(a.dtype == jnp.float32 for a in acts.values())
    for name, ref in linen_reference(variables, images).items():
        assert rel_err(acts[name], ref) <= 1e-5, name
    # Every layer against flax's own capture of the full model.
    _, state = net.apply(
        variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    inter = state["intermediates"]
    assert rel_err(acts["block"], inter["block"]["__call__"][0]) <= 1e-5
    assert rel_err(acts["Dense_0"], inter["Dense_0"]["__call__"][0]) <= 1e-5


def test_nnx_activations_match_submodules_called_by_hand(nnx_net, images):
    net, model = nnx_net
    assert list(model.features(images, "block")) == ["conv1", "block/conv", "block/bn", "block"]
    acts = model.features(images, "output")
    assert list(acts) == [name for name, _, _ in NNX_LAYERS]
    k, b = net.conv1.kernel.get_value(), net.conv1.bias.get_value()
    c1 = conv(images, k, b)  # lax by hand
    bc = net.block.conv(jax.nn.relu(c1))
    bn = net.block.bn(bc)
    c2 = net.layers[0](jax.nn.relu(bn))
    out = net.head(jax.nn.relu(c2).mean(axis=(1, 2)))
    expect = {"conv1": c1, "block/conv": bc, "block/bn": bn, "layers/0": c2, "output": out}
    for name, ref in expect.items():
        assert rel_err(acts[name], ref) <= 1e-5, name


def test_named_preprocessing_is_applied_inside(linen, images):
    net, variables, _ = linen
    model = from_flax(net, variables, preprocess="caffe", method_kwargs=EVAL)
    assert model.info.preprocessing == "caffe"
    bgr = images[..., ::-1] * 255.0 - CAFFE_MEAN_BGR  # by hand, not via conventions.py
    p = variables["params"]["Conv_0"]
    got = model.features(images, "Conv_0")["Conv_0"]
    assert rel_err(got, conv(bgr, p["kernel"], p["bias"])) <= 1e-5


def _consts(closed):
    """Every constant of a jaxpr and of the jaxprs nested in it (inner jits included)."""
    found = list(closed.consts)
    for eqn in closed.jaxpr.eqns:
        for param in eqn.params.values():
            if hasattr(param, "jaxpr") and hasattr(param, "consts"):
                found += _consts(param)
    return found


def test_params_are_arguments_not_constants(linen, nnx_net, images):
    for model in (linen[2], nnx_net[1]):
        apply = lambda p, x, m=model: m.apply(p, x, "output")  # every weight is used
        consts = _consts(jax.make_jaxpr(apply)(model.params, images))
        assert all(np.size(c) <= 8 for c in consts), [np.shape(c) for c in consts]


class DoubledConv(nn.Conv):
    def __call__(self, x):
        return 2.0 * super().__call__(x)


class SharedLinen(nn.Module):
    def setup(self):
        self.conv = nn.Conv(3, (3, 3))
        self.head = DoubledConv(4, (3, 3))

    def __call__(self, x):
        return self.head(self.conv(self.conv(x)))


class NnxDoubledConv(nnx.Conv):
    def __call__(self, x):
        return 2.0 * super().__call__(x)


class SharedNnx(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 3, (3, 3), rngs=rngs)
        self.head = NnxDoubledConv(3, 4, (3, 3), rngs=rngs)

    def __call__(self, x):
        return self.head(self.conv(self.conv(x)))


def test_super_call_is_one_call_and_shared_modules_are_left_out(images):
    """``head`` calls ``super().__call__``: one layer, its outermost output. ``conv`` runs
    twice (shared weights): no single output, so it is no layer."""
    x = images[:, :8, :8]
    variables = numpy_init(jax.eval_shape(SharedLinen().init, jax.random.key(0), x), 0)
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: SharedNnx(nnx.Rngs(0))))
    state = numpy_init(shapes, 0)
    for model, p in [
        (from_flax(SharedLinen(), variables), variables["params"]),
        (from_flax(nnx.merge(graphdef, state)), nnx.to_pure_dict(state)),
    ]:
        assert [la.name for la in model.layers] == ["head", "output"]
        c, h = p["conv"], p["head"]
        expect = 2.0 * conv(conv(conv(x, **c), **c), **h)
        assert rel_err(model.features(x, "head")["head"], expect) <= 1e-5


# --- truncation: nothing past stop_at is computed ---------------------------------------


def flops(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


def assert_truncated(model, layer, truncated_flops, images):
    objective = objectives.channel(layer, 3)
    ours = flops(lambda p, x: objective(model.apply(p, x, layer), x, 0), model.params, images)
    full = flops(lambda p, x: model.apply(p, x, "output")["output"].sum(), model.params, images)
    assert abs(ours - truncated_flops) <= 0.05 * truncated_flops, (ours, truncated_flops)
    assert full > 1.2 * truncated_flops  # so a model that ran to the end would fail


def test_linen_truncation_costs_what_a_truncated_model_costs(linen, images):
    _, variables, model = linen
    p = variables["params"]
    cut = {"params": {"c0": p["Conv_0"], "conv": p["block"]["conv"]}}
    hand = flops(lambda v, x: LinenTruncated().apply(v, x)[..., 3].mean(), cut, images)
    assert_truncated(model, "block/conv", hand, images)


def test_nnx_truncation_costs_what_a_truncated_model_costs(nnx_net, images):
    net, model = nnx_net
    graphdef, state = nnx.split(NnxTruncated(net))
    hand = flops(lambda s, x: nnx.merge(graphdef, s)(x)[..., 3].mean(), state, images)
    assert_truncated(model, "block/conv", hand, images)


# --- taps: deltas ------------------------------------------------------------------------


def test_linen_delta_gradient_equals_hand_downstream_gradient(linen, images):
    _, v, model = linen
    p, s = v["params"], v["batch_stats"]
    a = model.apply(model.params, images, "block/conv")["block/conv"]

    def downstream(a):  # block/conv -> Conv_1 channel 2, by hand
        bn = batch_norm(a, **s["block"]["bn"], **p["block"]["bn"])
        c1 = conv(jax.nn.relu(bn), p["Conv_1"]["kernel"], p["Conv_1"]["bias"], stride=2)
        return c1[..., 2].mean()

    def through_model(delta):
        out = model.apply(model.params, images, "Conv_1", Taps({"block/conv": delta}))
        return out["Conv_1"][..., 2].mean()

    grad = jax.jit(jax.grad(through_model))(jnp.zeros_like(a))
    expect = jax.jit(jax.grad(downstream))(a)
    assert np.abs(expect).max() > 0
    assert rel_err(grad, expect) <= 1e-5
    # A nonzero delta shows up in the named activation and changes what follows it.
    delta = jnp.ones_like(a)
    moved = model.apply(model.params, images, "Conv_1", Taps({"block/conv": delta}))
    assert rel_err(moved["block/conv"], a + delta) <= 1e-6
    assert rel_err(moved["Conv_1"][..., 2].mean(), downstream(a + delta)) <= 1e-5


def test_nnx_delta_gradient_equals_hand_downstream_gradient(nnx_net, images):
    net, model = nnx_net
    a = model.apply(model.params, images, "block/conv")["block/conv"]

    def downstream(a):  # block/conv -> layers/0 channel 2, submodules called by hand
        return net.layers[0](jax.nn.relu(net.block.bn(a)))[..., 2].mean()

    def through_model(delta):
        out = model.apply(model.params, images, "layers/0", Taps({"block/conv": delta}))
        return out["layers/0"][..., 2].mean()

    grad = jax.jit(jax.grad(through_model))(jnp.zeros_like(a))
    expect = jax.jit(jax.grad(downstream))(a)
    assert np.abs(expect).max() > 0
    assert rel_err(grad, expect) <= 1e-5
    moved = model.apply(model.params, images, "layers/0", Taps({"block/conv": a * 0 + 1}))
    assert rel_err(moved["block/conv"], a + 1) <= 1e-6


# --- the engine -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["linen", "nnx"])
def test_visualize_runs_and_second_call_traces_nothing(which, linen, nnx_net):
    model = linen[2] if which == "linen" else nnx_net[1]
    run = dict(size=32, steps=4)
    first = jaxvis.visualize(model, "block/conv", range(4), **run)
    assert first.images.shape == (4, 32, 32, 3) and np.isfinite(first.objective).all()
    prog = engine.program(model, "block/conv", 32, presets.get("lucid"), steps=4)
    traces = prog.traces
    again = jaxvis.visualize(model, "block/conv", [5, 1], **run)
    assert prog.traces == traces and again.compile_seconds == 0.0


# --- errors: one line each ------------------------------------------------------------------


class Gray(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (3, 3))(x)


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_errors(linen, nnx_net, images, monkeypatch):
    net, variables, model = linen
    cases = [
        (lambda: from_flax(lambda x: x), "needs a flax.linen.Module .* or a flax.nnx.Module"),
        (lambda: from_flax(net), "linen module needs its variables"),
        (lambda: from_flax(nnx_net[0], variables), "holds its own state; pass variables=None"),
        (lambda: model.layer("Conv_9"), "unknown layer 'Conv_9'.*valid layers: Conv_0, "),
        (lambda: model.features(images, "Conv_9"), "unknown layer 'Conv_9'"),
        (
            lambda: from_flax(net, variables, layers=["Conv_0", "relu"], method_kwargs=EVAL),
            "layers= names 'relu', which LinenCNN does not produce; valid layers: Conv_0, b",
        ),
        (
            lambda: model.apply(model.params, (images * 255).astype(jnp.uint8), "Conv_0"),
            "images must be float .* got dtype uint8",
        ),
        (
            lambda: model.apply(model.params, images, "Conv_0", Taps({"nope": images})),
            "a delta for 'nope', which is no layer of LinenCNN",
        ),
    ]
    gray_vars = numpy_init(jax.eval_shape(Gray().init, jax.random.key(0), images[..., :1]), 0)
    cases.append((lambda: from_flax(Gray(), gray_vars), "'Conv_0' expects 1 input channels"))
    graphdef, shapes = nnx.split(
        nnx.eval_shape(lambda: nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0))))
    )
    gray_nnx = nnx.merge(graphdef, numpy_init(shapes, 0))
    cases.append((lambda: from_flax(gray_nnx), "'layers/0' expects 1 input channels"))
    for call, message in cases:
        with pytest.raises(JaxvisError, match=message) as excinfo:
            call()
        _one_line(excinfo)
    monkeypatch.delattr(nnx, "capture")
    with pytest.raises(JaxvisError, match=r"needs nnx.capture.*flax>=0\.12\.8") as excinfo:
        from_flax(nnx_net[0])
    _one_line(excinfo)
