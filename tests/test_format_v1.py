"""An atlas written by jaxvis 0.1 (format version 1, tests/data/atlas-v1.h5, made by that
release's writer) still reads, shows and exports; a resume of it is refused in one line,
and --overwrite rebuilds it as version 2."""

from __future__ import annotations

import os
import shutil

import pytest

from jaxvis import cli
from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.errors import JaxvisError
from jaxvis.export import export_atlas

V1 = os.path.join(os.path.dirname(__file__), "data", "atlas-v1.h5")


@pytest.fixture
def v1(tmp_path):
    path = tmp_path / "v1.h5"
    shutil.copyfile(V1, path)
    return path


def test_v1_reads(v1):
    with open_atlas(v1) as atlas:
        assert atlas.provenance["format_version"] == 1
        assert atlas.config["objective"] == "channel({layer}:pre)"
        view = atlas["block1_conv1"]
        assert sorted(view.filters.tolist()) == [0, 2]
        assert view.failed == {
            1: "filter 1 of block1_conv1 failed: objective became non-finite at step 2"
        }
        assert view.image(2).shape == (32, 32, 3) and view.history.shape == (2, 4)
        assert view.objective_description == ""
        assert view.output_kind == ""


def test_v1_info_and_export(v1, tmp_path, capsys):
    assert cli.main(["info", str(v1)]) == 0
    assert "v1" in capsys.readouterr().out
    written = export_atlas(v1, tmp_path / "pics")
    assert sorted(os.path.basename(p) for p in written) == [
        "block1_conv1_0.jpg",
        "block1_conv1_2.jpg",
    ]


def test_v1_resume_refused_and_overwrite_rebuilds(v1):
    prov = {"model": "vgg16", "weights": {}, "config": {"steps": 4}, "device_kind": "cpu"}
    before = _bytes(v1)
    with pytest.raises(JaxvisError, match="format_version 1.*--overwrite") as err:
        AtlasWriter(v1, provenance=prov)
    assert "\n" not in str(err.value) and _bytes(v1) == before
    with AtlasWriter(v1, provenance=prov, overwrite=True):
        assert _bytes(v1) == before  # the old atlas stays until the new is done
    with open_atlas(v1) as atlas:
        assert atlas.provenance["format_version"] == 3 and atlas.layers == []


def _bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


V2 = os.path.join(os.path.dirname(__file__), "data", "atlas-v2.h5")


@pytest.fixture
def v2(tmp_path):
    """tests/data/atlas-v2.h5, made by the version-2 (copy per commit) writer of jaxvis at
    git 42ecf76: conv1 of 8 filters, 0, 2, 3 written with snapshots every 2 of 4 steps, 1
    failed, 0-3 requested, in two chunks."""
    path = tmp_path / "v2.h5"
    shutil.copyfile(V2, path)
    return path


def test_v2_reads_info_export_and_animation(v2, tmp_path, capsys):
    with open_atlas(v2) as atlas:
        assert atlas.provenance["format_version"] == 2
        view = atlas["conv1"]
        assert view.filters.tolist() == [0, 2, 3] and len(view.images) == 3
        assert view.failed == {1: "objective became non-finite at step 2"}
        assert view.images.shape == (3, 8, 8, 3) and view.snapshots.shape == (3, 2, 8, 8, 3)
        assert view.image(3)[0, 0, 0] == 120 and view.seconds.tolist() == [0.6, 0.25]
        assert view.requested.tolist() == [0, 1, 2, 3] and view.history.shape == (3, 4)
    assert cli.main(["info", str(v2)]) == 0
    assert "v2" in capsys.readouterr().out
    written = export_atlas(v2, tmp_path / "pics", animate=True)
    assert sorted(os.path.basename(p) for p in written if p.endswith(".webp")) == [
        "conv1_0.webp",
        "conv1_2.webp",
        "conv1_3.webp",
    ]


def test_v2_resume_refused_and_overwrite_rebuilds(v2):
    prov = {"model": "vgg16", "weights": {"source": "random", "sha256": "", "trained": False,
            "seed": 0}, "config": {"preset": "lucid", "size": 8, "steps": 4, "seed": 0},
            "device_kind": "cpu"}  # fmt: skip
    before = _bytes(v2)
    with pytest.raises(JaxvisError, match="format_version 2, which this jaxvis reads and "
                       "exports but does not resume.*--overwrite") as err:  # fmt: skip
        AtlasWriter(v2, provenance=prov)
    assert "\n" not in str(err.value) and _bytes(v2) == before
    with AtlasWriter(v2, provenance=prov, overwrite=True):
        pass
    with open_atlas(v2) as atlas:
        assert atlas.provenance["format_version"] == 3 and atlas.layers == []
