"""The batched engine: ascent works, vmap equals the loop, no retrace, determinism."""

import dataclasses
import os
import re
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxvis
from jaxvis import engine, keys, objectives, presets

SMALL = dict(size=32, steps=8)


def assert_same_curves(a, b, frac=0.01):
    """Objective curves agree to ``frac`` of their scale.

    Differently shaped programs (chunk sizes, scan vs unrolled blocks, sharding) round
    differently, and Adam carries that forward; values near zero make rtol useless.
    A wrong unit or key gives curves that differ by their whole scale.
    """
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= frac * np.abs(b).max(), np.abs(a - b).max()


@pytest.fixture(scope="module")
def random_vgg():
    return jaxvis.vgg16(None, seed=1)


def test_objective_rises(imagenet_vgg):
    res = jaxvis.visualize(imagenet_vgg, "block2_conv1", [3, 40], size=48, steps=24)
    first, last = res.history[:, :4].mean(axis=1), res.history[:, -4:].mean(axis=1)
    assert (last > first + 0.1 * np.abs(first) + 1e-3).all(), (first, last)
    # The final objective (no transforms) beats the objective of the initial image.
    assert (res.objective > first).all()


def test_vmap_equals_python_loop_over_run_one(random_vgg):
    units = [0, 5, 9]
    res = jaxvis.visualize(random_vgg, "block1_conv2", units, batch=3, **SMALL)
    prog = engine.program(random_vgg, "block1_conv2", 32, presets.get("lucid"), steps=8)
    run_one = jax.jit(prog.ascent.run_one)

    def picture(key, unit):
        image, value, history = run_one(random_vgg.params, key, jnp.int32(unit))
        return np.round(np.clip(np.asarray(image[0]), 0, 1) * 255), value, history

    # run_one (lax.scan) and the engine (vmapped, unrolled blocks) are different XLA
    # programs, so rounding differs slightly and Adam carries it forward: how far
    # depends on the CPU's code (one x86 CPU gave a mean of 0.8 levels, max 7, for
    # unit 0 and under 0.02 for the others). The bar is set by what a wrong key does
    # to the same unit's picture (6.5 levels there; a wrong unit gave 15).
    wrong_key, _, _ = picture(keys.unit_key(1, "block1_conv2", units[0]), units[0])
    bar = 0.25 * np.abs(res.images[0].astype(int) - wrong_key).mean()
    for i, unit in enumerate(units):
        expect, value, history = picture(keys.unit_key(0, "block1_conv2", unit), unit)
        assert_same_curves(res.history[i], history)
        assert_same_curves(res.objective[i], value)
        assert np.abs(res.images[i].astype(int) - expect).mean() < bar, (unit, bar)


def test_second_call_does_not_retrace(random_vgg):
    jaxvis.visualize(random_vgg, "block1_conv1", [0, 1], batch=2, **SMALL)
    prog = engine.program(random_vgg, "block1_conv1", 32, presets.get("lucid"), steps=8)
    traces = prog.traces
    again = jaxvis.visualize(random_vgg, "block1_conv1", [7, 3], batch=2, **SMALL)
    assert prog.traces == traces
    assert again.compile_seconds == 0.0
    # A last chunk that is not full is padded and masked, not recompiled.
    ragged = jaxvis.visualize(random_vgg, "block1_conv1", [1, 2, 4], batch=2, **SMALL)
    assert prog.traces == traces
    assert list(ragged.filters) == [1, 2, 4]


def _instructions(hlo: str) -> list[str]:
    """The instructions of an optimized HLO text, with names, metadata and attributes
    that only say where an op came from taken out."""
    hlo = re.sub(r", (metadata|origin|frontend_attributes|sharding)=\{[^}]*\}", "", hlo)
    hlo = re.sub(r"%[\w.\-]+", "%x", hlo)  # instruction and computation names
    hlo = re.sub(r"\b[\w\-]+(\.\d+)+\b", "N", hlo)  # numbered names, decimals
    lines = (line.strip() for line in hlo.splitlines())
    return sorted(line for line in lines if line.startswith(("%", "ROOT")))


def test_block_compiles_to_the_same_program_as_a_plain_unroll(random_vgg, monkeypatch):
    monkeypatch.delenv(engine.BLOCK_STEPS_ENV, raising=False)  # 3 steps: one block of 3
    # Program._block calls a jitted step (traced once); XLA inlines the calls, so what
    # runs must be what a straight unroll of the step compiles to.
    prog = engine.program(random_vgg, "block1_conv1", 32, presets.get("keras-vis"), steps=3)
    assert prog.block_steps == 3
    keys_ = jax.vmap(jax.random.key)(jnp.arange(2))
    units = jnp.array([0, 1], jnp.int32)
    state = prog.init(keys_)

    def plain(params, state, keys_, units, start):
        step = jax.vmap(prog.ascent.step_one, in_axes=(None, 0, 0, 0, None))
        values = []
        for j in range(prog.block_steps):
            state, value = step(params, state, keys_, units, start + j)
            values.append(value)
        return state, jnp.stack(values, axis=1)

    args = (random_vgg.params, state, keys_, units, jnp.int32(0))
    nested = jax.jit(prog._block).lower(*args).compile().as_text()
    unrolled = jax.jit(plain).lower(*args).compile().as_text()
    assert _instructions(nested) == _instructions(unrolled)


def test_chunk_size_does_not_change_pictures(random_vgg):
    one = jaxvis.visualize(random_vgg, "block1_conv2", [2, 3, 4, 6], batch=1, **SMALL)
    four = jaxvis.visualize(random_vgg, "block1_conv2", [6, 2, 3, 4], batch=4, **SMALL)
    order = [1, 2, 3, 0]
    assert np.abs(one.images.astype(int) - four.images[order].astype(int)).max() <= 1
    assert_same_curves(one.history, four.history[order])


def test_unit_key_depends_on_seed_layer_unit_only():
    a = jax.random.key_data(keys.unit_key(0, "block1_conv1", 3))
    b = jax.random.key_data(keys.unit_keys(0, "block1_conv1", [5, 3])[1])
    assert np.array_equal(a, b)
    c = jax.random.key_data(keys.unit_key(0, "block1_conv2", 3))
    d = jax.random.key_data(keys.unit_key(1, "block1_conv1", 3))
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


@pytest.mark.parametrize("preset", ["lucid", "keras-vis"])
def test_presets_give_finite_nonconstant_images(random_vgg, preset):
    res = jaxvis.visualize(
        random_vgg, "block2_conv1", [0, 1], preset=preset, batch=2, size=40, steps=6
    )
    assert res.images.shape == (2, 40, 40, 3) and res.images.dtype == np.uint8
    assert np.isfinite(res.history).all() and np.isfinite(res.objective).all()
    assert all(img.std() > 1.0 for img in res.images)
    assert res.config["preset"] == preset


def test_keras_vis_keeps_the_best_image(random_vgg):
    # An optimizer that climbs the loss makes the objective fall step by step, so the
    # best image is the first one: keep_best must return it, not the last.
    downhill = optax.sgd(-2.0)
    kw = dict(preset="keras-vis", transforms=[], optimizer=downhill, **SMALL)
    res = jaxvis.visualize(random_vgg, "block1_conv2", [1], **kw)
    history = res.history[0]
    assert history[-1] < history[0] - 0.1 * abs(history[0])  # it really fell
    np.testing.assert_allclose(res.objective[0], history.max(), rtol=1e-4)
    last = dataclasses.replace(presets.get("keras-vis"), keep_best=False)
    plain = jaxvis.visualize(random_vgg, "block1_conv2", [1], **{**kw, "preset": last})
    assert plain.objective[0] < history.max() - 0.05 * abs(history.max())


def test_non_finite_unit_is_reported_failed(random_vgg):
    def fn(acts, images, unit):
        value = acts["block1_conv1:pre"][..., unit].mean()
        return jnp.where(unit == 1, jnp.nan, value)

    bad = objectives.Objective(
        fn=fn, layers=("block1_conv1",), description="nan-on-1", uses_unit=True
    )
    res = jaxvis.visualize(random_vgg, "block1_conv1", [0, 1, 2], objective=bad, batch=3, **SMALL)
    assert list(res.filters) == [0, 2]
    assert set(res.failed) == {1} and "non-finite" in res.failed[1]
    assert len(res.images) == 2


def test_bad_layer_and_filter_errors(random_vgg):
    with pytest.raises(jaxvis.JaxvisError, match="valid layers: block1_conv1"):
        jaxvis.visualize(random_vgg, "block6_conv1", [0], **SMALL)
    with pytest.raises(jaxvis.JaxvisError, match="has 64 filters"):
        jaxvis.visualize(random_vgg, "block1_conv1", [64], **SMALL)
    with pytest.raises(jaxvis.JaxvisError, match="size must be"):
        jaxvis.visualize(random_vgg, "block1_conv1", [0], size=16, steps=2)
    with pytest.raises(jaxvis.JaxvisError, match="unknown preset"):
        jaxvis.visualize(random_vgg, "block1_conv1", [0], preset="deepdream", **SMALL)


class TinyCNN(nn.Module):
    """A user's own model: two convs, exposing pre-ReLU outputs like jaxvis's VGG16."""

    @nn.compact
    def __call__(self, x, stop_at):
        acts = {}
        for name, width in (("conv_a", 8), ("conv_b", 16)):
            pre = nn.Conv(width, (3, 3), name=name)(x)
            acts[name + ":pre"], acts[name] = pre, nn.relu(pre)
            x = nn.relu(pre)
            if name == stop_at:
                return acts
        raise ValueError(stop_at)


def test_user_defined_flax_model():
    module = TinyCNN()
    params = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), "conv_b")["params"]

    def apply(params, images, stop_at):
        return module.apply({"params": params}, images - 0.5, stop_at.removesuffix(":pre"))

    model = jaxvis.FeatureModel(
        name="tiny",
        apply=apply,
        params=params,
        layers=[jaxvis.LayerInfo("conv_a", "conv", 8), jaxvis.LayerInfo("conv_b", "conv", 16)],
    )
    res = jaxvis.visualize(model, "conv_b", range(16), size=16, steps=12, batch=8)
    assert res.images.shape == (16, 16, 16, 3)
    assert (res.history[:, -1] > res.history[:, 0]).mean() > 0.8


def test_sharded_run_equals_single_device(tmp_path, random_vgg):
    script = textwrap.dedent(
        """
        import sys, numpy as np, jax, jaxvis
        assert jax.device_count() == 4, jax.devices()
        m = jaxvis.vgg16(None, seed=1)
        r = jaxvis.visualize(m, "block1_conv2", range(6), batch=4, size=32, steps=8)
        np.savez(sys.argv[1], images=r.images, history=r.history, filters=r.filters)
        """
    )
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    out = tmp_path / "sharded.npz"
    subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, timeout=300)
    sharded = np.load(out)
    single = jaxvis.visualize(random_vgg, "block1_conv2", range(6), batch=2, **SMALL)
    assert list(sharded["filters"]) == list(range(6))
    # Different chunk shapes compile to different programs; rounding differs slightly.
    diff = np.abs(sharded["images"].astype(int) - single.images.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 8  # a wrong unit or key: mean ~20+
    assert_same_curves(sharded["history"], single.history)


def test_atlas_refuses_a_size_the_layer_cannot_take_before_writing(tmp_path, random_vgg):
    def apply(params, images, stop_at):  # like VGG16's head: one input size only
        if images.shape[1] != 48:
            raise jaxvis.JaxvisError(f"layer {stop_at!r} needs 48x48 images")
        return random_vgg.apply(params, images, stop_at)

    model = jaxvis.FeatureModel(
        name="fixed-size", apply=apply, params=random_vgg.params, layers=random_vgg.layers
    )
    out = tmp_path / "a.h5"
    with pytest.raises(jaxvis.JaxvisError, match="48x48"):
        jaxvis.generate_atlas(model, str(out), {"block1_conv1": [0]}, size=32, steps=2)
    assert not out.exists()


def test_atlas_config_records_the_compute_dtype(tmp_path, random_vgg):
    out = str(tmp_path / "a.h5")
    jaxvis.generate_atlas(random_vgg, out, {"block1_conv1": [0]}, size=32, steps=2, progress=False)
    with jaxvis.open_atlas(out) as atlas:
        assert atlas.config["dtype"] == "float32"
    bf16 = dataclasses.replace(random_vgg, dtype="bfloat16")
    with pytest.raises(jaxvis.JaxvisError, match="dtype"):
        jaxvis.generate_atlas(bf16, out, {"block1_conv1": [1]}, size=32, steps=2, progress=False)
