"""3x3 convs by a measured formulation (jaxvis/conv_tune.py): the rewrite reaches the
compiled program, computes what lax.conv computes, and the per-CPU choice is cached."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvis
from jaxvis import cli, conv_tune, engine, presets
from jaxvis.errors import JaxvisError
from jaxvis.models.taps import Taps

LAYER, SIZE = "block3_conv1", 32
SMALL = "block2_conv1"  # where a test compiles Winograd convs: they compile slowly


@pytest.fixture(scope="module")
def model():
    return jaxvis.vgg16(None)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "convs.json"
    monkeypatch.setenv("JAXVIS_CONV_CACHE", str(path))
    return path


def _images(n=1, size=SIZE):
    return jnp.asarray(np.random.default_rng(3).random((n, size, size, 3)), jnp.float32)


def _every(model, form, x, stop_at=SMALL):
    shapes = conv_tune.conv_shapes(model.apply, model.params, x, stop_at)
    return conv_tune.Formed(model.apply, tuple((s, form) for s in shapes))


def test_finds_every_3x3_conv_shape(model):
    shapes = conv_tune.conv_shapes(model.apply, model.params, _images(2), LAYER)
    assert shapes == [
        (2, 32, 32, 3, 64),
        (2, 32, 32, 64, 64),
        (2, 16, 16, 64, 128),
        (2, 16, 16, 128, 128),
        (2, 8, 8, 128, 256),
    ]
    one = Taps(select={LAYER: jnp.int32(5)})  # the sliced target conv has one output
    assert conv_tune.conv_shapes(model.apply, model.params, _images(2), LAYER, one)[-1] == (
        2, 8, 8, 128, 1,
    )  # fmt: skip


@pytest.mark.parametrize("form", ["winograd", "im2col"])
def test_formed_model_matches_lax_forward_and_input_gradient(model, form):
    x = _images()
    formed = _every(model, form, x)

    def objective(apply):
        return lambda x: (apply(model.params, x, SMALL)[SMALL + ":pre"] ** 2).mean()

    stock_v, stock_g = jax.jit(jax.value_and_grad(objective(model.apply)))(x)
    lowered = jax.jit(jax.value_and_grad(objective(formed))).lower(x)
    assert lowered.as_text().count("stablehlo.convolution") == 0  # every conv was replaced
    v, g = lowered.compile()(x)
    assert abs(float(v - stock_v)) <= 1e-5 * abs(float(stock_v))
    assert float(jnp.abs(g - stock_g).max()) <= 1e-5 * float(jnp.abs(stock_g).max())
    # A wrong formulation (a kernel flipped left-right) is far outside that bound.
    flipped = jax.tree_util.tree_map(lambda a: a, model.params)
    flipped["block1_conv2"]["kernel"] = flipped["block1_conv2"]["kernel"][:, ::-1]
    wrong = model.apply(flipped, x, SMALL)[SMALL + ":pre"]
    right = formed(model.params, x, SMALL)[SMALL + ":pre"]
    assert float(jnp.abs(wrong - right).max()) > 1e-2 * float(jnp.abs(right).max())


def test_only_the_named_shapes_change_and_jit_calls_are_reached():
    """Convs inside a jit call are rewritten; a 5x5 conv and a shape not named stay."""
    rng = np.random.default_rng(0)
    k3 = jnp.asarray(rng.standard_normal((3, 3, 16, 16)), jnp.float32)
    k5 = jnp.asarray(rng.standard_normal((5, 5, 16, 16)), jnp.float32)
    conv = jax.jit(lambda x, k: conv_tune.FORMS["lax"](x, k))

    def apply(params, x, stop_at):
        a = conv(x, params["k3"])
        b = jax.lax.conv_general_dilated(
            a, params["k5"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        c = conv_tune.FORMS["lax"](b[:, ::2, ::2], params["k3"])
        return {"out": c}

    params = {"k3": k3, "k5": k5}
    x = jnp.asarray(rng.standard_normal((1, 16, 16, 16)), jnp.float32)
    assert conv_tune.conv_shapes(apply, params, x, "out") == [
        (1, 16, 16, 16, 16),
        (1, 8, 8, 16, 16),
    ]
    formed = conv_tune.Formed(apply, (((1, 16, 16, 16, 16), "winograd"),))
    text = jax.jit(lambda x: formed(params, x, "out")["out"]).lower(x).as_text()
    assert text.count("stablehlo.convolution") == 2  # the 5x5 and the 8x8 one
    want = apply(params, x, "out")["out"]
    got = formed(params, x, "out")["out"]
    assert float(jnp.abs(got - want).max()) <= 1e-5 * float(jnp.abs(want).max())


def test_engine_program_with_forms_gives_the_stock_objective(model):
    """The vmapped, one-channel engine block with Winograd convs: same values, to 1e-4
    after one block (two steps)."""
    config = presets.get("keras-vis")
    stock = engine.program(model, SMALL, SIZE, config, steps=2)
    forms = conv_tune.everywhere(stock, model.params, "winograd")
    assert [s for s, _ in forms][-1] == (1, 16, 16, 64, 1)  # the sliced target conv too
    formed = engine.program(model, SMALL, SIZE, config, steps=2, convs=forms)
    assert formed is not stock and formed.ascent.select
    keys = jax.random.split(jax.random.key(0), 2)
    units = jnp.asarray([3, 9], jnp.int32)
    values = [
        np.asarray(p.block(model.params, p.init(keys), keys, units, jnp.int32(0))[1])
        for p in (stock, formed)
    ]
    np.testing.assert_allclose(values[1], values[0], rtol=1e-4, atol=1e-6)


def test_pick_needs_the_margin():
    assert conv_tune.pick({"lax": 1.0, "winograd": 0.95, "im2col": 0.99}) == "lax"
    assert conv_tune.pick({"lax": 1.0, "winograd": 0.5, "im2col": 0.8}) == "winograd"
    assert conv_tune.pick({"lax": 0.5, "winograd": 0.4, "im2col": 0.6}) == "winograd"


def test_measure_times_every_form_on_a_small_shape():
    seconds = conv_tune.measure((1, 8, 8, 16, 16), rounds=1)
    assert set(seconds) == set(conv_tune.FORMS) and all(0 < s < 10 for s in seconds.values())


def _fake_measure(monkeypatch, seconds):
    calls = []

    def measure(shape, rounds=conv_tune.ROUNDS):
        calls.append(shape)
        return dict(seconds)

    monkeypatch.setattr(conv_tune, "measure", measure)
    return calls


def test_a_small_job_measures_nothing(model, cache, monkeypatch):
    calls = _fake_measure(monkeypatch, {"lax": 1.0, "winograd": 0.1, "im2col": 1.0})
    prog = engine.program(model, LAYER, SIZE, presets.get("keras-vis"), steps=2)
    assert conv_tune.choose(prog, model.params, SIZE, 4) == ()
    assert calls == [] and not cache.exists()


def test_measures_once_then_reads_the_cache(model, cache, monkeypatch):
    monkeypatch.setattr(conv_tune, "MIN_WORK", 1)
    calls = _fake_measure(monkeypatch, {"lax": 1.0, "winograd": 0.5, "im2col": 0.8})
    prog = engine.program(model, LAYER, SIZE, presets.get("keras-vis"), steps=2)
    notes = []
    forms = conv_tune.choose(prog, model.params, SIZE, 4, notes.append)
    # block1_conv1 (3 input channels) and the sliced target conv (1 output) stay lax.
    assert [s for s, _ in forms] == [
        (1, 32, 32, 64, 64), (1, 16, 16, 64, 128), (1, 16, 16, 128, 128),
    ]  # fmt: skip
    assert {f for _, f in forms} == {"winograd"} and len(calls) == 3 and len(notes) == 2
    entries = json.loads(cache.read_text())
    assert all(e["form"] == "winograd" and e["seconds"]["lax"] == 1.0 for e in entries.values())
    monkeypatch.setattr(conv_tune, "MIN_WORK", 10**12)  # now too small to measure: read
    assert conv_tune.choose(prog, model.params, SIZE, 4) == forms and len(calls) == 3


def test_a_cache_entry_naming_no_formulation_is_ignored(model, cache, monkeypatch):
    prog = engine.program(model, LAYER, SIZE, presets.get("keras-vis"), steps=2)
    shape = (1, 32, 32, 64, 64)
    cache.write_text(json.dumps({conv_tune.cache_key(shape): {"form": "os.system"}}))
    assert conv_tune.known(shape) is None
    assert conv_tune.choose(prog, model.params, SIZE, 4) == ()
    cache.write_text("not json")
    assert conv_tune.known(shape) is None


def test_visualize_with_winograd_matches_lax(model):
    run = dict(size=SIZE, steps=2, preset="keras-vis", seed=1)
    a = jaxvis.visualize(model, SMALL, [0, 7], convs="lax", **run)
    b = jaxvis.visualize(model, SMALL, [0, 7], convs="winograd", **run)
    np.testing.assert_allclose(b.history, a.history, rtol=1e-3)
    assert np.abs(b.images.astype(int) - a.images).max() <= 2


def test_bad_settings_are_one_line(model, capsys):
    with pytest.raises(JaxvisError, match="unknown convs setting 'fast'; valid: auto, lax"):
        jaxvis.visualize(model, LAYER, [0], size=SIZE, steps=2, convs="fast")
    assert list(conv_tune.SETTINGS) == cli.CONVS
    with pytest.raises(SystemExit) as e:
        cli.main(["atlas", "--layers", LAYER, "--out", "x.h5", "--convs", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--convs" in err and "invalid choice" in err and "Traceback" not in err
