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
        assert atlas.provenance["format_version"] == 2 and atlas.layers == []


def _bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()
