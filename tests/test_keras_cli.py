"""``jaxvis atlas|layers|export`` on a ``.keras`` file that the test saves: a user's own
Keras model, end to end, as a user would run it."""

from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxvis import cli  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":
    pytest.skip("these tests need KERAS_BACKEND=jax", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory):
    L = keras.layers
    x = inputs = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    x = L.MaxPooling2D(name="p1")(x)
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    rng = np.random.default_rng(0)
    for v in model.variables:
        v.assign(rng.normal(0, 0.5, tuple(v.shape)).astype("float32"))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


def test_layers_of_a_keras_file(tiny_keras, capsys):
    assert cli.main(["layers", "--model", tiny_keras]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[:3] for r in rows] == [
        ["c1", "conv", "4"],
        ["p1", "pool", "4"],
        ["c2", "conv", "6"],
        ["gap", "pool", "6"],
        ["head", "dense", "3"],
    ]
    assert rows[0][3:] == ["224x224x4", "(also", "c1:pre)"] and rows[-1][3] == "3"


def test_atlas_then_export_of_a_keras_file(tiny_keras, tmp_path, capsys):
    out, pics = tmp_path / "t.h5", tmp_path / "pics"
    argv = ["atlas", "--model", tiny_keras, "--layers", "c2", "--filters", "all"]
    argv += ["--size", "64", "--steps", "32", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert cli.main(["export", str(out), "--out", str(pics), "--grid"]) == 0
    names = sorted(os.listdir(pics))
    assert names == sorted([f"c2_{f}.jpg" for f in range(6)] + ["c2_grid.jpg"])
    with open(tiny_keras, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with h5py.File(out, "r") as f:
        weights = json.loads(f.attrs["weights"])
        assert f.attrs["model"] == "tiny" and weights["source"] == "keras-model"
        assert weights["sha256"] == digest and weights["preprocessing"] == "none"
        assert weights["framework"] == f"keras {keras.__version__}"
        layer = f["c2"]
        assert layer.attrs["objective"] == "channel(c2:pre)" and layer.attrs["output"] == "map"
        assert sorted(layer["filters"][()].tolist()) == list(range(6))
        images = layer["images"][()]
    assert images.shape == (6, 64, 64, 3) and images.std() > 5  # pictures, not flat grey
    # The same command again resumes: nothing to do, and the file is not rewritten.
    before = os.stat(out).st_mtime_ns
    assert cli.main(argv) == 0 and os.stat(out).st_mtime_ns == before
    # Another input convention is another run: refused with one line.
    assert cli.main(argv + ["--preprocess", "caffe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preprocessing" in err[0], err


def test_keras_files_refuse_built_in_options(tiny_keras, capsys):
    for extra, says in (
        (["--weights", "random"], "holds its own weights"),
        (["--dtype", "bfloat16"], "its own dtype policy"),
        (["--preprocess", "bgr"], "unknown preprocess 'bgr'"),
    ):
        argv = ["atlas", "--model", tiny_keras, "--layers", "c2", "--out", "x.h5", *extra]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
