"""``jaxvis attribute`` and ``jaxvis export --overlay`` end to end, in-process, on three
tiny images with an untrained VGG16 at 32 px; every bad input is one line and exit 2.

Until jaxvis/cli.py registers the commands, :func:`run` adds them the way the CLI is
meant to (jaxvis/attribution/command.py); once it does, the CLI's own wiring is used.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import re

import h5py
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from jaxvis import cli
from jaxvis.attribution import attribute, command, flags
from jaxvis.attribution.images import load_image
from jaxvis.models import catalog

TARGET = "channel:block5_conv3:17"
TINY = ["--weights", "random", "--size", "32", "--batch", "2", "--target", TARGET, "--no-progress"]


def _with_commands(build):
    """``build_parser`` with ``attribute`` and ``export --overlay`` added if missing."""

    def patched():
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "attribute" not in sub.choices:
            command.add_parser(sub)
        export = sub.choices["export"]
        if "--overlay" not in export._option_string_actions:
            export.add_argument("--overlay", action="store_true")
            atlas_export = export.get_default("func")
            overlays = command.cmd_export_overlays
            export.set_defaults(func=lambda a: overlays(a) if a.overlay else atlas_export(a))
        return parser

    return patched


_load = functools.cache(catalog.load)  # one untrained VGG16 for every run of this module


def run(*argv) -> tuple[int, str, str]:
    """``jaxvis ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "build_parser", _with_commands(cli.build_parser))
        mp.setattr(catalog, "load", lambda spec, **kw: _load(spec, **kw))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main([str(a) for a in argv])
            except SystemExit as e:  # argparse's errors exit from parse_args
                code = e.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, err, words):
    assert code == 2, err
    assert err.startswith("jaxvis: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and words in err, err


def digest(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three small RGB images: chelsea the cat, mirrored, and noise."""
    folder = tmp_path_factory.mktemp("photos")
    cat = Image.fromarray(skdata.chelsea()).resize((56, 40))
    cat.save(folder / "cat.png")
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "cat_mirrored.jpg", quality=95)
    noise = np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    return folder


@pytest.fixture(scope="module")
def maps(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "maps.h5"
    code, stdout, err = run("attribute", photos, "--method", "gradcam", "--out", out, *TINY)
    assert code == 0, err
    assert stdout.strip() == str(out)
    return out


def test_attribute_writes_the_library_maps_in_folder_order(maps, photos):
    names = ["cat.png", "cat_mirrored.jpg", "noise.png"]
    with h5py.File(maps, "r") as f:
        assert [os.path.basename(p) for p in f["paths"].asstr()[()]] == names
        assert list(f["sha256"].asstr()[()]) == [digest(photos / n) for n in names]
        assert f["done"][()].tolist() == [1, 1, 1]
        assert list(f["targets"].asstr()[()]) == [TARGET] * 3
        description = json.loads(f.attrs["description"])
        assert description["method"] == "gradcam" and description["layer"] == "block5_conv2"
        assert json.loads(f.attrs["weights"])["source"] == "random"
        written = f["maps"][()]
    images = np.stack([load_image(str(photos / n), 32) for n in names])
    model = _load("vgg16", weights="random")
    expected = attribute(model, images, method="gradcam", target=TARGET)
    assert written.shape == (3, 32, 32) and np.isfinite(written).all()
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(written[0], written[2])  # the cat and the noise differ


def test_the_same_command_again_resumes_with_nothing_to_do(maps, photos):
    before = digest(maps)
    code, _, err = run("attribute", photos, "--method", "gradcam", "--out", maps, *TINY)
    assert code == 0 and err == ""
    assert digest(maps) == before


def test_a_changed_method_is_refused_and_the_file_kept(maps, photos):
    before = digest(maps)
    code, _, err = run("attribute", photos, "--method", "gradient", "--out", maps, *TINY)
    assert_one_line_error(code, err, "config.method")
    assert "pass --overwrite" in err and digest(maps) == before


def test_export_overlay_writes_overlays_and_a_sheet(maps, tmp_path):
    out = tmp_path / "overlays"
    code, stdout, err = run("export", maps, "--out", out, "--overlay")
    assert code == 0, err
    assert stdout.strip() == f"wrote 4 files to {out}"
    names = sorted(os.listdir(out))
    assert names == ["0_cat.jpg", "1_cat_mirrored.jpg", "2_noise.jpg", "sheet_000.jpg"]
    assert Image.open(out / "0_cat.jpg").size == (32, 32)
    code, _, err = run("export", maps, "--out", out, "--overlay")
    assert_one_line_error(code, err, "already exists; pass --force")


@pytest.fixture()
def gray_folder(photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.open(photos / "cat.png").save(folder / "a.png")
    Image.open(photos / "cat.png").convert("L").save(folder / "b.png")
    return folder


BAD = [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "gradcam", "--samples", "4"], "unknown option 'samples' for gradcam"),
    (["--method", "gradcam", "--target", "class:281"], "needs a model with a head"),
    (["--method", "gradcam", "--target", "wat:3"], "target"),
    (["--method", "gradcam", "--layer", "block9_conv1"], "block9_conv1"),
    (["--method", "gradcam", "--size", "8"], "size must be an integer >= 32"),
    (["--method", "gradcam", "--model", "resnet7"], "resnet7"),
    (["--method", "gradcam", "--size", "big"], "invalid int value: 'big'"),
    (["--method", "gradcam", "--score-batch", "4"], "unknown option 'score_batch' for gradcam"),
    (["--method", "gradient", "--no-resize"], "unknown option 'resize' for gradient"),
    (["--method", "scorecam", "--score-batch", "0"], "score_batch must be a positive integer"),
    (["--method", "smoothgrad", "--combine", "max"], "unknown combine 'max'"),
]


@pytest.mark.parametrize(("extra", "words"), BAD, ids=[w for _, w in BAD])
def test_bad_options_are_one_line_exit_2_and_no_file(photos, tmp_path, extra, words):
    out = tmp_path / "maps.h5"
    code, _, err = run("attribute", photos, "--out", out, *TINY, *extra)
    assert_one_line_error(code, err, words)
    assert os.listdir(tmp_path) == []


def test_bad_files_are_one_line_exit_2_and_no_file(photos, gray_folder, tmp_path):
    out = tmp_path / "maps.h5"
    cases = [
        ([gray_folder], out, "b.png is grayscale (mode L)"),
        ([tmp_path / "missing"], out, "no such image file or folder"),
        ([photos], tmp_path, "is not a file path"),
        ([photos], tmp_path / "no" / "maps.h5", "does not exist"),
    ]
    for inputs, dest, words in cases:
        code, _, err = run("attribute", *inputs, "--method", "gradcam", "--out", dest, *TINY)
        assert_one_line_error(code, err, words)
    assert sorted(os.listdir(tmp_path)) == ["mixed"]
    (tmp_path / "notes.h5").write_text("mine")
    code, _, err = run(
        "attribute",
        photos,
        "--method",
        "gradcam",
        "--out",
        tmp_path / "notes.h5",
        *TINY,
        "--overwrite",
    )
    assert_one_line_error(code, err, "not a jaxvis maps file")
    assert (tmp_path / "notes.h5").read_text() == "mine"


def test_every_method_option_has_a_flag_whose_help_names_its_methods():
    """Every option of jaxvis/attribution/specs.py has a flag; each flag's help starts with
    exactly the methods that take it and lists the valid values of specs.py."""
    from jaxvis.attribution import specs

    assert sorted(flags.OPTION_FLAGS) == sorted(specs.OPTIONS)
    takes = {
        o: [m for m in specs.METHODS if o in specs.resolve(m, {}).options] for o in specs.OPTIONS
    }
    helps = {name: kw["help"] for name, _, kw in flags.OPTIONS}
    for option, methods in takes.items():
        assert helps[option].startswith(", ".join(methods) + ": "), (option, methods)
    for option, valid in (
        ("reduce", specs.REDUCE),
        ("combine", specs.COMBINE),
        ("rule", specs.RULES),
    ):
        assert helps[option].endswith(": " + ", ".join(valid[:-1]) + " or " + valid[-1])


def test_no_resize_keeps_the_layer_size(photos, tmp_path):
    out = tmp_path / "small.h5"
    code, _, err = run(
        "attribute", photos, "--method", "gradcam", "--no-resize", "--out", out, *TINY
    )
    assert code == 0, err
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["description"])["resize"] is False
        written = f["maps"][()]
    assert written.shape == (3, 2, 2)  # block5_conv2 at 32 px
    model = _load("vgg16", weights="random")
    images = np.stack([load_image(str(photos / n), 32) for n in sorted(os.listdir(photos))])
    expected = attribute(model, images, method="gradcam", target=TARGET, resize=False)
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-6)


def test_score_batch_sets_memory_use_not_the_maps(photos, tmp_path):
    """Score-CAM of a block2 channel over block1_conv1's 64 channels, 7 masks at a time
    (the last batch short), equals the library's default of 32 at a time."""
    out, target = tmp_path / "score.h5", "channel:block2_conv1:pre:3"
    extra = ["--method", "scorecam", "--layer", "block1_conv1", "--score-batch", "7"]
    code, _, err = run("attribute", photos, *extra, "--out", out, *TINY, "--target", target)
    assert code == 0, err
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["description"])["score_batch"] == 7
        written = f["maps"][()]
    model = _load("vgg16", weights="random")
    images = np.stack([load_image(str(photos / n), 32) for n in sorted(os.listdir(photos))])
    expected = attribute(model, images, method="scorecam", target=target, layer="block1_conv1")
    np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert np.abs(written).max() > 0


def test_keepdims_writes_every_channel_and_exports(photos, tmp_path):
    out = tmp_path / "rgb.h5"
    code, _, err = run(
        "attribute", photos, "--method", "gradient", "--keepdims", "--out", out, *TINY
    )
    assert code == 0, err
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["description"])["keepdims"] is True
        written = f["maps"][()]
    assert written.shape == (3, 32, 32, 3)
    model = _load("vgg16", weights="random")
    images = np.stack([load_image(str(photos / n), 32) for n in sorted(os.listdir(photos))])
    expected = attribute(model, images, method="gradient", target=TARGET, keepdims=True)
    # Two programs compiled apart round differently: on an AVX2-only CPU 2 of the 9216
    # values differ by 1e-4 relative. A wrong channel, order or preprocessing is off by
    # the maps' own scale.
    np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    code, stdout, err = run("export", out, "--out", tmp_path / "png", "--format", "png")
    assert code == 0 and stdout.strip() == f"wrote 4 files to {tmp_path / 'png'}", err


def test_progress_counts_images_and_says_when_resuming(photos, tmp_path):
    out = tmp_path / "maps.h5"
    args = ["attribute", photos, "--method", "gradient", "--out", out, *TINY[:-1]]
    code, _, err = run(*args)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == "jaxvis: gradient 0/3 | total 0/3, ETA ?"
    assert re.fullmatch(r"jaxvis: done: 3/3 images in \d\d:\d\d", lines[-1]), err
    assert "filters" not in err and "unit" not in err
    code, _, err = run(*args)
    assert code == 0 and err == "jaxvis: resuming: 3 of 3 images are done\n"
