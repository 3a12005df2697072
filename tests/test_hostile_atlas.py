"""Hostile and malformed atlases: refused in one line before any data is read or written.

Each file starts as a valid atlas written by AtlasWriter and is then changed with h5py,
the way a damaged download or a deliberately crafted file would be.
"""

from __future__ import annotations

import hashlib
import struct

import h5py
import numpy as np
import pytest
from chunks import make_chunk

from jaxvis import cli
from jaxvis.atlas import AtlasWriter, open_atlas, validate
from jaxvis.atlas.reader import check_atlas_file
from jaxvis.errors import JaxvisError
from jaxvis.export import export_atlas

PROV = {
    "model": "vgg16",
    "weights": {"source": "random", "sha256": "", "trained": False},
    "config": {"preset": "lucid", "size": 8, "steps": 3},
    "device_kind": "cpu",
}
HUGE = 2**28  # entries a tiny file may declare; 1 GiB as int32


def rows(filters, size=8, steps=3):
    filters = np.asarray(filters)
    images = (filters[:, None, None, None] * 9 + np.zeros((1, size, size, 3))).astype(np.uint8)
    return images, filters.astype(np.float32), np.ones((len(filters), steps), np.float32)


def write_atlas(path):
    """conv1: filters 0, 2, 3 written, 1 failed, 0-5 requested, 16 in the layer."""
    with AtlasWriter(path, provenance=PROV) as w:
        w.request(
            {"conv1": range(6)}, num_filters={"conv1": 16}, objectives={"conv1": "channel(c)"}
        )
        chunk = make_chunk("conv1", [0, 2, 3], *rows([0, 2, 3]), seconds=1, failed={1: "nan"})
        w.write_chunk("conv1", chunk, num_filters_in_layer=16)
    return path


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, match):
    assert code == 2, err
    assert err.startswith("jaxvis: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "\x1b" not in err
    assert match in err, err


# --- links and virtual datasets that leave the file ---------------------------------------


def _victim(tmp_path):
    victim = tmp_path / "victim.h5"
    with h5py.File(victim, "w") as v:
        v["data"] = np.arange(8, dtype=np.int32)
        v.attrs["precious"] = "yes"
    return victim


def _external_root(f, victim):
    f["block4_conv1"] = h5py.ExternalLink("victim.h5", "/")


def _external_in_layer(f, victim):
    f["conv1/notes"] = h5py.ExternalLink("victim.h5", "/data")


def _soft(f, victim):
    f["block4_conv1"] = h5py.SoftLink("/conv1")


def _virtual(f, victim):
    layout = h5py.VirtualLayout((8,), np.int32)
    layout[:] = h5py.VirtualSource("victim.h5", "/data", (8,))
    f["conv1"].create_virtual_dataset("mirror", layout)


def _external_storage(f, victim):
    f["conv1"].create_dataset("raw", (8,), np.uint8, external=[(str(victim), 0, 8)])


LINKS = [
    pytest.param(_external_root, "external link /block4_conv1 -> victim.h5:/", id="external"),
    pytest.param(_external_in_layer, "external link /conv1/notes", id="external-in-layer"),
    pytest.param(_soft, "soft link /block4_conv1 -> /conv1", id="soft"),
    pytest.param(
        _virtual, "virtual dataset /conv1/mirror, mapped from victim.h5:/data", id="virtual"
    ),
    pytest.param(
        _external_storage, "dataset /conv1/raw that stores its data in", id="external-storage"
    ),
]


@pytest.mark.parametrize("link, match", LINKS)
def test_links_out_of_the_file_refused_and_victim_untouched(
    tmp_path, monkeypatch, capsys, link, match
):
    monkeypatch.chdir(tmp_path)
    victim = _victim(tmp_path)
    path = write_atlas(tmp_path / "atlas.h5")
    with h5py.File(path, "r+") as f:
        link(f, victim)
    before = digest(victim), digest(path)
    for attempt in (lambda: open_atlas(path), lambda: check_atlas_file(path)):
        with pytest.raises(JaxvisError, match="jaxvis reads only self-contained atlases") as e:
            attempt()
        assert match in str(e.value) and "\n" not in str(e.value)
    with (
        pytest.raises(JaxvisError, match="self-contained"),
        AtlasWriter(path, provenance=PROV) as w,
    ):
        w.write_chunk(
            "block4_conv1",
            make_chunk("block4_conv1", [0], *rows([0]), seconds=0),
            num_filters_in_layer=16,
        )
    code, _, err = run_cli(capsys, "info", path)
    assert_one_line(code, err, match)
    code, _, err = run_cli(capsys, "export", path, "--out", tmp_path / "out")
    assert_one_line(code, err, match)
    assert not (tmp_path / "out").exists()
    assert (digest(victim), digest(path)) == before


def test_hard_link_cycles_inside_the_file_are_fine(tmp_path):
    path = write_atlas(tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:
        f["conv1/up"] = f["/"]  # a hard link back to the root: a cycle the walk must end
    with open_atlas(path) as atlas:
        assert atlas.layers == ["conv1"] and len(atlas["conv1"]) == 3


# --- malformed atlases --------------------------------------------------------------------


def _attr(key, value, where="/"):
    def corrupt(f):
        f[where].attrs[key] = value

    return corrupt


def _del_attr(key, where="/"):
    def corrupt(f):
        del f[where].attrs[key]

    return corrupt


def _replace(name, make):
    """Replaces dataset ``name`` by ``make(old_array)``."""

    def corrupt(f):
        old = f[name][()]
        del f[name]
        f[name] = make(old)

    return corrupt


def _resize(name, n):
    def corrupt(f):
        f[name].resize(n, axis=0)

    return corrupt


def _delete(name):
    def corrupt(f):
        del f[name]

    return corrupt


def _set(name, index, value):
    def corrupt(f):
        f[name][index] = value

    return corrupt


def _declared_only(name, n):
    """Replaces ``name`` by an int32 dataset that declares ``n`` rows and stores none."""

    def corrupt(f):
        del f[name]
        f.create_dataset(name, (n,), np.int32, chunks=(1024,), maxshape=(None,))

    return corrupt


def _images_group(f):
    del f["conv1/images"]
    f.create_group("conv1/images")


def _redeclare(f, name, n):
    """Replaces dataset ``name`` by one of its kind that declares ``n`` rows, its storage
    allocated only when written (as h5py does by default), and none written."""
    old = f[name]
    dtype, rest, chunks = old.dtype, old.shape[1:], old.chunks
    del f[name]
    f.create_dataset(name, (n, *rest), dtype, chunks=chunks, maxshape=(None, *rest))


def _all_rows_declared(f):
    """Every row dataset grown to HUGE, with no data written, and a layer that big."""
    f["conv1"].attrs["num_filters_in_layer"] = np.int32(HUGE + 1)  # + the failed filter
    for name in ("images", "filters", "objective", "history"):
        _redeclare(f, f"conv1/{name}", HUGE)


def _chunk_bomb(f):
    """filters [0, 2, 3] in one gzip chunk of 32 MiB: a tiny file, a big read."""
    old = f["conv1/filters"][()]  # the capacity, of which rows 0 to 2 are committed
    del f["conv1/filters"]
    n = 2**23
    f["conv1"].create_dataset(
        "filters", data=old, chunks=(n,), maxshape=(None,), compression="gzip"
    )


def _inflated(f):
    """64 MiB of filter ids gzipped into a few hundred KB, and a layer that big."""
    n = 2**24
    f["conv1"].attrs["num_filters_in_layer"] = np.int32(n + 1)
    del f["conv1/filters"]
    f["conv1"].create_dataset("filters", data=np.zeros(n, np.int32), compression="gzip")
    for name in ("images", "objective", "history"):
        _redeclare(f, f"conv1/{name}", n)


def _unknown_filter(f):
    """seconds in a pipeline with a filter (32001, blosc) that h5py cannot decode."""
    del f["conv1/seconds"]
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((1024,))
    dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, (0,))
    space = h5py.h5s.create_simple((0,), (h5py.h5s.UNLIMITED,))
    h5py.h5d.create(f["conv1"].id, b"seconds", h5py.h5t.IEEE_F64LE, space, dcpl=dcpl)


def _binary_name(f):
    f.create_group(b"\xffconv")


MALFORMED = [
    pytest.param(_attr("config", "{not json"), "'config' is not valid JSON", id="config-json"),
    pytest.param(_attr("config", "[1, 2]"), "'config' is a JSON list", id="config-list"),
    pytest.param(_attr("config", "[" * 10**5 + "]" * 10**5), "'config'", id="config-deep"),
    pytest.param(_attr("weights", "{"), "'weights' is not valid JSON", id="weights-json"),
    pytest.param(_attr("device_kinds", "[1]"), "'device_kinds'", id="device-kinds"),
    pytest.param(_attr("format_version", "abc"), "'format_version' is 'abc'", id="version-abc"),
    pytest.param(_attr("format", np.array(["x", "y"], object)), "not a jaxvis", id="format-arr"),
    pytest.param(_del_attr("model"), "root attribute 'model' is missing", id="no-model"),
    pytest.param(_attr("model", np.float64(1.5)), "'model' is 1.5", id="model-float"),
    pytest.param(_del_attr("num_filters_in_layer", "conv1"), "num_filters_in_layer", id="no-n"),
    pytest.param(_attr("num_filters_in_layer", "abc", "conv1"), "is 'abc'", id="n-str"),
    pytest.param(_attr("steps", np.int32(5), "conv1"), "/conv1/history is", id="steps"),
    pytest.param(_attr("image_size", np.int32(9), "conv1"), "/conv1/images is", id="size"),
    pytest.param(_resize("conv1/failed_messages", 0), "/conv1/failed_messages has 0", id="msgs"),
    pytest.param(_delete("conv1/images"), "/conv1 has filters but no images", id="no-images"),
    pytest.param(
        _replace("conv1/images", lambda old: old.astype(np.float32)),
        "/conv1/images is float32 [6, 8, 8, 3]; expected uint8",  # capacity 6: 0-5 requested
        id="float-images",
    ),
    pytest.param(_resize("conv1/images", 2), "/conv1/images has 2 rows", id="fewer-images"),
    pytest.param(_resize("conv1/history", 1), "/conv1/history has 1 rows", id="history-rows"),
    pytest.param(_images_group, "/conv1/images is a group", id="images-group"),
    pytest.param(
        _declared_only("conv1/filters", HUGE),
        "/conv1/filters has 268435456 rows",
        id="huge-filters",
    ),
    pytest.param(_all_rows_declared, "but stores", id="declared-not-stored"),
    pytest.param(_chunk_bomb, "/conv1/filters is stored in chunks of", id="chunk-bomb"),
    pytest.param(_inflated, "/conv1/filters declares", id="inflated"),
    pytest.param(_set("conv1/filters", 0, -1), "filter -1", id="negative-filter"),
    pytest.param(_set("conv1/filters", 0, 16), "filter 16", id="filter-out-of-range"),
    pytest.param(_set("conv1/filters", 1, 0), "filter 0 twice", id="duplicate-filter"),
    pytest.param(_set("conv1/failed_filters", 0, 2), "filter 2 twice", id="failed-and-written"),
    pytest.param(_set("conv1/requested", 0, 99), "/conv1/requested holds filter 99", id="req"),
    pytest.param(
        _unknown_filter, "/conv1/seconds is compressed with HDF5 filter 32001", id="filter"
    ),
    pytest.param(_binary_name, "not UTF-8", id="binary-name"),
]


def _corrupted(tmp_path, corrupt):
    path = write_atlas(tmp_path / "bad.h5")
    with h5py.File(path, "r+") as f:
        corrupt(f)
    return path


@pytest.mark.parametrize("corrupt, match", MALFORMED)
def test_malformed_refused_by_open_atlas_and_writer(tmp_path, corrupt, match):
    path = _corrupted(tmp_path, corrupt)
    before = digest(path)
    for attempt in (lambda: open_atlas(path), lambda: AtlasWriter(path, provenance=PROV)):
        with pytest.raises(JaxvisError) as e:
            attempt()
        assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert digest(path) == before


@pytest.mark.parametrize("command", ["info", "export"])
@pytest.mark.parametrize("corrupt, match", MALFORMED)
def test_malformed_is_one_line_from_the_cli(tmp_path, capsys, corrupt, match, command):
    path = _corrupted(tmp_path, corrupt)
    extra = ["--out", tmp_path / "out"] if command == "export" else []
    code, out, err = run_cli(capsys, command, path, *extra)
    assert_one_line(code, err, match)
    assert not (tmp_path / "out").exists()


def test_an_error_no_check_names_is_still_one_line(tmp_path, monkeypatch):
    path = write_atlas(tmp_path / "a.h5")

    def damaged(*args):
        raise OSError("Can't read data (wrong B-tree signature)\nmore detail")

    monkeypatch.setattr(validate, "check_layer", damaged)
    with pytest.raises(JaxvisError) as e:
        open_atlas(path)
    assert str(e.value) == (
        f"{path} is a damaged atlas (Can't read data (wrong B-tree signature)); it cannot be read"
    )


def test_undecodable_failure_message_is_escaped(tmp_path):
    path = write_atlas(tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:
        capacity = f["conv1/failed_filters"].shape[0]  # entry 0 is the committed one
        del f["conv1/failed_messages"]
        bad = np.array([b"bad \xff\x1b[2J"] * capacity, "S16")
        f["conv1"].create_dataset("failed_messages", data=bad)
    with open_atlas(path) as atlas:
        assert atlas["conv1"].failed[1] == "bad \\xff\x1b[2J"
        with pytest.raises(JaxvisError, match="failed: bad") as e:
            atlas["conv1"].image(1)
        assert "\x1b" not in str(e.value)


def test_control_characters_in_names_are_escaped(tmp_path, capsys):
    path = write_atlas(tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:
        f.move("conv1", "conv\x1b[2J1")
        f.attrs["model"] = "vgg\x1b]0;owned\x07"
        f.attrs["config"] = '{"preset\\u001b[31m": "lucid\\u001b[0m"}'
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "conv\\x1b[2J1" in out and "vgg\\x1b]0;owned\\x07" in out
    with open_atlas(path) as atlas, pytest.raises(JaxvisError) as e:
        atlas["nope"]
    assert "conv\\x1b[2J1" in str(e.value) and "\x1b" not in str(e.value)


def test_version_1_atlas_still_opens_and_exports(tmp_path, capsys):
    path = write_atlas(tmp_path / "v1.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = np.int32(1)
        f.attrs["config"] = '{"objective": "channel({layer})", "preset": "lucid", "steps": 3}'
        del f["conv1"].attrs["objective"]
    with open_atlas(path) as atlas:
        assert atlas.provenance["format_version"] == 1
        assert atlas["conv1"].objective_description == ""
        assert atlas.config["objective"] == "channel({layer})"
    code, out, _ = run_cli(capsys, "info", path)
    assert code == 0 and "v1" in out
    written = export_atlas(path, tmp_path / "out")
    assert sorted(p.rsplit("/", 1)[1] for p in written) == [
        "conv1_0.jpg",
        "conv1_2.jpg",
        "conv1_3.jpg",
    ]


# --- version 3: counts, raw layout ----------------------------------------------------


def _redirect_committed(path):
    """Points /conv1/committed's storage at /conv1/failed_filters' bytes (their first 24
    read as counts 1, 0, 0: valid), so that a commit would write over another dataset."""
    with h5py.File(path, "r") as f:
        old = f["conv1/committed"].id.get_offset()
        found = []
        f["conv1/failed_filters"].id.chunk_iter(found.append)
    with open(path, "rb") as fh:
        data = fh.read()
    layout = struct.pack("<QQ", old, 24)  # the contiguous layout message: address, size
    assert data.count(layout) == 1
    with open(path, "wb") as out:
        out.write(data.replace(layout, struct.pack("<QQ", found[0].byte_offset, 24)))


def _compressed_images(f):
    old = f["conv1/images"][()]
    del f["conv1/images"]
    f["conv1"].create_dataset("images", data=old, chunks=(1, 8, 8, 3), compression="gzip")


def _late_images(f):
    """images whose rows get bytes only when written (h5py's default), so that a pwrite
    would have nowhere to go."""
    old = f["conv1/images"][()]
    del f["conv1/images"]
    f["conv1"].create_dataset("images", (6, 8, 8, 3), np.uint8, chunks=(1, 8, 8, 3))
    f["conv1/images"][:3] = old[:3]


V3_READ = [
    pytest.param(_late_images, "/conv1/images declares 1.1 KiB but stores 576", id="late"),
    pytest.param(
        _set("conv1/committed", 0, 7), "committed counts 7 rows; expected 0 to 6", id="rows"
    ),
    pytest.param(_set("conv1/committed", 1, -1), "counts -1 failed", id="negative"),
    pytest.param(_set("conv1/committed", 2, 99), "counts 99 chunks", id="chunks"),
    pytest.param(
        _delete("conv1/committed"), "has /conv1/images but no /conv1/committed", id="none"
    ),
    pytest.param(_compressed_images, "/conv1/images is compressed", id="compressed"),
    pytest.param(
        _replace("conv1/committed", lambda old: old.astype(np.float64)),
        "expected int64 [3]",
        id="float",
    ),
]


@pytest.mark.parametrize("corrupt, match", V3_READ)
def test_v3_bad_counts_or_storage_refused(tmp_path, capsys, corrupt, match):
    path = _corrupted(tmp_path, corrupt)
    before = digest(path)
    for attempt in (lambda: open_atlas(path), lambda: AtlasWriter(path, provenance=PROV)):
        with pytest.raises(JaxvisError) as e:
            attempt()
        assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    code, _, err = run_cli(capsys, "info", path)
    assert_one_line(code, err, match)
    assert digest(path) == before


@pytest.mark.parametrize(
    "corrupt, match",
    [
        pytest.param(
            _redirect_committed,
            "data of /conv1/committed and /conv1/failed_filters overlap",
            id="overlap",
        ),
    ],
)
def test_v3_raw_layout_checked_before_a_resume_writes(tmp_path, corrupt, match):
    path = write_atlas(tmp_path / "a.h5")
    corrupt(path)
    before = digest(path)
    with open_atlas(path) as atlas:  # reading is safe: only the writer's pwrite is not
        assert len(atlas["conv1"]) <= 3
    with pytest.raises(JaxvisError) as e:
        AtlasWriter(path, provenance=PROV)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert digest(path) == before
