"""Atlas writer and reader: round trip, resume rules, foreign files, no jax, kills."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from chunks import make_chunk

from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.atlas import commit as commit_mod
from jaxvis.errors import JaxvisError

WEIGHTS = {
    "source": "random",
    "sha256": "",
    "preprocessing": "torchvision",
    "has_head": False,
    "trained": False,
    "path": "",
    "seed": 0,
}
CONFIG = {
    "preset": "lucid",
    "size": 8,
    "steps": 3,
    "seed": 0,
    "objective": "channel",
    "param": "fft",
    "transforms": "standard",
    "optimizer": "adam(0.05)",
    "batch": 2,
}
PROV = {"model": "vgg16", "weights": WEIGHTS, "config": CONFIG, "device_kind": "cpu"}


def chunk(filters, size=8, steps=3):
    """Deterministic synthetic data for ``filters``: (images, objective, history)."""
    filters = np.asarray(filters)
    images = (
        filters[:, None, None, None] * 7 + np.arange(size * size * 3).reshape(1, size, size, 3)
    ).astype(np.uint8)
    objective = filters.astype(np.float32) / 3
    history = objective[:, None] * np.arange(1, steps + 1, dtype=np.float32)
    return images, objective, history


def write(path, layer, filters, failed=None, prov=PROV, overwrite=False, n=16):
    with AtlasWriter(path, provenance=prov, overwrite=overwrite) as w:
        w.write_chunk(
            layer,
            make_chunk(layer, filters, *chunk(filters), seconds=0.5, failed=failed or {}),
            num_filters_in_layer=n,
        )
        return w.done(layer)


def fingerprint(path):
    st = os.stat(path)
    return hashlib.sha256(open(path, "rb").read()).hexdigest(), st.st_mtime_ns, st.st_size


def test_round_trip_with_failed_units(tmp_path):
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"conv1": range(6)}, num_filters={"conv1": 16})
        w.write_chunk(
            "conv1",
            make_chunk("conv1", [0, 2], *chunk([0, 2]), seconds=1.5, failed={1: "NaN at step 2"}),
            num_filters_in_layer=16,
        )
        w.write_chunk(
            "conv1", make_chunk("conv1", [3], *chunk([3]), seconds=0.5), num_filters_in_layer=16
        )
        w.write_chunk(
            "conv2", make_chunk("conv2", [5], *chunk([5]), seconds=0.25), num_filters_in_layer=32
        )
        assert w.done("conv1") == {0, 1, 2, 3}
    with open_atlas(path) as atlas:
        assert atlas.layers == ["conv1", "conv2"]
        assert atlas.config == CONFIG
        assert atlas.provenance["weights"] == WEIGHTS
        assert atlas.provenance["model"] == "vgg16"
        v = atlas["conv1"]
        images, objective, history = chunk([0, 2, 3])
        np.testing.assert_array_equal(v.filters, [0, 2, 3])
        np.testing.assert_array_equal(v.images[:], images)
        np.testing.assert_array_equal(v.objective, objective)
        np.testing.assert_array_equal(v.history, history)
        np.testing.assert_array_equal(v.image(3), images[2])
        np.testing.assert_array_equal(v.seconds, [1.5, 0.5])
        np.testing.assert_array_equal(v.requested, range(6))
        assert v.failed == {1: "NaN at step 2"}
        assert (v.num_filters_in_layer, v.image_size, v.steps) == (16, 8, 3)
        with pytest.raises(JaxvisError, match="failed: NaN at step 2"):
            v.image(1)
        with pytest.raises(JaxvisError, match="not in the atlas"):
            v.image(4)
        with pytest.raises(JaxvisError, match="layers in it: conv1, conv2"):
            atlas["conv9"]
        assert "4/6" in atlas.summary() and "UNTRAINED" in atlas.summary()


def test_plain_h5py_layout(tmp_path):
    """What docs/atlas-format.md promises to analysis code that uses h5py alone."""
    path = tmp_path / "a.h5"
    write(path, "conv1", [0, 2], failed={1: "boom"})
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "jaxvis-atlas" and f.attrs["format_version"] == 3
        assert not f.attrs["weights_trained"]
        assert json.loads(f.attrs["config"])["preset"] == "lucid"
        for key in (
            "jaxvis_version",
            "created",
            "weights_source",
            "weights_sha256",
            "preprocessing",
            "device_kind",
            "model",
        ):
            assert key in f.attrs
        g = f["conv1"]
        rows, failed, chunks = g["committed"][:]  # version 3: rows past these are not data
        assert (rows, failed, chunks) == (2, 1, 1) and g["committed"].dtype == np.int64
        assert g["images"].dtype == np.uint8 and g["images"][:rows].shape == (2, 8, 8, 3)
        assert g["images"].shape[0] >= rows and g["images"].chunks == (1, 8, 8, 3)
        assert g["filters"].dtype == np.int32 and g["objective"].dtype == np.float32
        assert list(g["filters"][:rows]) == [0, 2] and g["history"][:rows].shape == (2, 3)
        assert list(g["failed_filters"][:failed]) == [1]
        assert g["failed_messages"].asstr()[:failed][0] == "boom"
        assert g.attrs["num_filters_in_layer"] == 16


def test_resume_skips_done_and_allows_other_batch(tmp_path):
    path = tmp_path / "a.h5"
    write(path, "conv1", [0, 1], failed={2: "x"})
    other_batch = {**PROV, "config": {**CONFIG, "batch": 64}, "device_kind": "gpu"}
    assert write(path, "conv1", [3], prov=other_batch) == {0, 1, 2, 3}
    with open_atlas(path) as atlas:
        np.testing.assert_array_equal(atlas["conv1"].filters, [0, 1, 3])
        assert atlas.config["batch"] == 2  # the first run's config is kept
        assert atlas.provenance["device_kinds"] == ["cpu", "gpu"]
    with AtlasWriter(path, provenance=PROV) as w, pytest.raises(JaxvisError, match="already"):
        w.write_chunk(
            "conv1", make_chunk("conv1", [1], *chunk([1]), seconds=0), num_filters_in_layer=16
        )


@pytest.mark.parametrize(
    "change, named",
    [
        ({"config": {**CONFIG, "steps": 5}}, "config.steps: 3 in the file, 5 now"),
        ({"weights": {**WEIGHTS, "seed": 1}}, "weights.seed: 0 in the file, 1 now"),
        ({"model": "resnet"}, 'model: "vgg16" in the file, "resnet" now'),
    ],
)
def test_mismatch_refused_and_file_untouched(tmp_path, change, named):
    path = tmp_path / "a.h5"
    write(path, "conv1", [0, 1])
    before = fingerprint(path)
    with pytest.raises(JaxvisError) as err:
        AtlasWriter(path, provenance={**PROV, **change})
    message = str(err.value)
    assert named in message and "--overwrite" in message and "\n" not in message
    assert fingerprint(path) == before
    assert not os.path.exists(f"{path}.tmp")


def test_overwrite_starts_over(tmp_path):
    path = tmp_path / "a.h5"
    write(path, "conv1", [0, 1])
    changed = {**PROV, "config": {**CONFIG, "steps": 5}}
    with AtlasWriter(path, provenance=changed, overwrite=True) as w:
        assert w.done("conv1") == set()
    with open_atlas(path) as atlas:
        assert atlas.layers == [] and atlas.config["steps"] == 5


@pytest.mark.parametrize("kind", ["foreign_hdf5", "text"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_foreign_file_never_modified(tmp_path, kind, overwrite):
    path = tmp_path / "data.h5"
    if kind == "text":
        path.write_text("not hdf5 at all\n")
    else:
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(10)
    before = fingerprint(path)
    with pytest.raises(JaxvisError, match="not a jaxvis atlas") as err:
        write(path, "conv1", [0], overwrite=overwrite)
    assert "\n" not in str(err.value)
    with pytest.raises(JaxvisError, match="not a jaxvis atlas"):
        open_atlas(path)
    assert fingerprint(path) == before
    assert sorted(os.listdir(tmp_path)) == ["data.h5"]


def test_second_writer_refused(tmp_path):
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV), pytest.raises(JaxvisError, match="another jaxvis"):
        AtlasWriter(path, provenance=PROV)
    with AtlasWriter(path, provenance=PROV):  # released on close
        pass


def test_lock_released_without_close_and_closed_writer_refuses(tmp_path):
    path = tmp_path / "a.h5"
    w = AtlasWriter(path, provenance=PROV)
    assert os.path.exists(f"{path}.lock")
    del w
    gc.collect()
    assert not os.path.exists(f"{path}.lock")
    w = AtlasWriter(path, provenance=PROV)
    w.close()
    with pytest.raises(JaxvisError, match="closed"):
        w.write_chunk(
            "conv1", make_chunk("conv1", [0], *chunk([0]), seconds=0), num_filters_in_layer=16
        )


def test_requests_merge_and_repeat_is_free(tmp_path):
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"conv1": [0, 1, 2]}, num_filters={"conv1": 16})
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"conv1": [2, 5]}, num_filters={"conv1": 16})
        before = fingerprint(path)
        w.request({"conv1": [0, 5]}, num_filters={"conv1": 16})
        assert fingerprint(path) == before
        with pytest.raises(JaxvisError, match="out of range"):
            w.request({"conv1": [16]}, num_filters={"conv1": 16})
    with open_atlas(path) as atlas:
        np.testing.assert_array_equal(atlas["conv1"].requested, [0, 1, 2, 5])
        assert len(atlas["conv1"]) == 0 and atlas["conv1"].images.shape[0] == 0


def test_newer_format_version_refused(tmp_path):
    path = tmp_path / "a.h5"
    write(path, "conv1", [0])
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 4
    before = fingerprint(path)
    for attempt in (lambda: open_atlas(path), lambda: AtlasWriter(path, provenance=PROV)):
        with pytest.raises(JaxvisError, match="format_version 4; this jaxvis reads"):
            attempt()
    assert fingerprint(path) == before


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"images": np.zeros((1, 8, 8, 3), np.float32)}, "images must be uint8"),
        ({"filters": [16]}, "out of range"),
        ({"filters": [1], "failed": {1: "x"}}, "already written"),
        ({"history": np.zeros((1, 4))}, "layer 'conv1' holds"),
    ],
)
def test_bad_chunks_refused(tmp_path, bad, match):
    path = tmp_path / "a.h5"
    write(path, "conv1", [0])
    images, objective, history = chunk([1])
    args = {
        "filters": [1],
        "images": images,
        "objective": objective,
        "history": history,
        "failed": {},
        **bad,
    }
    if bad.get("filters") == [16]:
        args["images"], args["objective"], args["history"] = chunk([16])
    with AtlasWriter(path, provenance=PROV) as w, pytest.raises(JaxvisError, match=match):
        w.write_chunk(
            "conv1",
            make_chunk(
                "conv1",
                args["filters"],
                args["images"],
                args["objective"],
                args["history"],
                seconds=0,
                failed=args["failed"],
            ),
            num_filters_in_layer=16,
        )


def test_reader_does_not_import_jax(tmp_path):
    path = tmp_path / "a.h5"
    write(path, "conv1", [0, 2], failed={1: "x"})
    code = textwrap.dedent(f"""
        import sys
        import jaxvis.atlas
        from jaxvis import open_atlas
        with open_atlas({str(path)!r}) as a:
            for name in a.layers:
                v = a[name]
                v.images[:], v.filters, v.objective, v.history, v.failed, v.image(2)
            a.provenance, a.summary()
        assert "jax" not in sys.modules, sorted(m for m in sys.modules if "jax" in m)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


# --- in-place commits (format 3) ---------------------------------------------------------


def test_capacity_grows_geometrically_and_total_io_is_linear(tmp_path, monkeypatch):
    """Without a request, a layer's capacity doubles: log2(N) snapshot copies, and the
    bytes copied plus the bytes pwritten stay within a few times the final file."""
    copied, written = [], []
    real_copy, real_pwrite = shutil.copyfile, commit_mod.pwrite

    def copy(src, dst):
        copied.append(os.path.getsize(src))
        return real_copy(src, dst)

    def pwrite(fd, data, offset):
        written.append(len(data))
        real_pwrite(fd, data, offset)

    monkeypatch.setattr(shutil, "copyfile", copy)
    monkeypatch.setattr(commit_mod, "pwrite", pwrite)
    path, n = tmp_path / "a.h5", 64
    capacities = []
    with AtlasWriter(path, provenance=PROV) as w:
        for f in range(n):
            rows = make_chunk("c", [f], *chunk([f], size=64), seconds=0)
            w.write_chunk("c", rows, num_filters_in_layer=n)
            with h5py.File(path, "r") as h:
                capacities.append(h["c/images"].shape[0])
    assert sorted(set(capacities)) == [1, 2, 4, 8, 16, 32, 64]
    assert len(copied) == 7  # creation is fresh; the first chunk's room, then 6 doublings
    size = os.path.getsize(path)
    # A copy per commit would copy about n / 2 = 32 times the file.
    assert sum(copied) <= 3 * size and sum(written) <= 1.2 * size
    with open_atlas(path) as atlas:
        np.testing.assert_array_equal(atlas["c"].filters, range(n))
        np.testing.assert_array_equal(atlas["c"].images[:], chunk(range(n), size=64)[0])


def test_a_request_allocates_once(tmp_path, monkeypatch):
    copied = []
    real_copy = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda a, b: copied.append(a) or real_copy(a, b))
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"c": range(32), "d": range(8)}, num_filters={"c": 32, "d": 8})
        for f in range(0, 32, 2):
            w.write_chunk("c", make_chunk("c", [f, f + 1], *chunk([f, f + 1]), seconds=0))
        w.write_chunk("d", make_chunk("d", [0], *chunk([0]), seconds=0))
    assert len(copied) == 2  # the request, then the first chunk's room for c and d
    with AtlasWriter(path, provenance=PROV) as w:  # a resume: pictures' shape now known
        w.request({"e": range(4)}, num_filters={"e": 4})
        w.write_chunk("e", make_chunk("e", [0, 1, 2, 3], *chunk([0, 1, 2, 3]), seconds=0))
    assert len(copied) == 3
    with open_atlas(path) as atlas:
        assert [len(atlas[la]) for la in ("c", "d", "e")] == [32, 1, 4]


def test_a_new_device_kind_takes_one_snapshot_and_no_room(tmp_path):
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"c": range(8)}, num_filters={"c": 16})  # capacity 8 of 16
        w.write_chunk("c", make_chunk("c", [0, 1], *chunk([0, 1]), seconds=0))
    size = os.path.getsize(path)
    with AtlasWriter(path, provenance={**PROV, "device_kind": "gpu"}) as w:
        for f in range(2, 8, 2):
            w.write_chunk("c", make_chunk("c", [f, f + 1], *chunk([f, f + 1]), seconds=0))
    assert os.path.getsize(path) == size  # the layer had room: not grown
    with open_atlas(path) as atlas:
        assert atlas.provenance["device_kinds"] == ["cpu", "gpu"] and len(atlas["c"]) == 8


def test_reader_during_a_write_sees_only_committed_rows(tmp_path, monkeypatch):
    path = tmp_path / "a.h5"
    seen = []
    real_record = commit_mod.write_record

    def record(fd, offset, counts):  # rows written and fsynced, the record not yet
        with open_atlas(path) as atlas:
            view = atlas["c"]
            seen.append((view.filters.tolist(), view.images[:].copy(), len(view.images)))
        real_record(fd, offset, counts)

    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"c": range(8)}, num_filters={"c": 16})
        w.write_chunk("c", make_chunk("c", [0, 1], *chunk([0, 1]), seconds=0))
        early = open_atlas(path)  # open while the next chunk is written
        assert len(early["c"]) == 2
        monkeypatch.setattr(commit_mod, "write_record", record)
        w.write_chunk("c", make_chunk("c", [2, 3], *chunk([2, 3]), seconds=0))
        assert len(early["c"]) == 4  # a reader open all along sees each commit whole
        np.testing.assert_array_equal(early["c"].images[2:4], chunk([2, 3])[0])
        early.close()
    assert seen[0][0] == [0, 1] and seen[0][2] == 2
    np.testing.assert_array_equal(seen[0][1], chunk([0, 1])[0])


class Killed(BaseException):
    """Stands in for a SIGKILL between a chunk's rows and its commit record."""


def test_resume_after_a_kill_between_rows_and_commit_rewrites_them(tmp_path, monkeypatch):
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({"c": range(8)}, num_filters={"c": 16})
        w.write_chunk("c", make_chunk("c", [0, 1], *chunk([0, 1]), seconds=0))

    def killed(fd, offset, counts):
        raise Killed

    monkeypatch.setattr(commit_mod, "write_record", killed)
    with pytest.raises(Killed), AtlasWriter(path, provenance=PROV) as w:
        w.write_chunk("c", make_chunk("c", [2, 3], *chunk([2, 3]), seconds=0))
    with h5py.File(path, "r") as f:  # the rows are on disk, past the record
        assert list(f["c/committed"]) == [2, 0, 1]
        np.testing.assert_array_equal(f["c/images"][2:4], chunk([2, 3])[0])
    with open_atlas(path) as atlas:
        assert atlas["c"].filters.tolist() == [0, 1] and len(atlas["c"].seconds) == 1
    monkeypatch.undo()
    with AtlasWriter(path, provenance=PROV) as w:
        assert w.done("c") == {0, 1}
        w.write_chunk("c", make_chunk("c", [5], *chunk([5]), seconds=0, failed={4: "nan"}))
    with open_atlas(path) as atlas:
        view = atlas["c"]
        assert view.filters.tolist() == [0, 1, 5] and view.failed == {4: "nan"}
        np.testing.assert_array_equal(view.images[:], chunk([0, 1, 5])[0])


def test_long_failure_messages_are_cut_at_a_character(tmp_path):
    path = tmp_path / "a.h5"
    message = "é" * 150  # 300 bytes of UTF-8
    write(path, "c", [0], failed={1: message})
    with open_atlas(path) as atlas:
        assert atlas["c"].failed == {1: "é" * 100}


# --- kill test --------------------------------------------------------------------------

HELPER = """
import os, shutil, signal, sys
import numpy as np
import jaxvis.atlas.commit as commit_mod
from jaxvis.atlas import AtlasWriter
from jaxvis.chunk import Chunk

PROV = {prov!r}
SIZE, STEPS, N, CHUNK = 96, 16, 96, 2
path, kill_at = sys.argv[1], sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

# Deterministic kill points inside a snapshot: "<point>:<n>" dies at the n-th hit.
point, _, nth = kill_at.partition(":")
hits = [0]
def hit(name):
    if name == point:
        hits[0] += 1
        if hits[0] == int(nth):
            die()

real_copy, real_replace, real_fsync = shutil.copyfile, os.replace, os.fsync
def copy_half_then(src, dst):
    if point == "copy" and hits[0] + 1 == int(nth):
        data = open(src, "rb").read()
        with open(dst, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
    hit("copy")
    return real_copy(src, dst)
def replace(src, dst):
    real_replace(src, dst)
    hit("replace")
def fsync(fd):
    hit("fsync")
    real_fsync(fd)
# Points of an in-place commit: a row pwrite half done; rows written, not yet fsynced;
# rows fsynced, before the record; the record torn (its first field only); the record
# written, before its fsync; and right after write_chunk returned ("chunk").
real_pwrite, real_rows = commit_mod.pwrite, commit_mod.write_rows
real_record = commit_mod.write_record
def pwrite(fd, data, offset):
    if point == "pwrite" and hits[0] + 1 == int(nth):
        real_pwrite(fd, data[: len(data) // 2], offset)
    hit("pwrite")
    real_pwrite(fd, data, offset)
def write_rows(fd, writes):
    real_rows(fd, writes)
    hit("rows")
def write_record(fd, offset, counts):
    hit("unrecorded")
    if point == "torn" and hits[0] + 1 == int(nth):
        os.pwrite(fd, np.array(counts, "<i8").tobytes()[:8], offset)
    hit("torn")
    real_record(fd, offset, counts)
    hit("record")
shutil.copyfile, os.replace, os.fsync = copy_half_then, replace, fsync
commit_mod.pwrite, commit_mod.write_rows, commit_mod.write_record = pwrite, write_rows, write_record

def data(layer, filters):
    rows = [np.random.default_rng([ord(layer[-1]), f]) for f in filters]
    images = np.stack([r.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for r in rows])
    history = np.stack([r.normal(size=STEPS).astype(np.float32) for r in rows])
    return images, history[:, -1], history

with AtlasWriter(path, provenance=PROV) as w:
    for layer in ("la", "lb"):
        todo = [f for f in range(N) if f not in w.done(layer)]
        for i in range(0, len(todo), CHUNK):
            part = todo[i : i + CHUNK]
            failed = {{f: f"failed {{f}}" for f in part if f % 7 == 3}}
            ok = [f for f in part if f not in failed]
            images, objective, history = data(layer, ok)
            part = Chunk(layer, np.array(ok, int), images, objective, history, failed, 0.0, 0.0)
            w.write_chunk(layer, part, num_filters_in_layer=N)
            hit("chunk")
            print("chunk", flush=True)
print("finished", flush=True)
"""


def _contents(path):
    with open_atlas(path) as atlas:
        out = {}
        for name in atlas.layers:
            v = atlas[name]
            out[name] = (v.filters.tolist(), v.images[:], v.objective, v.history, v.failed)
        return out


def _assert_same(got, want):
    assert list(got) == list(want)
    for name in want:
        filters, images, objective, history, failed = got[name]
        assert len(set(filters)) == len(filters), "duplicated filters"
        assert filters == want[name][0]
        np.testing.assert_array_equal(images, want[name][1])
        np.testing.assert_array_equal(objective, want[name][2])
        np.testing.assert_array_equal(history, want[name][3])
        assert failed == want[name][4]


def _past_commit(path):
    """``{layer: (rows committed, every image row of the capacity)}``, raw via h5py."""
    with h5py.File(path, "r") as f:
        return {name: (int(g["committed"][0]), g["images"][()]) for name, g in f.items()}


def _uncommitted_changed(path, before):
    """Whether image rows past the commit record differ from what the same rows held
    before the run: a kill after rows were written, before they were committed."""
    for name, (rows, images) in _past_commit(path).items():
        old = before.get(name, (0, np.zeros((0, *images.shape[1:]), np.uint8)))[1]
        old = np.concatenate([old, np.zeros((len(images) - len(old), *old.shape[1:]), np.uint8)])
        if not np.array_equal(images[rows:], old[rows : len(images)]):
            return True
    return False


def test_sigkill_at_any_moment_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "helper.py"
    script.write_text(HELPER.format(prov=PROV))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start(path, kill_at="none:0"):
        return subprocess.Popen(
            [sys.executable, str(script), str(path), kill_at],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    ref = tmp_path / "ref.h5"
    assert start(ref).communicate()[0].endswith("finished\n")
    want = _contents(ref)
    assert len(want["la"][0]) == 82 and len(want["la"][4]) == 14

    path = tmp_path / "killed.h5"
    # Kills at chosen points of a snapshot (creation, capacity growth): mid-copy, before
    # the rename (fsync), right after the rename; the first ones land while creating the
    # file. Then at points of an in-place commit (see HELPER).
    points = ["fsync:1", "copy:2", "rows:3", "fsync:5", "replace:3", "copy:4", "rows:2"]
    points += ["pwrite:5", "unrecorded:2", "torn:2", "record:3", "chunk:2"]
    for kill_at in points:
        proc = start(path, kill_at)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, kill_at
        if path.exists():
            _contents(path)  # the atlas is a valid file after every kill
    # Kills at random moments while chunks are being written.
    rng = random.Random(1234)
    mid_write = 0
    before = _past_commit(path)
    for _ in range(10):
        proc = start(path)
        for _ in range(rng.randrange(1, 3)):
            if not proc.stdout.readline():
                break
        time.sleep(rng.uniform(0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_write += os.path.exists(f"{path}.tmp") or _uncommitted_changed(path, before)
        _contents(path)
        before = _past_commit(path)
    print("random kills mid-write:", mid_write)
    assert mid_write >= 1, "no random kill landed after rows were written, before their commit"
    proc = start(path)
    assert proc.communicate()[0].endswith("finished\n")
    _assert_same(_contents(path), want)
    assert not os.path.exists(f"{path}.tmp")


def test_layers_are_stored_in_request_order(tmp_path):
    """Not in a set's order, which changes with each process's hash seed: two runs of the
    same command (or the processes of a distributed run) must list the same layers alike."""
    path = tmp_path / "a.h5"
    names = ["z9", "a1", "m5", "b2", "y7"]
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({n: [0] for n in names}, num_filters={n: 4 for n in names})
    with open_atlas(path) as atlas:
        assert atlas.layers == names
