"""Export: keras-vis blog file names, contact sheets, sizes, atomic writes, modes, errors."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from chunks import make_chunk
from PIL import Image

from jaxvis import export
from jaxvis.atlas import AtlasWriter
from jaxvis.errors import JaxvisError
from jaxvis.export import export_atlas

PROV = {
    "model": "vgg16",
    "weights": {"source": "random", "sha256": "", "trained": False},
    "config": {"preset": "lucid", "size": 16, "steps": 2},
    "device_kind": "cpu",
}


def images(filters, size):
    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (len(filters), size, size, 3), dtype=np.uint8)
    pics[:, : size // 2] = np.asarray(filters, np.uint8)[:, None, None, None] * 20
    return pics


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        for layer, filters, size in [
            ("block1_conv1", [0, 2, 5, 11, 3], 16),
            ("block2_conv1", [7], 16),
        ]:
            w.write_chunk(
                layer,
                make_chunk(
                    layer,
                    filters,
                    images(filters, size),
                    np.zeros(len(filters)),
                    np.zeros((len(filters), 2)),
                    seconds=0,
                    failed={1: "nan"},
                ),
                num_filters_in_layer=64,
            )
    return path


def test_files_named_like_keras_vis_blog(atlas_path, tmp_path):
    out = tmp_path / "pics" / "nested"
    written = export_atlas(atlas_path, out)
    names = sorted(os.listdir(out))
    assert names == sorted(
        [
            "block1_conv1_0.jpg",
            "block1_conv1_2.jpg",
            "block1_conv1_5.jpg",
            "block1_conv1_11.jpg",
            "block1_conv1_3.jpg",
            "block2_conv1_7.jpg",
        ]
    )
    assert [os.path.basename(p) for p in written][:2] == [
        "block1_conv1_0.jpg",
        "block1_conv1_2.jpg",
    ]
    with Image.open(out / "block1_conv1_11.jpg") as im:
        assert im.format == "JPEG" and im.size == (16, 16) and im.mode == "RGB"


def test_png_is_lossless_and_layers_filter(atlas_path, tmp_path):
    export_atlas(atlas_path, tmp_path, fmt="png", layers="block1_conv1")
    assert sorted(os.listdir(tmp_path))[0] == "block1_conv1_0.png"
    assert not any(n.startswith("block2") for n in os.listdir(tmp_path))
    with Image.open(tmp_path / "block1_conv1_5.png") as im:
        np.testing.assert_array_equal(np.asarray(im), images([0, 2, 5, 11, 3], 16)[2])


def test_grid_sheet(atlas_path, tmp_path):
    written = export_atlas(atlas_path, tmp_path, fmt="png", grid=True)
    assert os.path.join(tmp_path, "block1_conv1_grid.png") in written
    with Image.open(tmp_path / "block1_conv1_grid.png") as im:
        sheet = np.asarray(im)
    # 5 tiles -> 3 columns x 2 rows of (16 + gap) x (16 + label + gap) cells.
    cols, rows = 3, 2
    assert sheet.shape == (
        export.GAP + rows * (16 + export.LABEL_HEIGHT + export.GAP),
        export.GAP + cols * (16 + export.GAP),
        3,
    )
    g = export.GAP
    np.testing.assert_array_equal(sheet[g : g + 16, g : g + 16], images([0], 16)[0])
    label = sheet[g + 16 : g + 16 + export.LABEL_HEIGHT, g : g + 16]
    assert (label < 128).any(), "no filter number drawn under the tile"


def test_grid_downscales_huge_sheets(atlas_path, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_SHEET_SIDE", 32)
    export_atlas(atlas_path, tmp_path, fmt="png", layers=["block1_conv1"], grid=True)
    with Image.open(tmp_path / "block1_conv1_grid.png") as im:
        assert im.size[0] <= 32 + export.GAP * 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": ["block9_conv1"]}, "layers in it: block1_conv1, block2_conv1"),
        ({"fmt": "gif"}, "valid formats: jpg, png"),
    ],
)
def test_bad_requests(atlas_path, tmp_path, kwargs, match):
    with pytest.raises(JaxvisError, match=match):
        export_atlas(atlas_path, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_unwritable_out_dir_and_no_partial_files(atlas_path, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JaxvisError, match="cannot create output directory"):
        export_atlas(atlas_path, blocker / "sub")

    calls = []

    def failing_save(self, fp, format=None, **params):
        calls.append(1)
        if len(calls) == 3:
            fp.write(b"half")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, format=format, **params)

    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(JaxvisError, match="No space left on device"):
        export_atlas(atlas_path, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["block1_conv1_0.jpg", "block1_conv1_2.jpg"]


@pytest.mark.parametrize(
    "umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"]
)
def test_files_get_the_mode_the_umask_gives(atlas_path, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = export_atlas(atlas_path, tmp_path / "out", grid=True)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in written} == {mode}


@pytest.mark.parametrize(
    "existing", ["block1_conv1_0.jpg", "block2_conv1_7.jpg", "block1_conv1_grid.jpg"]
)
def test_existing_files_refused_before_any_write_unless_force(atlas_path, tmp_path, existing):
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_bytes(b"keep")
    os.chmod(out / existing, 0o444)
    with pytest.raises(JaxvisError, match="already exists; pass --force") as err:
        export_atlas(atlas_path, out, grid=True)
    assert str(err.value).startswith(str(out / existing)) and "\n" not in str(err.value)
    assert os.listdir(out) == [existing] and (out / existing).read_bytes() == b"keep"

    written = export_atlas(atlas_path, out, grid=True, force=True)
    assert str(out / existing) in written
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in written)
    with Image.open(out / existing) as im:
        assert im.format == "JPEG"
