"""The static site (jaxvis/site): pages, sprite sheets, plots, names, files, rebuilds.

Atlases here are synthetic (random pictures written through AtlasWriter), so nothing
compiles; tests/test_site_browser.py opens a site of a real atlas in Chromium.
"""

from __future__ import annotations

import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from chunks import make_chunk
from PIL import Image

from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.errors import JaxvisError
from jaxvis.site import SiteOptions, build_site, layout, pages, plots, sprites
from jaxvis.site.files import MANIFEST
from jaxvis.site.names import json_script, layer_stems
from jaxvis.site.source import LayerData

PROV = {
    "model": "vgg16",
    "weights": {"source": "random", "sha256": "", "preprocessing": "torchvision",
                "has_head": False, "trained": False, "path": "", "seed": 0},
    "config": {"preset": "lucid", "size": 8, "steps": 5, "seed": 0},
    "device_kind": "cpu:test x1",
}  # fmt: skip
HOSTILE = "<script>alert(1)</script> ../\"'x"  # a name no atlas can hold: it has '/'
PNG = SiteOptions(image_format="png", workers=1)


def add_units(path, layer, units, *, n=100, size=8, steps=5, failed=None, seed=0):
    """Appends ``units`` of ``layer`` (random pictures, rising curves) to the atlas."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(units), size, size, 3), dtype=np.uint8)
    history = np.cumsum(rng.random((len(units), steps)), axis=1).astype(np.float32)
    chunk = make_chunk(layer, units, images, history[:, -1], history, seconds=2.0,
                       failed=failed or {})  # fmt: skip
    with AtlasWriter(path, provenance=PROV) as w:
        w.write_chunk(layer, chunk, num_filters_in_layer=n)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """Two layers: conv1 with 70 units (two sprite blocks) and a failed one; conv2 small."""
    path = str(tmp_path_factory.mktemp("atlas") / "a.h5")
    add_units(path, "conv1", list(range(3, 73)), failed={1: "objective became NaN at step 3"})
    add_units(path, "conv2", [5, 0, 2], n=8, seed=1)
    return path


@pytest.fixture(scope="module")
def site(atlas, tmp_path_factory):
    """The site of ``atlas``, built once (PNG, so pictures compare exactly)."""
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(atlas, out, PNG)
    return out


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


class _Text(html.parser.HTMLParser):
    """The text of the element with a given id (the browser's view of the name)."""

    def __init__(self, ident):
        super().__init__()
        self.ident, self.depth, self.text, self.ids = ident, 0, "", []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.append(attrs.get("id"))
        if self.depth or attrs.get("id") == self.ident:
            self.depth += 1

    def handle_endtag(self, tag):
        self.depth = max(0, self.depth - 1)

    def handle_data(self, data):
        if self.depth:
            self.text += data


def text_of(page: str, ident: str) -> str:
    parser = _Text(ident)
    parser.feed(page)
    return parser.text


def fake_layer(name, n=3, per_unit=1, size=4) -> LayerData:
    """A layer that no HDF5 file could hold (names with '/'), for the pure functions."""
    shape = (n, per_unit, size, size, 3) if per_unit > 1 else (n, size, size, 3)
    images = np.arange(np.prod(shape), dtype=np.int64).reshape(shape) % 251
    return LayerData(
        name=name, stem=layer_stems([name])[name], objective_description=f"channel({name})",
        num_filters=n + 1, num_requested=n + 1, image_size=size, steps=4, seconds=1.0,
        filters=np.arange(n), objective=np.array([0.5, np.nan, np.inf][:n], np.float32),
        history=np.zeros((n, 4), np.float32), images=images.astype(np.uint8),
        failed={n: f"failed </script><b>{name}</b>"}, snapshots=None, snapshot_every=0,
    )  # fmt: skip


def test_hostile_names_are_text_in_html_and_json():
    layer = fake_layer(HOSTILE)
    page = pages.layer_page(layer, PNG)
    assert "<script>alert" not in page and "</script><b>" not in page
    assert text_of(page, "layer-name") == HOSTILE  # what a browser shows: the name itself
    data = re.search(r'<script id="site-data" type="application/json">(.*?)</script>', page, re.S)
    assert "<" not in data.group(1)  # so "</script" cannot end the data early
    parsed = json.loads(data.group(1))
    assert parsed["layer"] == HOSTILE
    assert parsed["units"][-1][3] == f"failed </script><b>{HOSTILE}</b>"
    assert parsed["units"][1][1] is None and parsed["units"][2][1] is None  # nan, inf
    index = pages.index_page({**open_prov(), "model": HOSTILE}, [layer], PNG)
    assert "<script>alert" not in index and HOSTILE not in index
    assert json_script("\u2028</script>") == '"\\u2028\\u003c/script\\u003e"'


def open_prov():
    return {"model": "m", "weights": PROV["weights"], "config": {"a": 1}, "device_kind": "cpu",
            "device_kinds": ["cpu"], "created": "2026-01-01", "jaxvis_version": "0"}  # fmt: skip


def test_layer_stems_stay_inside_the_folder(tmp_path):
    names = [HOSTILE, "..", ".", "a/../../b", "block1_conv1", "Conv", "conv", "index", "ASSETS",
             "x.y", "naïve", "", "-"]  # fmt: skip
    stems = layer_stems(names)
    assert stems["block1_conv1"] == "block1_conv1"
    assert len(set(stems.values())) == len(names)
    assert len({s.lower() for s in stems.values()}) == len(names)  # case-insensitive disks
    root = os.path.realpath(tmp_path)
    for stem in stems.values():
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", stem) and stem not in (".", "..")
        for rel in (f"{stem}.html", layout.path(stem, "jpg", "full", k=0)):
            assert os.path.realpath(os.path.join(root, rel)).startswith(root + os.sep)


def test_sheets_hold_each_unit_at_its_cell(atlas, site):
    with open_atlas(atlas) as a:
        view = a["conv1"]
        for row, unit in enumerate(view.filters.tolist()):
            block, col, r = layout.cell(row)
            full = read_png(site / layout.path("conv1", "png", "full", k=block))
            assert full.shape[1] == 8 * sprites.COLUMNS
            cell = full[r * 8 : (r + 1) * 8, col * 8 : (col + 1) * 8]
            np.testing.assert_array_equal(cell, view.image(unit), err_msg=f"unit {unit}")
        thumbs = read_png(site / "conv1" / "thumbs-1.png")
        assert thumbs.shape == (8, 8 * 8, 3)  # block 1: rows 64-69, one sheet row
        np.testing.assert_array_equal(thumbs[:, 8:16], view.images[65])


def test_thumbnails_shrink_by_area():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    images[0, :4] = 200  # top half
    small = sprites.thumbnails(images, 4)
    np.testing.assert_array_equal(small[0, :2], 200)
    np.testing.assert_array_equal(small[0, 2:], 0)


def test_layer_page_lists_every_unit(atlas, site):
    page = (site / "conv1.html").read_text()
    cells = re.findall(r'<a class="unit" id="cell-(\d+)" href="#unit-(\d+)"', page)
    assert [int(c) for c, h in cells] == [1, *range(3, 73)]
    assert all(c == h for c, h in cells)
    assert 'title="objective became NaN at step 3"' in page
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page).group(1))
    with open_atlas(atlas) as a:
        view = a["conv1"]
        for unit, objective, row, message in data["units"]:
            if unit == 1:
                assert (objective, row, message) == (None, None, "objective became NaN at step 3")
            else:
                assert view.filters[row] == unit
                assert objective == pytest.approx(float(view.objective[row]), rel=1e-5)
    assert data["paths"]["full"] == "conv1/full-{k}.png"
    assert len(re.findall(r'loading="lazy"', page)) == 70  # every thumbnail, not the failed


def test_index_shows_provenance_and_layers(site):
    page = (site / "index.html").read_text()
    assert "UNTRAINED" in page and "cpu:test x1" in page and "config preset" in page
    rows = re.findall(r'<a class="layer-link" href="([^"]+)">([^<]+)</a>', page)
    assert rows == [("conv1.html", "conv1"), ("conv2.html", "conv2")]
    conv2 = page[page.index("conv2.html") :]
    assert "<td>3</td><td>0</td><td>3</td><td>8</td>" in conv2  # done, failed, requested, in
    assert "4.0 s over all chunks" in page  # one chunk of 2 s in each layer
    strip = re.findall(r'href="conv2\.html#unit-(\d+)"', page)
    assert strip == ["0", "2", "5"]


def test_curve_png_is_a_plot_of_the_history():
    rising = plots.curve_png(np.linspace(0.0, 5.0, 50))
    picture = np.asarray(Image.open(io.BytesIO(rising)).convert("RGB")).astype(int)
    assert picture.shape == (plots.HEIGHT, plots.WIDTH, 3)
    line = np.all(np.abs(picture - [0x1F, 0x5F, 0xA8]) < 40, axis=-1)
    ys, xs = np.nonzero(line)
    left, right = ys[xs < np.percentile(xs, 20)].mean(), ys[xs > np.percentile(xs, 80)].mean()
    assert left > right + 50  # rises: larger values are drawn higher (smaller row)
    box_left = plots.AXES_BOX[0] * picture.shape[1]
    assert abs(xs.min() - box_left) < 4  # step 1 sits on the axes' left edge
    falling = plots.curve_png(np.linspace(5.0, 0.0, 50))
    assert falling != rising


def test_rebuild_rewrites_only_what_changed(atlas, site, tmp_path):
    path, out = str(tmp_path / "a.h5"), tmp_path / "site"
    shutil.copy(atlas, path)
    shutil.copytree(site, out)
    again = build_site(path, out, PNG)
    assert again.written == [] and again.removed == [] and "conv1/full-0.png" in again.kept
    add_units(path, "conv1", [80, 81], seed=3)
    grown = build_site(path, out, PNG)
    assert sorted(grown.written) == [
        "conv1.html", "conv1/full-1.png", "conv1/plot-80.png", "conv1/plot-81.png",
        "conv1/thumbs-1.png", "index.html",
    ]  # fmt: skip
    assert "conv1/full-0.png" in grown.kept and "conv2/full-0.png" in grown.kept
    jpeg = build_site(path, out, SiteOptions(workers=1))
    assert "conv1/full-0.jpg" in jpeg.written and "conv1/full-0.png" in jpeg.removed
    assert not any(rel.startswith("conv1/plot") for rel in jpeg.written)
    assert not (out / "conv1" / "full-0.png").exists()


def snapshot_tree(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            full = os.path.join(folder, name)
            out[full] = os.stat(full).st_mtime_ns
    return out


def test_nothing_is_written_outside_the_folder(tmp_path):
    path = str(tmp_path / "a.h5")
    add_units(path, "conv1", [0, 1])
    with h5py.File(path, "r+") as f:  # names HDF5 allows but the writer refuses
        for name in ("..", "<img src=x onerror=alert(1)>\"'", ".hidden"):
            f.copy(f["conv1"], name)
    before = snapshot_tree(tmp_path)
    summary = build_site(path, tmp_path / "site", PNG)
    after = snapshot_tree(tmp_path)
    new = set(after) - set(before)
    site = str(tmp_path / "site") + os.sep
    assert new and all(p.startswith(site) for p in new)
    assert {p: before[p] for p in before} == {p: after[p] for p in before}
    assert summary.layers == 4
    page = (tmp_path / "site" / "index.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;" in page and "<img src=x" not in page


def test_links_in_the_folder_are_not_followed(tmp_path):
    path = str(tmp_path / "a.h5")
    add_units(path, "conv1", [0, 1])
    build_site(path, tmp_path / "site", PNG)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "site" / "conv1" / "full-0.png").unlink()
    os.symlink(outside / "x.png", tmp_path / "site" / "conv1" / "full-0.png")
    build_site(path, tmp_path / "site", PNG)  # the link is replaced, not written through
    assert list(outside.iterdir()) == []
    assert not os.path.islink(tmp_path / "site" / "conv1" / "full-0.png")
    for child in (tmp_path / "site" / "conv1").iterdir():
        child.unlink()
    (tmp_path / "site" / "conv1").rmdir()
    os.symlink(outside, tmp_path / "site" / "conv1")
    with pytest.raises(JaxvisError, match="is a link"):
        build_site(path, tmp_path / "site", PNG)
    assert list(outside.iterdir()) == []


def test_refuses_a_folder_that_is_not_a_site(atlas, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(JaxvisError, match="not empty and holds no jaxvis site"):
        build_site(atlas, tmp_path, PNG)
    assert os.listdir(tmp_path) == ["notes.txt"]
    quick = SiteOptions(image_format="png", plots=False)
    manifest = tmp_path / "site" / MANIFEST
    build_site(atlas, tmp_path / "site", quick)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    data = json.loads(manifest.read_text())
    data["files"]["../victim.txt"] = "x"  # a tampered manifest cannot delete outside
    manifest.write_text(json.dumps(data))
    build_site(atlas, tmp_path / "site", quick)
    assert victim.read_text() == "keep"
    with pytest.raises(JaxvisError, match="unknown image format 'gif'; valid: jpeg, png"):
        SiteOptions(image_format="gif")
    with pytest.raises(JaxvisError, match=r"unknown site options \['colour'\]; valid: image_f"):
        build_site(atlas, tmp_path / "other", colour="red")
    assert not (tmp_path / "other").exists()


def test_layers_without_pictures(tmp_path):
    path = str(tmp_path / "a.h5")
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"asked": [0, 1]}, num_filters={"asked": 4})
        empty = np.zeros((0, 8, 8, 3), np.uint8)
        chunk = make_chunk("lost", [], empty, [], np.zeros((0, 5)), failed={2: "NaN"})
        w.write_chunk("lost", chunk, num_filters_in_layer=4)
    summary = build_site(path, tmp_path / "site", PNG)
    assert summary.units == 1 and not [p for p in summary.written if p.endswith(".png")]
    lost = (tmp_path / "site" / "lost.html").read_text()
    assert 'id="cell-2"' in lost and 'title="NaN"' in lost
    assert "0 done, 0 failed of 2 requested" in (tmp_path / "site" / "asked.html").read_text()


def test_diversity_images_sit_side_by_side():
    layer = fake_layer("d", n=3, per_unit=2)
    assert layer.images_per_unit == 2
    cells = sprites.per_unit(layer.images).reshape(-1, 4, 4, 3)
    sheet = sprites.sheet(cells, sprites.COLUMNS * 2)
    for row in range(3):
        for b in range(2):
            _, col, r = layout.cell(row, 2, b)
            np.testing.assert_array_equal(
                sheet[r * 4 : r * 4 + 4, col * 4 : col * 4 + 4], layer.images[row, b]
            )


def test_snapshots_become_the_players_frames(tmp_path):
    path = str(tmp_path / "a.h5")
    add_units(path, "conv1", [4, 9], steps=6)
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8, 3), dtype=np.uint8)
    with h5py.File(path, "r+") as f:  # the snapshots contract, written by hand
        f["conv1"].create_dataset("snapshots", data=frames)
        f["conv1"].attrs["snapshot_every"] = 2
    build_site(path, tmp_path / "site", PNG)
    strip = read_png(tmp_path / "site" / "conv1" / "snapshots-9.png")
    np.testing.assert_array_equal(strip, np.concatenate(list(frames[1]), axis=1))
    page = (tmp_path / "site" / "conv1.html").read_text()
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', page).group(1))
    assert (data["snapshots"], data["snapshot_every"]) == (3, 2)
    with h5py.File(path, "r+") as f:
        del f["conv1/snapshots"]
        f["conv1"].create_dataset("snapshots", data=frames[:, :, :4])
    with pytest.raises(JaxvisError, match=re.escape("/conv1/snapshots is uint8 [2, 3, 4, 8, 3]")):
        build_site(path, tmp_path / "site", PNG)


def test_script_never_parses_text_as_markup():
    from jaxvis.site.script import JS

    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in JS


def test_building_imports_neither_jax_nor_matplotlib_up_front(atlas, tmp_path):
    code = (
        "import sys\nfrom jaxvis.site import build_site\n"
        "assert 'matplotlib' not in sys.modules\n"
        f"build_site({atlas!r}, {str(tmp_path / 's')!r}, plots=False, workers=1)\n"
        "assert 'jax' not in sys.modules, 'jax imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_site_command(atlas, tmp_path, capsys):
    from jaxvis import cli

    out = tmp_path / "site"
    assert cli.main(["site", atlas, "--out", str(out), "--format", "png", "--workers", "1"]) == 0
    said = capsys.readouterr().out
    assert "site of 74 units in 2 layers" in said and (out / "index.html").is_file()
    assert cli.main(["site", atlas, "--out", str(out), "--format", "png", "--workers", "1"]) == 0
    assert "wrote 0 files" in capsys.readouterr().out  # nothing changed, nothing rewritten
    assert cli.main(["site", atlas, "--out", str(out), "--quality", "200"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "JPEG quality must be 1-95" in err
