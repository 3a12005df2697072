"""Shapes, memory and cost of any FeatureModel come from JAX, not from VGG assumptions.

The model here has a 3x3 conv with stride 2 and a 1x1 conv: a VGG-style count (3x3,
stride 1, 2x2 pools) gets both its activation memory and its FLOPs wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxvis import devices, engine, objectives, optim, presets
from jaxvis import param as jparam
from jaxvis.errors import JaxvisError
from jaxvis.models.feature_model import FeatureModel, LayerInfo

SIZE = 16  # input side; the strided conv halves it to 8


def _conv(x, w, stride):
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=dims)


def tiny_apply(params, images, stop_at):
    acts = {}
    x = _conv(images, params["c1"]["kernel"], 2) + params["c1"]["bias"]
    acts["c1:pre"] = x
    acts["c1"] = x = jax.nn.relu(x)
    if stop_at == "c1":
        return acts
    x = _conv(x, params["c2"]["kernel"], 1) + params["c2"]["bias"]
    acts["c2:pre"] = x
    acts["c2"] = jax.nn.relu(x)
    return acts


@pytest.fixture(scope="module")
def tiny():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "c1": {"kernel": jax.random.normal(k1, (3, 3, 3, 8)) * 0.3, "bias": jnp.zeros(8)},
        "c2": {"kernel": jax.random.normal(k2, (1, 1, 8, 4)) * 0.3, "bias": jnp.zeros(4)},
    }
    layers = [LayerInfo("c1", "conv", 8), LayerInfo("c2", "conv", 4)]
    return FeatureModel(name="tiny", apply=tiny_apply, params=params, layers=layers, min_size=4)


def valid_taps(n: int, k: int, stride: int) -> int:
    """Kernel taps that land inside the image, summed over output positions, on one axis
    ('SAME' padding puts the extra row at the end). XLA counts only these."""
    out = -(-n // stride)
    low = max((out - 1) * stride + k - n, 0) // 2
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - low + t < n)


def test_shapes_come_from_eval_shape(tiny):
    shapes = tiny.shapes("c2", SIZE)
    assert {k: v.shape for k, v in shapes.items()} == {
        "c1:pre": (1, 8, 8, 8),
        "c1": (1, 8, 8, 8),
        "c2:pre": (1, 8, 8, 4),
        "c2": (1, 8, 8, 4),
    }


def test_activation_bytes_and_chunk_by_hand(tiny):
    # pre + post of each layer, float32, at 8x8; times 3 for the backward pass.
    by_hand = (2 * 8 * 8 * 8 + 2 * 8 * 8 * 4) * 4 * 3
    assert devices.activation_bytes(tiny, "c2", SIZE) == by_hand == 18432
    # Half of 1 MiB holds 28 units, rounded down to a power of two: 16 per device.
    assert devices.accelerator_chunk(by_hand, 2**20, n_dev=1) == 16
    assert devices.accelerator_chunk(by_hand, 2**20, n_dev=4) == 64
    assert devices.accelerator_chunk(by_hand, 2**40, n_dev=1) == devices.MAX_CHUNK
    assert devices.accelerator_chunk(by_hand, 1, n_dev=2) == 2  # at least one per device
    # On the CPU the rule is one unit per device, whatever the model.
    assert devices.auto_chunk(tiny, "c2", SIZE, 10) == jax.device_count()


def test_step_cost_from_xla_matches_a_hand_count(tiny):
    config = presets.Config(
        preset="custom",
        steps=2,
        param=lambda size: jparam.pixel_image(size),
        transforms=lambda size: (),
        objective=lambda layer: objectives.channel(layer, pre=True),
        optimizer=optim.spec(optax.sgd, learning_rate=0.1),
    )
    prog = engine.program(tiny, "c2", SIZE, config)
    # Multiply-adds of each conv over the taps inside the image, x2 for FLOPs, x2 again
    # for the input gradient (the same taps, transposed). Bias, ReLU, the sigmoid of the
    # parameterization and SGD add a few FLOPs per element, forward and backward.
    c1 = 2 * valid_taps(SIZE, 3, 2) ** 2 * 3 * 8
    c2 = 2 * 8 * 8 * 8 * 4
    elements = SIZE * SIZE * 3 + 8 * 8 * 8 + 8 * 8 * 4
    got = prog.step_flops(tiny.params)
    assert 2 * (c1 + c2) <= got <= 2 * (c1 + c2) + 16 * elements, (got, c1, c2)
    # Stopping at c1 leaves c2 out. A stride-1 count of c1 alone would be 3.5x larger.
    shallow = engine.program(tiny, "c1", SIZE, config).step_flops(tiny.params)
    assert 2 * c1 <= shallow <= 2 * c1 + 16 * elements, (shallow, c1)


def test_visualize_runs_on_the_tiny_model(tiny):
    result = engine.visualize(tiny, "c2", [0, 3], size=SIZE, steps=4, transforms=[])
    assert result.images.shape == (2, SIZE, SIZE, 3)
    assert result.filters.tolist() == [0, 3]


def test_layer_kind_is_checked():
    with pytest.raises(JaxvisError, match="valid kinds: conv, pool, dense, flatten, other"):
        LayerInfo("x", "convolution", 8)
    with pytest.raises(JaxvisError, match="positive integer num_filters"):
        LayerInfo("x", "conv", 0)
    assert LayerInfo("x", "conv", 8).filters == 8  # the 0.1 name still reads


def test_atlas_progress_weighs_layers_by_their_xla_cost(tiny, tmp_path, monkeypatch):
    from jaxvis import scheduler

    seen = {}

    class Recording(scheduler.Progress):
        def __init__(self, layers, **kw):
            seen.update(kw.get("costs") or {})
            super().__init__(layers, **kw)

    monkeypatch.setattr(scheduler, "Progress", Recording)
    out = tmp_path / "a.h5"
    layers = {"c1": [0], "c2": [0, 1]}
    scheduler.generate_atlas(tiny, str(out), layers, size=SIZE, steps=2, progress=True)
    prog = {la: engine.program(tiny, la, SIZE, presets.get("lucid"), steps=2) for la in layers}
    assert seen == {la: p.step_flops(tiny.params) for la, p in prog.items()}
    assert seen["c2"] > seen["c1"] > 0


def test_lucid_maximizes_pre_only_where_the_model_offers_it(tiny):
    """The tiny model returns c1:pre, but a model may not declare it (LayerInfo.pre):
    then the lucid preset maximizes the plain output, and its description says so."""
    declared = FeatureModel(
        name="tiny-pre",
        apply=tiny_apply,
        params=tiny.params,
        layers=[LayerInfo("c1", "conv", 8, pre=True), LayerInfo("c2", "conv", 4)],
        min_size=4,
    )
    lucid = presets.get("lucid")
    with_pre = engine.program(declared, "c1", SIZE, lucid, steps=2)
    plain = engine.program(tiny, "c1", SIZE, lucid, steps=2)
    assert with_pre.ascent.recipe.objective.description == "channel(c1:pre)"
    assert plain.ascent.recipe.objective.description == "channel(c1)"
    units = jnp.arange(2)
    acts = tiny_apply(tiny.params, jnp.full((1, SIZE, SIZE, 3), 0.5), "c1")
    read_pre = with_pre.ascent.recipe.objective(acts, None, units[1])
    read_plain = plain.ascent.recipe.objective(acts, None, units[1])
    assert float(read_pre) == pytest.approx(float(jnp.mean(acts["c1:pre"][..., 1])))
    assert float(read_plain) == pytest.approx(float(jnp.mean(acts["c1"][..., 1])))
