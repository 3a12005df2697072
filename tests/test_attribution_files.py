"""Attribution I/O without a model: reading images, the maps file, overlays.

The maps file is checked with plain h5py, after real SIGKILLs of a writer, against a
changed run and against hostile files; overlays against matplotlib's own colormap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from PIL import Image

from jaxvis.attribution import images, overlay
from jaxvis.attribution.maps_file import MapsRun, MapsWriter, open_maps
from jaxvis.errors import JaxvisError

SIDE = 8
WEIGHTS = {"source": "random", "sha256": "", "preprocessing": "torchvision", "trained": False}


def make_run(n: int = 12, **changes) -> MapsRun:
    """A run of ``n`` fake images (they need not exist to write maps)."""
    listing = images.ImageList(
        tuple(f"/photos/{i:03d}.png" for i in range(n)),
        tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(n)),
        (("/photos/bad.jpg", "not an image"),),
    )
    run = MapsRun(
        model="vgg16",
        weights=WEIGHTS,
        dtype="float32",
        description={"method": "gradcam", "layer": "block5_conv3", "seed": 0, "resize": True},
        size=SIDE,
        images=listing,
        targets=("class:281",) * n,
    )
    return dataclasses.replace(run, **changes)


def expected_maps(indices) -> np.ndarray:
    """float32 [n, SIDE, SIDE]: map i is i + a ramp, so every row and pixel differs."""
    ramp = np.arange(SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE) / 100
    return np.stack([i + ramp for i in np.asarray(indices)]).astype(np.float32)


def save(path, array, **kw):
    Image.fromarray(np.asarray(array, np.uint8)).save(path, **kw)
    return str(path)


def sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# --- reading images --------------------------------------------------------------------


def test_folder_is_walked_in_sorted_order_with_sha256(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    (tmp_path / ".cache").mkdir()
    for name in ["b.png", "a.JPG", "sub/c.png", ".hidden.png", ".cache/d.png"]:
        save(tmp_path / name, rng.integers(0, 255, (9, 7, 3)), format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    warnings = []
    found = images.list_images([str(tmp_path)], warn=warnings.append)
    names = [os.path.relpath(p, tmp_path) for p in found.paths]
    assert names == ["a.JPG", "b.png", os.path.join("sub", "c.png")]
    assert list(found.sha256) == [sha(p) for p in found.paths]
    assert len(set(found.sha256)) == 3
    assert warnings == [f"ignored 1 files in {tmp_path} without an image extension"]


def test_resize_keeps_rows_colours_and_range(tmp_path):
    # 40 rows x 60 columns: red on top, blue at the bottom; a swapped H/W, BGR order or
    # a missing /255 would each break one of the checks.
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:20, :, 0] = 255
    pixels[20:, :, 2] = 255
    path = save(tmp_path / "rb.png", pixels)
    image = images.load_image(path, 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[:6].mean(axis=(0, 1)), [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(image[-6:].mean(axis=(0, 1)), [0, 0, 1], atol=1e-6)
    assert image.min() >= 0.0 and image.max() <= 1.0


@pytest.mark.parametrize(
    ("mode", "words"), [("L", "grayscale (mode L)"), ("RGBA", "RGBA, with transparency")]
)
def test_grayscale_and_rgba_are_refused_in_one_line(tmp_path, mode, words):
    shape = (8, 8) if mode == "L" else (8, 8, 4)
    save(tmp_path / "ok.png", np.zeros((8, 8, 3)))
    bad = [save(tmp_path / f"x{i}.png", np.zeros(shape)) for i in range(2)]
    with pytest.raises(JaxvisError, match="convert them to RGB") as e:
        images.list_images([str(tmp_path)], warn=lambda m: None)
    message = str(e.value)
    assert "\n" not in message and words in message and bad[0] in message
    assert "and 1 more images are not RGB" in message
    with pytest.raises(JaxvisError, match=re.escape(words)):
        images.list_images([bad[1]])


def test_unreadable_files_in_folders_are_skipped_named_ones_refused(tmp_path):
    good = save(tmp_path / "a.png", np.full((8, 8, 3), 9))
    (tmp_path / "b.jpg").write_bytes(b"this is not a jpeg")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "c.png").write_bytes(data[: len(data) // 2])
    warnings = []
    found = images.list_images([str(tmp_path)], warn=warnings.append)
    assert found.paths == (good,)
    assert [p for p, _ in found.skipped] == [str(tmp_path / "b.jpg"), str(tmp_path / "c.png")]
    assert len(warnings) == 2 and all(w.startswith("skipping ") for w in warnings)
    with pytest.raises(JaxvisError, match=r"cannot read .*b\.jpg as an image"):
        images.list_images([str(tmp_path / "b.jpg")])
    with pytest.raises(JaxvisError, match="no such image file or folder"):
        images.list_images([str(tmp_path / "nope.png")])


def test_chunks_stream_in_order_and_report_decode_failures(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(5):
        save(tmp_path / f"{k}.jpg", rng.integers(0, 255, (24, 24, 3)), format="JPEG")
    found = images.list_images([str(tmp_path)])
    whole = (tmp_path / "3.jpg").read_bytes()
    (tmp_path / "3.jpg").write_bytes(whole[: len(whole) // 2])  # body cut after listing
    batches = list(images.load_chunks(found, np.array([4, 0, 1, 3, 2]), size=8, chunk=2))
    assert [b.indices.tolist() for b in batches] == [[4, 0], [1], [2]]
    assert batches[1].failed.keys() == {3} and "changed" in batches[1].failed[3]
    np.testing.assert_array_equal(batches[0].images[1], images.load_image(found.paths[0], 8))
    assert all(b.images.shape == (len(b.indices), 8, 8, 3) for b in batches)


def test_truncated_jpeg_body_fails_at_decode(tmp_path):
    path = tmp_path / "t.jpg"
    save(path, np.random.default_rng(2).integers(0, 255, (64, 64, 3)), format="JPEG")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    found = images.list_images([str(path)])  # the header is fine
    (batch,) = images.load_chunks(found, np.array([0]), size=8, chunk=4)
    assert batch.indices.size == 0 and "truncated" in batch.failed[0]


# --- the maps file ---------------------------------------------------------------------


def write_all(path, run, chunk=5, **kw):
    with MapsWriter(path, run, **kw) as w:
        for start in range(0, len(run.images), chunk):
            idx = np.arange(start, min(start + chunk, len(run.images)))
            w.write(idx, expected_maps(idx))


def test_written_file_reads_back_with_plain_h5py(tmp_path):
    path = tmp_path / "maps.h5"
    run = make_run(6)
    with MapsWriter(path, run) as w:
        w.write(np.array([4, 1]), expected_maps([4, 1]))
        w.fail([2])
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "jaxvis-attribution-maps" and f.attrs["format_version"] == 1
        assert f.attrs["method"] == "gradcam" and f.attrs["image_size"] == SIDE
        assert json.loads(f.attrs["description"]) == run.description
        assert json.loads(f.attrs["weights"]) == WEIGHTS
        assert f["maps"].shape == (6, SIDE, SIDE) and f["maps"].dtype == np.float32
        assert f["maps"].chunks == (1, SIDE, SIDE) and f["maps"].maxshape == (None, SIDE, SIDE)
        assert f["done"][()].tolist() == [0, 1, 2, 0, 1, 0]
        np.testing.assert_array_equal(f["maps"][4], expected_maps([4])[0])
        np.testing.assert_array_equal(f["maps"][1], expected_maps([1])[0])
        assert np.isnan(f["maps"][0]).all() and np.isnan(f["maps"][2]).all()
        assert list(f["paths"].asstr()[()]) == list(run.images.paths)
        assert list(f["sha256"].asstr()[()]) == list(run.images.sha256)
        assert list(f["targets"].asstr()[()]) == ["class:281"] * 6
    with MapsWriter(path, run) as w:  # a resume redoes what is not done, failed included
        assert w.todo().tolist() == [0, 2, 3, 5]


WRITER = """
import os, signal, sys, time, types
import jaxvis
# The maps file needs no jax; skip the attribution package's __init__, which imports it.
package = types.ModuleType("jaxvis.attribution")
package.__path__ = [os.path.join(os.path.dirname(jaxvis.__file__), "attribution")]
sys.modules["jaxvis.attribution"] = package
sys.path.insert(0, {tests!r})
import numpy as np
from test_attribution_files import expected_maps, make_run
from jaxvis.attribution import maps_file

mode, path = sys.argv[1], sys.argv[2]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if mode == "create":
    os.replace = die  # inside the creating snapshot (jaxvis/atlas/snapshot.py), before its rename
w = maps_file.MapsWriter(path, make_run())
size = 1 if mode == "loop" else 3
chunks = [w.todo()[i:i + size] for i in range(0, len(w.todo()), size)]
for k, idx in enumerate(chunks):
    if mode == "between" and k == 2:
        w._mark = die  # after the maps are written and fsynced, before marking them done
    w.write(idx, expected_maps(idx))
    if mode == "loop":
        print("chunk", flush=True)
        time.sleep(0.02)
"""


def kill_writer(path, mode, after_lines=0):
    script = textwrap.dedent(WRITER).format(tests=os.path.dirname(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, mode, str(path)], stdout=subprocess.PIPE, env=env
    )
    for _ in range(after_lines):
        proc.stdout.readline()
    if mode == "loop":
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def finish_and_check(path):
    run = make_run()
    with MapsWriter(path, run) as w:
        todo = w.todo()
        w.write(todo, expected_maps(todo))
    with h5py.File(path, "r") as f:
        assert (f["done"][()] == 1).all()
        np.testing.assert_array_equal(f["maps"][()], expected_maps(np.arange(12)))
    return todo


def test_sigkill_between_maps_and_done_mark_resumes(tmp_path):
    path = tmp_path / "maps.h5"
    kill_writer(path, "between")
    with h5py.File(path, "r") as f:  # opens: the metadata was never touched
        done = f["done"][()]
        assert done.tolist() == [1] * 6 + [0] * 6
        np.testing.assert_array_equal(f["maps"][6], expected_maps([6])[0])  # written, not done
        assert np.isnan(f["maps"][9]).all()
    assert finish_and_check(path).tolist() == list(range(6, 12))


def test_sigkill_while_creating_leaves_nothing_then_resumes(tmp_path):
    path = tmp_path / "maps.h5"
    kill_writer(path, "create")
    assert not path.exists() and (tmp_path / "maps.h5.tmp").exists()
    assert finish_and_check(path).tolist() == list(range(12))
    assert not (tmp_path / "maps.h5.tmp").exists()


def test_sigkill_at_a_random_chunk_resumes(tmp_path):
    path = tmp_path / "maps.h5"
    kill_writer(path, "loop", after_lines=int(np.random.default_rng().integers(1, 3)))
    with h5py.File(path, "r") as f:
        done = f["done"][()] == 1
        np.testing.assert_array_equal(f["maps"][()][done], expected_maps(np.flatnonzero(done)))
    finish_and_check(path)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"description": {"method": "gradient", "seed": 0}}, "config.method"),
        ({"size": SIDE * 2}, "config.image_size"),
        ({"weights": {**WEIGHTS, "sha256": "ab"}}, "weights.sha256"),
        ({"dtype": "bfloat16"}, "config.dtype"),
        ({"targets": ("class:281",) * 11 + ("class:1",)}, "target 11"),
    ],
)
def test_a_changed_run_is_refused_naming_the_difference(tmp_path, change, named):
    path = tmp_path / "maps.h5"
    with MapsWriter(path, make_run()) as w:
        w.write([0], expected_maps([0]))
    before = sha(path)
    with pytest.raises(JaxvisError, match="pass --overwrite") as e:
        MapsWriter(path, make_run(**change))
    assert named in str(e.value) and "\n" not in str(e.value)
    assert sha(path) == before


def test_a_changed_image_list_is_refused(tmp_path):
    path = tmp_path / "maps.h5"
    run = make_run()
    with MapsWriter(path, run) as w:
        w.write([0], expected_maps([0]))
    hashes = list(run.images.sha256)
    hashes[3] = "f" * 64
    moved = dataclasses.replace(run.images, sha256=tuple(hashes))
    with pytest.raises(JaxvisError, match=r"image 3 \(/photos/003.png\)"):
        MapsWriter(path, dataclasses.replace(run, images=moved))
    fewer = dataclasses.replace(run.images, paths=run.images.paths[:5], sha256=hashes[:5])
    with pytest.raises(JaxvisError, match="12 images in the file, 5 now"):
        MapsWriter(path, dataclasses.replace(run, images=fewer, targets=run.targets[:5]))


def test_overwrite_builds_beside_and_replaces_at_the_end(tmp_path):
    path = tmp_path / "maps.h5"
    write_all(path, make_run())
    other = make_run(description={"method": "gradient", "seed": 0})
    with MapsWriter(path, other, overwrite=True) as w:
        w.write([0], expected_maps([0]) * 2)
        assert (tmp_path / "maps.h5.new").exists()
        with open_maps(path) as old:
            assert old.header.method == "gradcam"
    with open_maps(path) as new:
        assert new.header.description["method"] == "gradient" and new.done.sum() == 1
    assert not (tmp_path / "maps.h5.new").exists()


def hostile(path, how):
    write_all(path, make_run())
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
        return
    with h5py.File(path, "r+") as f:
        if how == "external link":
            f["sha256x"] = h5py.ExternalLink("/etc/passwd", "/x")
        elif how == "done values":
            f["done"][3] = 7
        elif how == "maps dtype":
            del f["maps"]
            f.create_dataset("maps", data=np.zeros((12, SIDE, SIDE), np.float64))
        elif how == "huge maps":
            del f["maps"]
            f.create_dataset("maps", (10**6, SIDE, SIDE), "<f4", chunks=(1, SIDE, SIDE))
        elif how == "bad sha256":
            del f["sha256"]
            f.create_dataset("sha256", data=["x\x1b[31m"] * 12, dtype=h5py.string_dtype())
        elif how == "description":
            f.attrs["description"] = "[1, 2"
        elif how == "atlas":
            f.attrs["format"] = "jaxvis-atlas"
        elif how == "version":
            f.attrs["format_version"] = 99


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("truncated", "cannot open"),
        ("external link", "an external link /sha256x"),
        ("done values", "done is other values"),
        ("maps dtype", "expected float32"),
        ("huge maps", "raw, preallocated maps"),
        ("bad sha256", "64 lowercase hex"),
        ("description", "not valid JSON"),
        ("atlas", "is a jaxvis atlas, not an attribution maps file"),
        ("version", "upgrade jaxvis"),
    ],
)
def test_hostile_or_malformed_files_are_refused_in_one_line(tmp_path, how, words):
    path = tmp_path / "maps.h5"
    hostile(path, how)
    before = sha(path)
    for attempt in (lambda: open_maps(path), lambda: MapsWriter(path, make_run())):
        with pytest.raises(JaxvisError, match=words) as e:
            attempt()
        assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert sha(path) == before


def test_a_file_that_is_not_a_maps_file_is_never_touched(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(JaxvisError, match="not a jaxvis maps file"):
            MapsWriter(path, make_run(), overwrite=overwrite)
    assert path.read_text() == "my notes"
    with pytest.raises(JaxvisError, match="does not exist"):
        MapsWriter(tmp_path / "no" / "maps.h5", make_run())


# --- overlays --------------------------------------------------------------------------


def test_overlay_applies_the_colormap_hot_and_cold():
    from matplotlib import colormaps

    image = np.full((16, 16, 3), 0.5, np.float32)
    m = np.zeros((16, 16), np.float32)
    m[:4, :4] = -3.0  # hot whatever the sign
    picture = overlay.overlay(image, m, colormap="inferno", alpha=0.5)
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    hot, cold = (np.asarray(colormaps["inferno"](v)[:3]) * 255 for v in (1.0, 0.0))
    np.testing.assert_allclose(picture[1, 1], 0.5 * 127.5 + 0.5 * hot, atol=1.0)
    np.testing.assert_allclose(picture[12, 12], 0.5 * 127.5 + 0.5 * cold, atol=1.0)
    assert np.abs(picture[1, 1].astype(int) - picture[12, 12]).sum() > 150
    small = overlay.overlay(image, m[::4, ::4], colormap="viridis")  # a 4x4 map, resized
    assert small.shape == (16, 16, 3) and not (small == small[0, 0]).all()


def test_normalize_uses_the_99th_percentile_per_image():
    m = np.linspace(0, 1, 1000, dtype=np.float32).reshape(40, 25)
    m[0, 0] = 1000.0  # one outlier does not wash out the rest
    values = overlay.normalize(m)
    assert values.max() == 1.0 and values[0, 0] == 1.0
    p99 = np.percentile(np.abs(m), 99)
    np.testing.assert_allclose(values[20, 10], m[20, 10] / p99, rtol=1e-5)
    assert (overlay.normalize(np.zeros((4, 4))) == 0).all()


def test_without_matplotlib_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(JaxvisError, match=r'pip install "jaxvis\[site\]"'):
        overlay.heatmap(np.zeros((2, 2)))
    with pytest.raises(JaxvisError, match="valid colormaps: inferno, viridis"):
        overlay.heatmap(np.zeros((2, 2)), "jet")


def test_export_writes_overlays_and_a_captioned_sheet(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["cat.png", "dog.png", "eel.png"]:
        save(folder / name, rng.integers(0, 255, (12, 10, 3)))
    run = make_run(3, images=images.list_images([str(folder)]))
    path = tmp_path / "maps.h5"
    with MapsWriter(path, run) as w:
        w.write([0, 2], expected_maps([0, 2]))  # dog's map is not done
    out = tmp_path / "out"
    written = overlay.export_overlays(path, out, warn=print)
    assert [os.path.basename(p) for p in written] == ["0_cat.jpg", "2_eel.jpg", "sheet_000.jpg"]
    assert Image.open(written[0]).size == (SIDE, SIDE)
    sheet = np.asarray(Image.open(written[2]))
    assert sheet.shape[1] >= 2 * overlay.MIN_TILE  # two tiles, enlarged for their captions
    caption = sheet[overlay.MIN_TILE + 4 : overlay.MIN_TILE + overlay.CAPTION_HEIGHT]
    assert (caption < 100).any()  # black caption text on white
    with pytest.raises(JaxvisError, match="already exists; pass --force"):
        overlay.export_overlays(path, out)
    os.remove(folder / "eel.png")
    with pytest.raises(JaxvisError, match="eel.png of .* is missing"):
        overlay.export_overlays(path, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_reading_and_exporting_a_maps_file_does_not_import_jax(tmp_path):
    """The maps file package (jaxvis/attribution/maps_file/) and the overlay export need
    h5py, numpy, Pillow and matplotlib only, through the CLI as through the library."""
    folder = tmp_path / "photos"
    folder.mkdir()
    save(folder / "cat.png", np.random.default_rng(4).integers(0, 255, (12, 10, 3)))
    path = tmp_path / "maps.h5"
    with MapsWriter(path, make_run(1, images=images.list_images([str(folder)]))) as w:
        w.write([0], expected_maps([0]))
    code = textwrap.dedent(f"""
        import sys
        from jaxvis.attribution.maps_file import open_maps
        from jaxvis.cli import main
        with open_maps({str(path)!r}) as f:
            f.header, f.paths, f.map(0)
        assert main(["export", {str(path)!r}, "--out", {str(tmp_path / "o")!r}]) == 0
        assert "jax" not in sys.modules, sorted(m for m in sys.modules if "jax" in m)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert sorted(os.listdir(tmp_path / "o")) == ["0_cat.jpg", "sheet_000.jpg"]
