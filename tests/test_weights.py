"""Weight sources: the embedded checkpoint, the safe unpickler, Keras files, the download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pathlib
import pickle
import socket
import sys
import threading

import h5py
import numpy as np
import pytest

from jaxvis.errors import JaxvisError
from jaxvis.models import fetch, keras_h5, torchvision_ckpt
from jaxvis.models.vgg16 import CONV_NAMES


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(JaxvisError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# The embedded torchvision checkpoint.


def test_embedded_checkpoint_values():
    params, digest = torchvision_ckpt.load()
    assert digest == torchvision_ckpt.SHA256
    assert list(params) == list(CONV_NAMES)
    # torchvision vgg16 IMAGENET1K_V1, features.0.bias[:4].
    np.testing.assert_allclose(
        params["block1_conv1"]["bias"][:4], [0.4034, 0.3778, 0.4644, -0.3228], atol=1e-4
    )
    assert params["block1_conv1"]["kernel"].shape == (3, 3, 3, 64)
    assert params["block5_conv3"]["kernel"].shape == (3, 3, 512, 512)


def test_embedded_checkpoint_with_one_flipped_byte_is_refused(tmp_path):
    data = bytearray(pathlib.Path(torchvision_ckpt.locate()).read_bytes())
    good = tmp_path / "good.ckpt"
    good.write_bytes(data)
    torchvision_ckpt.load(str(good))  # a faithful copy loads
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data)
    message = one_line_error(torchvision_ckpt.load, str(bad))
    assert torchvision_ckpt.SHA256 in message and hashlib.sha256(data).hexdigest() in message


# The restricted unpickler.


class _Payload:
    """Unpickles to ``fn(*args)``: how a malicious pickle runs code."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_restricted_load_admits_numeric_arrays():
    tree = {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), (3, True, 2.5)]}
    loaded = torchvision_ckpt.restricted_load(pickle.dumps(tree, protocol=3))
    np.testing.assert_array_equal(loaded["a"][0], tree["a"][0])


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.exec", "nested"])
def test_restricted_load_refuses_code_and_never_runs_it(tmp_path, kind):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    payload = {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.eval": _Payload(eval, code),
        "builtins.exec": _Payload(exec, code),
        "nested": {"VGG16_0": {"Conv_0": {"kernel": np.zeros(3), "bias": _Payload(eval, code)}}},
    }[kind]
    data = pickle.dumps(payload, protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        torchvision_ckpt.restricted_load(data)
    assert not marker.exists()
    pickle.loads(data)  # the payload does work when unpickled without restriction
    assert marker.exists()


def test_restricted_load_refuses_object_arrays():
    data = pickle.dumps(np.array([1, "a", None], dtype=object), protocol=3)
    with pytest.raises(pickle.UnpicklingError, match="non-numeric dtype"):
        torchvision_ckpt.restricted_load(data)


# Keras HDF5 files. Datasets without data cost no disk: they read back as their fill value,
# so a file with VGG16's real shapes takes a few kilobytes.


def write_legacy(path, layers: dict, style: str = "official", root: str = "") -> None:
    """A Keras legacy HDF5 file of ``{layer: (kernel shape, bias shape) or None}``.

    Every kernel reads as its layer's index, so tests can tell where a layer landed.
    """
    names = {
        "official": lambda n: [f"{n}_W_1:0", f"{n}_b_1:0"],  # keras-applications files
        "keras2": lambda n: [f"{n}/kernel:0", f"{n}/bias:0"],
        "keras3": lambda n: [f"{n}/kernel", f"{n}/bias"],
    }[style]
    with h5py.File(path, "w") as f:
        group = f.create_group(root) if root else f
        group.attrs["layer_names"] = [n.encode() for n in layers]
        for i, (name, shapes) in enumerate(layers.items()):
            layer = group.create_group(name)
            keys = names(name) if shapes else []
            layer.attrs["weight_names"] = np.array([k.encode() for k in keys], dtype="S")
            for key, shape in zip(keys, shapes or (), strict=True):
                layer.create_dataset(key, shape, np.float32, fillvalue=float(i))


VGG_SHAPES = keras_h5._expected_shapes(head=True)
NOTOP = {"input_1": None, **{n: VGG_SHAPES[n] for n in CONV_NAMES}, "block5_pool": None}


@pytest.mark.parametrize(
    ("style", "root"), [("official", ""), ("keras2", ""), ("keras3", "model_weights")]
)
def test_legacy_layouts_map_layers_by_name(tmp_path, style, root):
    path = tmp_path / "w.h5"
    layers = {**NOTOP, "flatten": None, **{n: VGG_SHAPES[n] for n in ("fc1", "fc2")}}
    layers["predictions"] = VGG_SHAPES["predictions"]
    write_legacy(path, layers, style, root)
    params, digest = keras_h5.load(str(path))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(params) == [*CONV_NAMES, "fc1", "fc2", "predictions"]
    index = {name: i for i, name in enumerate(layers)}
    for name, p in params.items():
        assert p["kernel"].shape == VGG_SHAPES[name][0] and p["kernel"].dtype == np.float32
        assert p["kernel"].flat[0] == index[name], name


def test_keras3_native_layout_maps_by_position(tmp_path):
    """``layers/conv2d_10`` is the 11th conv layer (block5_conv1): numeric, not text order."""
    path = tmp_path / "w.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers/input_layer/vars")
        f.create_group("layers/max_pooling2d_4/vars")
        for i, name in enumerate(CONV_NAMES):
            group = f.create_group(f"layers/conv2d{f'_{i}' if i else ''}/vars")
            for key, shape in zip("01", VGG_SHAPES[name], strict=True):
                group.create_dataset(key, shape, np.float32, fillvalue=float(i))
    params, _ = keras_h5.load(str(path))
    assert list(params) == list(CONV_NAMES)
    for i, name in enumerate(CONV_NAMES):
        assert params[name]["kernel"].flat[0] == i and params[name]["bias"].flat[0] == i


def test_mismatch_lists_missing_extra_and_wrong_shapes(tmp_path):
    path = tmp_path / "w.h5"
    layers = dict(NOTOP)
    del layers["block2_conv2"], layers["block4_conv1"]
    layers["block1_conv1"] = ((3, 3, 3, 32), (32,))
    layers["block6_conv1"] = ((3, 3, 512, 512), (512,))
    write_legacy(path, layers)
    message = one_line_error(keras_h5.load, str(path))
    assert message == (
        f"weights file {path} does not match vgg16: missing [block2_conv2, block4_conv1]; "
        "extra [block6_conv1]; wrong shapes [block1_conv1 kernel (3,3,3,32) != (3,3,3,64), "
        "block1_conv1 bias (32,) != (64,)]"
    )


def test_partial_head_names_the_missing_head_layers(tmp_path):
    path = tmp_path / "w.h5"
    write_legacy(path, {**NOTOP, "fc1": VGG_SHAPES["fc1"]})
    message = one_line_error(keras_h5.load, str(path))
    assert message.endswith("missing [fc2, predictions]")


def test_channels_first_kernels_are_wrong_shapes(tmp_path):
    path = tmp_path / "w.h5"
    layers = dict(NOTOP, block1_conv1=((64, 3, 3, 3), (64,)))  # Theano "th_kernels" order
    write_legacy(path, layers)
    assert "wrong shapes [block1_conv1 kernel (64,3,3,3) != (3,3,3,64)]" in one_line_error(
        keras_h5.load, str(path)
    )


def test_unreadable_files(tmp_path):
    assert "not found" in one_line_error(keras_h5.load, str(tmp_path / "missing.h5"))
    assert "not a file" in one_line_error(keras_h5.load, str(tmp_path))
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5\n" * 100)
    assert "file signature not found" in one_line_error(keras_h5.load, str(text))
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    assert "not a Keras weights file" in one_line_error(keras_h5.load, str(plain))


def test_truncated_file(tmp_path):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:  # real data, so the file has a body to cut
        f.attrs["layer_names"] = [b"block1_conv1"]
        f.create_group("block1_conv1").attrs["weight_names"] = [b"k", b"b"]
        f["block1_conv1/k"] = np.ones((3, 3, 3, 64), np.float32)
        f["block1_conv1/b"] = np.ones(64, np.float32)
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) * 2 // 3])
    message = one_line_error(keras_h5.load, str(cut))
    assert str(cut) in message and "truncated" in message


# Downloads, from a local HTTP server only.


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        _Handler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serves ``tmp_path/srv`` on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "srv"
    folder.mkdir()
    handler = functools.partial(_Handler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Handler.requests = []
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def served(server):
    """A 300 KB file on the server: (url, md5, bytes)."""
    folder, base = server
    data = np.random.default_rng(0).bytes(300_000)
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    (folder / name).write_bytes(data)
    return f"{base}/{name}", hashlib.md5(data).hexdigest(), data


def test_fetch_downloads_verifies_and_reuses(tmp_path, served, capsys):
    url, md5, data = served
    cache = tmp_path / "cache"
    path = fetch.fetch("notop", cache_dir=str(cache), url=url, md5=md5)
    assert pathlib.Path(path).read_bytes() == data
    assert os.listdir(cache) == [os.path.basename(path)]  # no temporary file left
    assert "jaxvis: downloaded" in capsys.readouterr().err
    assert fetch.fetch("notop", cache_dir=str(cache), url=url, md5=md5, progress=False) == path
    assert len(_Handler.requests) == 1  # the cached copy was used
    with open(path, "r+b") as f:  # a damaged cached copy is downloaded again
        f.write(b"\0")
    fetch.fetch("notop", cache_dir=str(cache), url=url, md5=md5, progress=False)
    assert len(_Handler.requests) == 2 and pathlib.Path(path).read_bytes() == data


def test_fetch_bad_md5_leaves_nothing(tmp_path, served):
    url, md5, _ = served
    cache = tmp_path / "cache"
    message = one_line_error(fetch.fetch, "notop", cache_dir=str(cache), url=url, md5="0" * 32)
    assert f"MD5 {md5}" in message and "0" * 32 in message
    assert os.listdir(cache) == []


def test_fetch_network_failures_are_one_line(tmp_path, server):
    _, base = server
    cache = str(tmp_path / "cache")
    message = one_line_error(fetch.fetch, "top", cache_dir=cache, url=f"{base}/nope.h5")
    assert "404" in message
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = one_line_error(
        fetch.fetch, "top", cache_dir=cache, url=f"http://127.0.0.1:{port}/x.h5"
    )
    assert "could not download" in message
    assert os.listdir(cache) == []


def test_fetch_cache_dir_and_choices(tmp_path, served, monkeypatch):
    url, md5, _ = served
    monkeypatch.setenv("JAXVIS_CACHE", str(tmp_path / "env"))
    path = fetch.fetch("notop", url=url, md5=md5, progress=False)
    assert os.path.dirname(path) == str(tmp_path / "env")
    assert "valid: top, notop" in one_line_error(fetch.fetch, "tops")
    assert fetch.MD5 == {
        "top": "64373286793e3c8b2b4e3219cbf3544b",
        "notop": "6d6bbae143d832006294945121d1f1fc",
    }


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_fetch_progress_in_logs_is_plain_lines(tmp_path, served, capsys):
    url, md5, _ = served
    fetch.fetch("notop", cache_dir=str(tmp_path), url=url, md5=md5)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == f"jaxvis: downloading {os.path.basename(url)} (0.3 MB)"
    assert lines[1].startswith(f"jaxvis: downloaded {os.path.basename(url)}, 0.3 MB in ")
    assert len(lines) == 2


def test_fetch_progress_on_a_terminal_is_a_tqdm_bar(tmp_path, served, monkeypatch):
    url, md5, _ = served
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    fetch.fetch("notop", cache_dir=str(tmp_path), url=url, md5=md5)
    text = term.getvalue()
    assert text.startswith("\r" + os.path.basename(url)) and text.endswith("\n")
    assert "100%" in text.split("\r")[-1] and "300k/300k" in text  # bytes, unit-scaled


def test_fetch_without_progress_is_silent(tmp_path, served, monkeypatch, capsys):
    url, md5, _ = served
    monkeypatch.setattr(sys, "stderr", _Terminal())
    fetch.fetch("notop", cache_dir=str(tmp_path / "a"), url=url, md5=md5, progress=False)
    assert sys.stderr.getvalue() == ""
    monkeypatch.undo()
    fetch.fetch("notop", cache_dir=str(tmp_path / "b"), url=url, md5=md5, progress=False)
    assert capsys.readouterr().err == ""


def test_fetch_progress_says_when_a_download_stops():
    log = io.StringIO()
    with pytest.raises(OSError), fetch._meter("w.h5", 2_000_000, True, log) as update:
        update(500_000)
        raise OSError("connection reset")
    assert log.getvalue().splitlines() == [
        "jaxvis: downloading w.h5 (2.0 MB)",
        "jaxvis: download of w.h5 stopped after 0.5 MB",
    ]
