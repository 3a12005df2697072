"""jaxvis's VGG16 against Keras 3's on the same weights files.

The reference is ``keras.applications.VGG16`` (JAX backend) reading the very file that
jaxvis reads: random weights with the real shapes, written in the official Keras layout
with h5py, and what Keras 3's own writers make of them. Activations must agree to a
relative error (max |jaxvis - keras| / max |keras|) of 1e-5. Run with ``-s`` to see the
measured errors.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxvis  # noqa: E402
from jaxvis.models import keras_h5  # noqa: E402
from jaxvis.models.vgg16 import (  # noqa: E402
    CONV_NAMES,
    FEATURE_LAYERS,
    HEAD_LAYERS,
    HEAD_SIZE,
    features,
)

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("the Keras reference needs KERAS_BACKEND=jax", allow_module_level=True)

TOL = 1e-5
CONV_PROBES = ("block1_conv2", "block3_conv3", "block5_conv3")
# Layers of the official file, in Keras applications/vgg16.py order.
KERAS_LAYERS = ["input_1"] + [la.name for la in FEATURE_LAYERS + HEAD_LAYERS]


def random_params(head: bool, seed: int = 0) -> dict:
    """Random weights with VGG16's shapes and unit-scale activations (He init).

    Biases are non-zero so that a bias loaded into the wrong place shows. The first
    kernel is scaled down by the ~75x range of Caffe-preprocessed pixels.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, (kernel, bias) in keras_h5._expected_shapes(head).items():
        fan_in = int(np.prod(kernel[:-1]))
        scale = np.sqrt(2.0 / fan_in) / (75.0 if name == "block1_conv1" else 1.0)
        params[name] = {
            "kernel": rng.standard_normal(kernel, np.float32) * np.float32(scale),
            "bias": rng.normal(0.0, 0.3, bias).astype(np.float32),
        }
    return params


def write_official(path, params: dict) -> None:
    """Writes ``params`` as Keras's ``vgg16_weights_tf_dim_ordering_tf_kernels`` files do."""
    with h5py.File(path, "w") as f:
        head = {la.name for la in HEAD_LAYERS}
        names = [n for n in KERAS_LAYERS if "fc1" in params or n not in head]
        f.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            group = f.create_group(name)
            weights = params.get(name)
            keys = [f"{name}_W_1:0", f"{name}_b_1:0"] if weights else []
            group.attrs["weight_names"] = np.array([k.encode() for k in keys], dtype="S")
            for key, value in zip(keys, (weights or {}).values(), strict=True):
                group.create_dataset(key, data=value)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def keras_acts(model, images: np.ndarray, names) -> dict[str, np.ndarray]:
    """Keras's activations, fed as Keras documents: ``preprocess_input`` of 0-255 RGB."""
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    x = keras.applications.vgg16.preprocess_input(images * np.float32(255.0))
    return {n: np.asarray(a) for n, a in zip(names, probe(x), strict=True)}


def jaxvis_acts(params: dict, images: np.ndarray, names) -> dict[str, np.ndarray]:
    params = {k: {n: jnp.asarray(v) for n, v in p.items()} for k, p in params.items()}
    acts = features(params, jnp.asarray(images), names[-1], preprocessing="caffe")
    return {n: np.asarray(acts[n]) for n in names}


def check_parity(label: str, got: dict, ref: dict) -> None:
    errors = {n: rel_err(got[n], ref[n]) for n in ref}
    print(f"\n{label}: " + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    assert max(errors.values()) <= TOL, errors


def assert_same_params(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        for key in ("kernel", "bias"):
            np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Official-layout random-weight files, top and notop, deleted after the module."""
    folder = tmp_path_factory.mktemp("keras_parity")
    params = random_params(head=True)
    top = folder / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    notop = folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_official(top, params)
    write_official(notop, {n: params[n] for n in CONV_NAMES})
    yield {"params": params, "top": str(top), "notop": str(notop), "folder": folder}
    for path in folder.iterdir():
        path.unlink()


TOP_PROBES = (*CONV_PROBES, "fc1", "fc2", "predictions")
NOTOP_PROBES = (*CONV_PROBES, "block5_pool")
NOTOP_SIZE = 45  # odd, so every pool floors: 45 -> 22 -> 11 -> 5 -> 2 -> 1


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return {
        "top": rng.random((2, HEAD_SIZE, HEAD_SIZE, 3), np.float32),
        "notop": rng.random((2, NOTOP_SIZE, NOTOP_SIZE, 3), np.float32),
    }


@pytest.fixture(scope="module")
def keras_top(files, images):
    """Keras's VGG16 with the head on the official-layout file, and its activations."""
    model = keras.applications.VGG16(weights=files["top"], classifier_activation=None)
    return model, keras_acts(model, images["top"], TOP_PROBES)


@pytest.fixture(scope="module")
def keras_notop(files, images):
    model = keras.applications.VGG16(
        include_top=False, weights=files["notop"], input_shape=(NOTOP_SIZE, NOTOP_SIZE, 3)
    )
    return model, keras_acts(model, images["notop"], NOTOP_PROBES)


def test_official_layout_with_head_matches_keras(files, images, keras_top):
    model = jaxvis.vgg16(weights=files["top"])
    assert model.info.has_head and model.info.preprocessing == "caffe"
    assert_same_params(jax.tree_util.tree_map(np.asarray, model.params), files["params"])
    got = {n: np.asarray(a) for n, a in model.features(images["top"], "predictions").items()}
    ref = keras_top[1]
    # The random net must carry the image to the logits, or the check proves nothing.
    assert rel_err(ref["predictions"][0], ref["predictions"][1]) > 0.05
    check_parity("official top, 224 px", {n: got[n] for n in TOP_PROBES}, ref)


def test_channels_first_fc1_would_be_caught(files, images, keras_top):
    """Rows of fc1 in channels-first flatten order (as a Theano-era file holds them) must
    fail the parity check by a wide margin, so the check above has power."""
    params = keras_h5.load(files["top"])[0]
    kernel = params["fc1"]["kernel"]
    params["fc1"]["kernel"] = (
        kernel.reshape(7, 7, 512, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
    )
    got = jaxvis_acts(params, images["top"], ("block5_conv3", "predictions"))
    ref = keras_top[1]
    assert rel_err(got["block5_conv3"], ref["block5_conv3"]) <= TOL
    error = rel_err(got["predictions"], ref["predictions"])
    print(f"\nchannels-first fc1: predictions {error:.1e}")
    assert error > 1000 * TOL


@pytest.mark.parametrize("mistake", ["rgb_for_bgr", "block3_conv1_bias_zeroed"])
def test_other_mistakes_would_be_caught(files, images, keras_notop, mistake):
    """A channel-order or bias slip fails the conv-layer check too."""
    params = keras_h5.load(files["notop"])[0]
    if mistake == "rgb_for_bgr":
        params["block1_conv1"]["kernel"] = params["block1_conv1"]["kernel"][:, :, ::-1]
    else:
        params["block3_conv1"]["bias"] = np.zeros_like(params["block3_conv1"]["bias"])
    got = jaxvis_acts(params, images["notop"], NOTOP_PROBES)
    error = rel_err(got["block5_conv3"], keras_notop[1]["block5_conv3"])
    print(f"\n{mistake}: block5_conv3 {error:.1e}")
    assert error > 1000 * TOL


def test_keras3_full_model_h5_matches_keras(files, images, keras_top):
    """Keras 3's legacy writer (``model.save("x.h5")``): weights under ``model_weights``,
    datasets at ``block1_conv1/block1_conv1/kernel``."""
    path = str(files["folder"] / "keras3_model.h5")
    keras_top[0].save(path)
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        assert "layer_names" in group.attrs and "layer_names" not in f.attrs
        assert list(keras_h5._strings(group["fc1"], "weight_names")) == ["fc1/kernel", "fc1/bias"]
    params = keras_h5.load(path)[0]
    assert_same_params(params, files["params"])
    got = jaxvis_acts(params, images["top"], TOP_PROBES)
    check_parity("keras3 model.save h5, 224 px", got, keras_top[1])


def test_keras3_native_weights_h5_with_head(files, keras_top):
    path = str(files["folder"] / "keras3.weights.h5")
    keras_top[0].save_weights(path)
    with h5py.File(path, "r") as f:
        assert {"conv2d_12", "dense_2"} <= set(f["layers"])
    assert_same_params(keras_h5.load(path)[0], files["params"])


def test_official_notop_matches_keras_at_odd_size(files, images, keras_notop):
    model = jaxvis.vgg16(weights=files["notop"])
    assert not model.info.has_head
    acts = model.features(images["notop"], "block5_pool")
    got = {n: np.asarray(acts[n]) for n in NOTOP_PROBES}
    assert got["block5_pool"].shape == (2, 1, 1, 512)
    check_parity(f"official notop, {NOTOP_SIZE} px", got, keras_notop[1])


def test_keras3_root_level_legacy_h5_matches_keras(files, images, keras_notop):
    """The layout of Keras 2's ``save_weights("x.h5")``, written by Keras 3's legacy code."""
    from keras.src.legacy.saving import legacy_h5_format

    path = str(files["folder"] / "keras3_weights_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras_notop[0])
    got = jaxvis_acts(keras_h5.load(path)[0], images["notop"], NOTOP_PROBES)
    check_parity(f"keras3 legacy root h5, {NOTOP_SIZE} px", got, keras_notop[1])


def test_keras3_native_notop_loads_in_both(files, images, keras_notop):
    path = str(files["folder"] / "keras3_notop.weights.h5")
    keras_notop[0].save_weights(path)
    reloaded = keras.applications.VGG16(
        include_top=False, weights=path, input_shape=(NOTOP_SIZE, NOTOP_SIZE, 3)
    )
    ref = keras_acts(reloaded, images["notop"], NOTOP_PROBES)
    got = jaxvis_acts(keras_h5.load(path)[0], images["notop"], NOTOP_PROBES)
    check_parity(f"keras3 native .weights.h5 notop, {NOTOP_SIZE} px", got, ref)
