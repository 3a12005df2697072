"""The Flax VGG16 forward pass: numerics, truncation, odd sizes and input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvis.errors import JaxvisError
from jaxvis.models.vgg16 import features

# torchvision ImageNet normalisation, as in its reference training scripts.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
UP_TO_BLOCK2 = ("block1_conv1", "block1_conv2", "block1_pool", "block2_conv1", "block2_conv2")


@pytest.fixture
def model(imagenet_vgg):
    return imagenet_vgg  # the embedded torchvision weights, shared with other modules


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), np.float32)


def reference_forward(params: dict, x: np.ndarray, names) -> dict[str, np.ndarray]:
    """Plain ``lax.conv`` + numpy VGG16, written without flax or jaxvis's model code."""
    x = (x - MEAN) / STD
    acts = {}
    for name in names:
        if name.endswith("pool"):
            x = jax.lax.reduce_window(x, -np.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        else:
            kernel, bias = (np.asarray(params[name][k]) for k in ("kernel", "bias"))
            pre = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(1, 1),
                padding=((1, 1), (1, 1)),  # torchvision's padding=1
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,
            )
            acts[name + ":pre"] = np.asarray(pre) + bias
            x = np.maximum(acts[name + ":pre"], 0.0)
        acts[name] = np.asarray(x)
    return acts


@pytest.mark.parametrize("size", [40, 45])
def test_matches_plain_lax_reference(model, size):
    x = images(2, size)
    ref = reference_forward(model.params, x, UP_TO_BLOCK2)
    got = model.features(x, "block2_conv2")
    assert set(got) == set(ref)
    for name, want in ref.items():
        assert got[name].shape == want.shape, name
        error = np.max(np.abs(np.asarray(got[name]) - want)) / np.max(np.abs(want))
        assert error < 1e-4, (name, error)
    assert np.min(ref["block1_conv1:pre"]) < 0  # so ":pre" really differs from the ReLU


def conv_flops(size: int, upto: str) -> int:
    """Analytic FLOPs (2 per multiply-add) of the 3x3 convs up to ``upto``, one image.

    Like XLA, it counts only taps that land inside the image: along a side of ``s`` pixels
    a 3-wide 'same' kernel has ``3 * s - 2`` of them, not ``3 * s``.
    """
    total, side, cin = 0, size, 3
    for block, convs, width in ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)):
        for c in range(1, convs + 1):
            total += 2 * (3 * side - 2) ** 2 * cin * width
            cin = width
            if f"block{block}_conv{c}" == upto:
                return total
        side //= 2
    raise ValueError(upto)


def compiled_flops(model, stop_at: str, size: int) -> float:
    shapes = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), model.params)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    fn = jax.jit(lambda params, images: model.apply(params, images, stop_at))
    cost = fn.lower(shapes, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in older jax
    return float(cost["flops"])


def test_truncation_computes_nothing_deeper(model):
    size = 64
    shallow = compiled_flops(model, "block2_conv1", size)
    deep = compiled_flops(model, "block5_conv3", size)
    want = conv_flops(size, "block2_conv1")
    # Bias, ReLU, pooling and preprocessing add well under 1%; the next conv would add 65%.
    assert want <= shallow < 1.02 * want, (shallow, want)
    assert conv_flops(size, "block5_conv3") <= deep < 1.02 * conv_flops(size, "block5_conv3")
    assert deep > 4 * shallow


def test_odd_sizes_floor_like_keras(model):
    acts = model.features(images(1, 45), "block5_pool")
    sides = {name: a.shape[1:3] for name, a in acts.items() if name.endswith("pool")}
    assert sides == {
        "block1_pool": (22, 22),
        "block2_pool": (11, 11),
        "block3_pool": (5, 5),
        "block4_pool": (2, 2),
        "block5_pool": (1, 1),
    }
    conv = np.asarray(acts["block1_conv2"])[:, :44, :44]  # the last row and column dropped
    pooled = conv.reshape(1, 22, 2, 22, 2, 64).max(axis=(2, 4))
    np.testing.assert_array_equal(np.asarray(acts["block1_pool"]), pooled)


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(JaxvisError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_layer_lists_valid_layers(model):
    for name in ("block6_conv1", "block6_conv1:pre"):
        message = one_line_error(model.features, images(1, 32), name)
        assert "unknown layer 'block6_conv1'" in message
        assert "valid layers: block1_conv1, block1_conv2, block1_pool" in message
        assert message.endswith("block5_conv3, block5_pool")
    message = one_line_error(features, model.params, images(1, 32), "conv9", preprocessing="caffe")
    assert "valid layers: block1_conv1" in message


def test_head_of_headless_weights(model):
    for name in ("fc1", "predictions"):
        message = one_line_error(model.features, images(1, 224), name)
        assert "needs the classifier head" in message and "tf_kernels.h5" in message
        message = one_line_error(
            features, model.params, images(1, 224), name, preprocessing="caffe"
        )
        assert "needs the classifier head" in message


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((40, 40, 3), "images must be [N, H, W, 3] RGB in [0, 1]; got shape (40, 40, 3)"),
        ((1, 40, 40, 1), "images must be [N, H, W, 3] RGB in [0, 1]; got shape (1, 40, 40, 1)"),
        ((1, 3, 40, 40), "images must be [N, H, W, 3] RGB in [0, 1]; got shape (1, 3, 40, 40)"),
        ((1, 31, 40, 3), "images must be at least 32x32 px; got 31x40"),
    ],
)
def test_bad_images(model, shape, expected):
    assert one_line_error(model.features, np.zeros(shape, np.float32), "block1_conv1") == expected


def test_head_needs_224_px(model):
    params = dict(model.params, fc1={}, fc2={}, predictions={})  # checked before any compute
    for name in ("flatten", "fc1", "predictions"):
        message = one_line_error(features, params, images(1, 64), name, preprocessing="caffe")
        assert message == (
            f"layer {name!r} is in the classifier head, which needs 224x224 images; got 64x64"
        )


def test_bfloat16_path_stays_close_to_float32(imagenet_vgg):
    from jaxvis.models.model import vgg16

    fast = vgg16(dtype=jnp.bfloat16)
    x = jax.random.uniform(jax.random.key(5), (1, 48, 48, 3))
    ref = np.asarray(imagenet_vgg.features(x, "block3_conv1")["block3_conv1:pre"])
    out = np.asarray(fast.features(x, "block3_conv1")["block3_conv1:pre"], np.float32)
    assert fast.features(x, "block1_conv1")["block1_conv1"].dtype == jnp.bfloat16
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert 1e-4 < rel < 3e-2, rel  # really bf16 (not silently fp32), and still close
