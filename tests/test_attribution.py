"""Attribution against hand-computed values on a tiny network, and the API's promises.

The tiny network follows the FeatureModel protocol with numbers small enough to follow:
4x4 RGB images, a 1x1 conv 3->2 with ReLU (``conv``), a 2x2 max-pool (``pool``, 2x2x2),
``flatten`` (8, channels-last order) and a dense layer to 3 logits (``logits``). Its
expected maps are computed below in plain numpy, formula by formula, independently of
jaxvis/attribution (no jax, no objectives).
"""

import re

import numpy as np
import pytest

import jaxvis
from jaxvis import attribution
from jaxvis.attribution import program
from jaxvis.errors import JaxvisError
from jaxvis.models.feature_model import FeatureModel, LayerInfo
from jaxvis.models.taps import CAPABILITIES, relu, tapped

W1 = np.array([[1.0, -1.0], [0.5, 1.0], [-1.0, 0.5]], np.float32)  # conv, [in 3, out 2]
B1 = np.array([0.1, -0.2], np.float32)
# Dense [8, 3]. Class 0 weighs every pooled value 0.5, so dS/dA at ``pool`` is 0.5
# everywhere (the hand-computed Grad-CAM++ case); class 1 mixes signs, so guided
# backprop's (g > 0) gate matters.
V = np.array(
    [
        [0.5, 1.0, -0.3],
        [0.5, -2.0, 0.2],
        [0.5, 0.5, 0.1],
        [0.5, 1.0, -0.4],
        [0.5, -1.0, 0.6],
        [0.5, 2.0, -0.1],
        [0.5, -0.5, 0.3],
        [0.5, 1.0, 0.2],
    ],
    np.float32,
)
C = np.array([0.0, 0.1, -0.1], np.float32)
LAYERS = (
    LayerInfo("conv", "conv", 2, pre=True),
    LayerInfo("pool", "pool", 2),
    LayerInfo("flatten", "flatten", 8),
    LayerInfo("logits", "dense", 3),
)
R = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])  # bilinear 2 -> 4, edges clamped


def tiny_apply(params, images, stop_at, taps=None):
    acts = {}
    pre = images @ params["w1"] + params["b1"]
    acts["conv:pre"] = pre = tapped(taps, "conv:pre", pre)
    acts["conv"] = x = tapped(taps, "conv", relu(pre, taps))
    if stop_at.removesuffix(":pre") == "conv":
        return acts
    n, h, w, k = x.shape
    acts["pool"] = x = tapped(taps, "pool", x.reshape(n, h // 2, 2, w // 2, 2, k).max((2, 4)))
    if stop_at == "pool":
        return acts
    acts["flatten"] = x = x.reshape(n, -1)
    if stop_at == "flatten":
        return acts
    acts["logits"] = tapped(taps, "logits", x @ params["v"] + params["c"])
    return acts


def tiny(taps=frozenset(CAPABILITIES)):
    params = {"w1": W1, "b1": B1, "v": V, "c": C}
    return FeatureModel("tiny", tiny_apply, params, LAYERS, logits="logits", taps=taps)


# --- the numpy reference ----------------------------------------------------------------


def np_forward(x):
    """(conv pre [4,4,2], conv [4,4,2], pool [2,2,2], logits [3]) of one image [4,4,3]."""
    pre = x @ W1 + B1
    a = np.maximum(pre, 0)
    pool = a.reshape(2, 2, 2, 2, 2).max(axis=(1, 3))
    return pre, a, pool, pool.reshape(-1) @ V + C


def np_input_grad(x, c, guided):
    """d logit_c / d x [4,4,3], through the max-pool's argmax and the (guided) ReLU."""
    pre, a, pool, _ = np_forward(x)
    g_pool = V[:, c].reshape(2, 2, 2)
    g_a = np.zeros_like(a)
    for i in range(4):
        for j in range(4):
            for k in range(2):
                if a[i, j, k] == pool[i // 2, j // 2, k]:  # the window's max
                    g_a[i, j, k] = g_pool[i // 2, j // 2, k]
    gate = (pre > 0) & (g_a > 0) if guided else pre > 0
    return (g_a * gate) @ W1.T


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.fixture(scope="module")
def vgg():
    return jaxvis.vgg16(None)  # random weights, no head: its deepest layer is block5_pool


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(5, 4, 4, 3)).astype(np.float32)


# --- hand-computed values ------------------------------------------------------------------


def test_gradcam_plus_plus_by_hand(model, images):
    """Class 0: g = 0.5 at every pooled position, so by the paper's formula each alpha of
    channel k is 0.25 / (0.5 + 0.125 * sum A_k) and w_k = 4 * alpha * 0.5. tf-keras-vis's
    renormalized alphas (1/4 each) would give w_k = 0.5 instead."""
    got = attribution.attribute(
        model, images, method="gradcam++", target=0, layer="pool", resize=False
    )
    for x, m in zip(images, got, strict=True):
        pool = np_forward(x)[2]
        w = [4 * 0.5 * 0.25 / (0.5 + 0.125 * pool[..., k].sum()) for k in range(2)]
        np.testing.assert_allclose(m, np.maximum(pool @ np.array(w), 0), rtol=1e-5, atol=1e-7)


def test_gradcam_family_with_varying_gradients(model, images):
    """Class 1: dS/dA_pool[i, j, k] = V[(2i + j) * 2 + k, 1] varies in sign and size."""
    pp = attribution.attribute(
        model, images, method="gradcam++", target=1, layer="pool", resize=False
    )
    gc = attribution.attribute(
        model, images, method="gradcam", target=1, layer="pool", resize=False
    )
    up = attribution.attribute(model, images, method="gradcam", target=1, layer="pool")
    g = V[:, 1].reshape(2, 2, 2)
    for i, x in enumerate(images):
        a = np_forward(x)[2]
        alpha = g**2 / (2 * g**2 + a.sum(axis=(0, 1)) * g**3)
        w_pp = (alpha * np.maximum(g, 0)).sum(axis=(0, 1))
        np.testing.assert_allclose(pp[i], np.maximum(a @ w_pp, 0), rtol=1e-5, atol=1e-7)
        cam = np.maximum(a @ g.mean(axis=(0, 1)), 0)
        np.testing.assert_allclose(gc[i], cam, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(up[i], R @ cam @ R.T, rtol=1e-5, atol=1e-7)


def test_scorecam_by_hand(model, images):
    """w_k = logit(x * M_k) - logit(black), M_k = channel k of ``pool`` upsampled and scaled
    to [0, 1]; no softmax."""
    c = 2
    got = attribution.attribute(
        model, images, method="scorecam", target=c, layer="pool", resize=False
    )
    big = attribution.attribute(model, images, method="scorecam", target=c, layer="pool")
    black = np_forward(np.zeros((4, 4, 3), np.float32))[3][c]
    for i, x in enumerate(images):
        a = np_forward(x)[2]
        w = []
        for k in range(2):
            m = R @ a[..., k] @ R.T
            m = (m - m.min()) / (m.max() - m.min())
            w.append(np_forward(x * m[..., None])[3][c] - black)
        cam = np.maximum(a @ np.array(w), 0)
        np.testing.assert_allclose(got[i], cam, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(big[i], R @ cam @ R.T, rtol=1e-5, atol=1e-6)


def test_guided_backprop_by_hand(model, images):
    guided = attribution.attribute(model, images, method="guided_backprop", target=1, keepdims=True)
    plain = attribution.attribute(model, images, method="gradient", target=1, keepdims=True)
    reduced = attribution.attribute(model, images, method="guided_backprop", target=1)
    for i, x in enumerate(images):
        want = np_input_grad(x, 1, guided=True)
        np.testing.assert_allclose(guided[i], want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            plain[i], np_input_grad(x, 1, guided=False), rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(reduced[i], np.abs(want).max(axis=-1), rtol=1e-5, atol=1e-7)
    assert not np.allclose(guided, plain)  # the (g > 0) gate changed something


def test_guided_gradcam_is_guided_backprop_times_gradcam(model, images):
    gg = attribution.attribute(
        model, images, method="guided_gradcam", target=1, layer="pool", keepdims=True
    )
    for i, x in enumerate(images):
        a = np_forward(x)[2]
        cam = R @ np.maximum(a @ V[:, 1].reshape(2, 2, 2).mean(axis=(0, 1)), 0) @ R.T
        want = np_input_grad(x, 1, guided=True) * cam[..., None]
        np.testing.assert_allclose(gg[i], want, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness(model, images):
    """With a fine grid the signed map sums to logit(x) - logit(black) (Sundararajan et al.
    2017, completeness); every rule converges to it."""
    x = images[:2]
    for rule in ("midpoint", "trapezoid"):
        ig = attribution.attribute(model, x, method="ig", target=2, steps=256, rule=rule)
        for i in range(2):
            gap = np_forward(x[i])[3][2] - np_forward(np.zeros_like(x[i]))[3][2]
            np.testing.assert_allclose(ig[i].sum(), gap, rtol=2e-3, atol=1e-4)


# --- the API's promises --------------------------------------------------------------------


def test_per_image_targets_equal_separate_calls_and_share_a_program(model, images):
    targets = [2, "class:0", "channel:pool:1", 1, "neuron:pool:0"]
    attribution.attribute(model, images, method="gradcam", target=targets, layer="pool")
    before = program.trace_count()
    together = attribution.attribute(model, images, method="gradcam", target=targets, layer="pool")
    again = attribution.attribute(
        model, images[::-1], method="gradcam", target=targets[::-1], layer="pool"
    )
    assert program.trace_count() == before  # other classes and channels: same programs
    np.testing.assert_array_equal(again, together[::-1])
    for i, t in enumerate(targets):
        alone = attribution.attribute(
            model, images[i : i + 1], method="gradcam", target=t, layer="pool"
        )
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-6, atol=1e-7)


def test_noise_depends_on_seed_index_and_sample_alone(model, images):
    """SmoothGrad: chunks of 1 and of 3 give the same maps; an image keeps its map when
    run with others at the same global index, and changes with the seed."""
    kw = {"method": "smoothgrad", "samples": 4, "combine": "square"}
    one = attribution.prepare(model, batch=1, size=4, **kw)
    three = attribution.prepare(model, batch=3, size=4, **kw)
    t = [attribution.parse_target(1, model)] * 5
    a, b = one(images, t, np.arange(5)), three(images, t, np.arange(5))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(three(images[3:], t[3:], np.array([3, 4])), a[3:], rtol=1e-6)
    assert not np.allclose(three(images[3:], t[3:], np.array([0, 1])), a[3:])
    other = attribution.prepare(model, batch=3, size=4, seed=1, **kw)
    assert not np.allclose(other(images, t, np.arange(5)), a)


def test_smoothgrad_with_tiny_noise_is_the_gradient(model, images):
    grad = attribution.attribute(model, images, method="gradient", target=1, keepdims=True)
    for combine, f in (("mean", lambda g: g), ("abs", np.abs), ("square", np.square)):
        sg = attribution.attribute(
            model,
            images,
            method="smoothgrad",
            target=1,
            noise=1e-7,
            samples=2,
            combine=combine,
            keepdims=True,
        )
        np.testing.assert_allclose(sg, f(grad), rtol=1e-4, atol=1e-7)


def test_default_layer_is_the_last_map_before_the_target(model, vgg):
    def default(m, size, target=None):
        return attribution.prepare(m, method="gradcam", size=size, target=target).layer

    assert default(model, 4) == "pool"  # before the logits
    assert default(model, (2, 4)) == "pool"  # 1x2 is larger than 1x1
    assert default(model, 2) == "conv"  # pool is 1x1
    assert default(model, 4, "channel:pool:1") == "conv"
    assert default(model, 4, ["channel:pool:1", 2]) == "conv"  # before every target's layer
    one = attribution.attribute(
        model, np.ones((1, 4, 4, 3), np.float32) / 2, method="gradcam", target="neuron:pool:0"
    )
    assert one.shape == (1, 4, 4)  # attribute() tells prepare the target
    assert default(vgg, 32) == default(vgg, 64) == "block5_conv3"
    assert default(vgg, 64, "channel:block5_conv3:pre:0") == "block5_conv2"
    assert default(vgg, 16 * 2, "channel:block5_conv1:0") == "block4_pool"  # 2x2
    described = attribution.prepare(vgg, method="gradcam++", size=64).description
    assert described == {
        "method": "gradcam++",
        "layer": "block5_conv3",
        "keepdims": False,
        "seed": 0,
        "resize": True,
    }


def test_description_fills_in_every_default(model):
    d = attribution.prepare(model, method="SmoothGrad", size=4, samples=3).description
    assert d == {
        "method": "smoothgrad",
        "layer": None,
        "keepdims": False,
        "seed": 0,
        "noise": 0.15,
        "samples": 3,
        "combine": "mean",
        "reduce": "max_abs",
    }
    ig = attribution.prepare(
        model, method="integrated_gradients", size=4, baseline=np.ones((4, 4, 3), np.float32)
    )
    assert ig.description["baseline"].startswith("image[4, 4, 3] sha256:")
    assert ig.description["rule"] == "right" and ig.description["steps"] == 32


def _error(match, fn, *args, **kwargs):
    with pytest.raises(JaxvisError, match=re.escape(match)) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


# (message, attribute() arguments over method="gradient", target=0, one tiny image).
# "images" maps the image [1, 4, 4, 3]; "bare" is the tiny model without taps.
REFUSED = [
    ("unknown method 'gradcam+++'; valid methods: gradient", {"method": "gradcam+++"}),
    (
        "unknown option 'sample' for smoothgrad; valid options: combine, noise",
        {"method": "smoothgrad", "sample": 3},
    ),
    ("unknown combine 'max'", {"method": "smoothgrad", "combine": "max"}),
    ("steps must be a positive integer", {"method": "ig", "steps": 0}),
    ("layer 'flatten' has no spatial map", {"method": "gradcam", "layer": "flatten"}),
    ("unknown layer 'fc9'", {"method": "gradcam", "layer": "fc9"}),
    (
        "comes after the target's layer 'conv'",
        {"method": "gradcam", "target": "channel:conv:0", "layer": "pool"},
    ),
    (
        "the map would be zero",
        {"method": "gradcam", "target": "channel:conv:pre:0", "layer": "conv"},
    ),
    ("gradient takes no layer", {"layer": "pool"}),
    (
        "guided_backprop needs a model that honours taps guided_relu",
        {"method": "guided_backprop", "bare": True},
    ),
    ("gradcam needs a model that honours taps deltas", {"method": "gradcam", "bare": True}),
    ("grayscale", {"images": lambda x: x[..., :1]}),
    ("grayscale", {"images": lambda x: x[..., 0]}),
    ("RGBA", {"images": lambda x: np.concatenate([x, x[..., :1]], -1)}),
    ("divide uint8 images by 255", {"images": lambda x: (x * 255).astype(np.uint8)}),
    ("must be in [0, 1]", {"images": lambda x: x * 2}),
    ("add an axis", {"images": lambda x: x[0]}),
    ("class 3 is out of range for logits, which has 3", {"target": 3}),
    ("unknown target 'pixel:3'", {"target": "pixel:3"}),
    ("reads the traced unit", {"target": jaxvis.objectives.channel("conv")}),
    ("got 2 targets for 1 images", {"target": [0, 1]}),
    ("baseline is", {"method": "ig", "baseline": np.zeros((2, 2, 3), np.float32)}),
]


@pytest.mark.parametrize("match, kw", REFUSED, ids=[m[:30] for m, _ in REFUSED])
def test_refused_with_one_line_errors(model, images, match, kw):
    kw = {"method": "gradient", "target": 0, **kw}
    x = kw.pop("images", lambda x: x)(images[:1])
    m = tiny(taps=frozenset()) if kw.pop("bare", False) else model
    _error(match, attribution.attribute, m, x, **kw)


def test_class_target_needs_a_head_and_scorecam_needs_no_taps(images, vgg):
    _error("a class target needs a model with a head", attribution.parse_target, 3, vgg)
    bare = tiny(taps=frozenset())
    assert attribution.attribute(bare, images[:1], method="scorecam", target=0).shape == (1, 4, 4)


def test_objective_targets(model, images):
    """Any Objective that fixes its unit works: a fixed channel equals the string form."""
    obj = jaxvis.objectives.channel("conv", 1, pre=False)
    a = attribution.attribute(model, images, method="gradient", target=obj)
    b = attribution.attribute(model, images, method="gradient", target="channel:conv:1")
    np.testing.assert_allclose(a, b, rtol=1e-6)
    d = jaxvis.objectives.direction("pool", [1.0, -1.0])
    assert attribution.attribute(model, images, method="gradcam", target=d, layer="conv").shape == (
        5,
        4,
        4,
    )


def test_progress_callback_counts_images(model, images):
    seen = []
    attribution.attribute(
        model,
        images,
        method="gradient",
        target=0,
        batch=2,
        progress=lambda d, n: seen.append((d, n)),
    )
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_progress_true_shows_images_on_stderr(model, images, capsys):
    """``progress=True`` is the project's display (jaxvis/progress.py), counting images."""
    attribution.attribute(model, images, method="gradient", target=0, batch=2, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "jaxvis: gradient 0/5 | total 0/5, ETA ?"
    assert lines[-2].startswith("jaxvis: gradient 5/5, ") and " images/s, " in lines[-2]
    assert re.fullmatch(r"jaxvis: done: 5/5 images in 00:0\d", lines[-1])
    assert not any("filters" in line for line in lines)


@pytest.fixture()
def small_memory(monkeypatch, vgg):
    """Pretends the device has ``bytes`` available (the rule in jaxvis/devices.py reads it
    through ``devices.available_memory``, as does the chunk plan)."""
    from jaxvis import devices

    def set_memory(nbytes: int) -> None:
        monkeypatch.setattr(devices, "available_memory", lambda device: int(nbytes))

    return set_memory


def test_a_chunk_too_large_is_refused_in_images_words(vgg, small_memory):
    """4 images of 72 px with 2 SmoothGrad samples each at once, where the memory holds
    the passes of about one image: the refusal counts images and passes, not units, and
    names the three ways out; the size it offers is the largest the same rule accepts."""
    from jaxvis import devices

    stop = "block5_conv3"
    small_memory(4 * devices.activation_bytes(vgg, "block5_pool", 72))
    x = np.random.default_rng(1).uniform(size=(4, 72, 72, 3)).astype(np.float32)
    with pytest.raises(JaxvisError) as e:
        attribution.attribute(
            vgg, x, method="smoothgrad", samples=2, batch=4, target=f"channel:{stop}:pre:0"
        )
    message = str(e.value)
    assert "\n" not in message and "unit" not in message, message
    assert message.startswith("smoothgrad of 4 images per device at 72 px, 2 passes each at once,")
    assert message.endswith(", a smaller batch (--batch) or fewer samples (--samples)"), message
    largest = int(re.search(r"use images of at most (\d+) px \(--size\)", message).group(1))
    assert vgg.min_size <= largest < 72
    devices.check_fits(vgg, stop, largest, 8)  # 4 images x 2 passes fit at that size...
    with pytest.raises(JaxvisError):
        devices.check_fits(vgg, stop, largest + 1, 8)  # ...and not one pixel larger


def test_one_image_that_cannot_fit_at_any_size(vgg, small_memory):
    small_memory(2**20)
    x = np.random.default_rng(2).uniform(size=(1, 76, 76, 3)).astype(np.float32)
    _error(
        "gradcam of 1 image per device at 76 px needs about",
        attribution.attribute,
        vgg,
        x,
        method="gradcam",
        target="channel:block5_conv3:0",
    )
    with pytest.raises(JaxvisError, match=r"available; even 32 px images do not fit$"):
        attribution.attribute(vgg, x, method="gradcam", target="channel:block5_conv3:0")
