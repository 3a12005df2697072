"""Overlapping compute with fetching and writing (jaxvis/inflight.py, ``chunks``).

Chunk i+1 is launched before chunk i is fetched and written; the atlas must come out
bit-identical to the run without overlap, and a stopped run must lose only the chunk in
flight.
"""

import functools
import json
import time

import numpy as np
import pytest

import jaxvis
from jaxvis import engine, inflight, presets
from jaxvis.atlas import AtlasWriter, open_atlas

LAYER = "block1_conv1"
RUN = dict(size=32, steps=4, preset="keras-vis", snapshots=2, progress=False)
FILTERS = [0, 3, 5, 6, 9]


@pytest.fixture(scope="module")
def model():
    return jaxvis.vgg16(None, seed=1)


def _atlas(path, model, *, overlap=True, batch=1, filters=FILTERS, patches=None):
    """``generate_atlas`` with ``inflight.chunks`` told ``overlap`` (the scheduler uses the
    default); returns the layer's arrays as read back."""
    chunks = functools.partial(inflight.chunks, overlap=overlap)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inflight, "chunks", chunks)
        for (owner, name), fn in (patches or {}).items():
            mp.setattr(owner, name, fn)
        jaxvis.generate_atlas(model, str(path), {LAYER: filters}, batch=batch, **RUN)
    return _read(path)


def _read(path):
    with open_atlas(path) as atlas:
        view = atlas[LAYER]
        order = np.argsort(view.filters)
        return {
            "filters": view.filters[order],
            "images": view.images[()][order],
            "snapshots": view.snapshots[()][order],
            "objective": view.objective[order],
            "history": view.history[order],
        }


@pytest.mark.parametrize("batch", [1, 2])  # 2: the last chunk is ragged (padded, masked)
def test_overlap_on_and_off_write_identical_atlases(tmp_path, model, batch):
    off = _atlas(tmp_path / "off.h5", model, overlap=False, batch=batch)
    on = _atlas(tmp_path / "on.h5", model, overlap=True, batch=batch)
    assert list(on["filters"]) == FILTERS
    for name in off:
        np.testing.assert_array_equal(on[name], off[name], err_msg=name)


def test_scheduler_launches_the_next_chunk_before_writing_one(tmp_path, model):
    events = []
    launch, write = inflight.launch_chunk, AtlasWriter.write_chunk

    def logged_launch(prog, params, seed, layer, units, chunk, every=0):
        events.append(("launch", int(units[0])))
        return launch(prog, params, seed, layer, units, chunk, every)

    def logged_write(self, layer, chunk):
        events.append(("write", int(chunk.filters[0])))
        return write(self, layer, chunk)

    patches = {
        (inflight, "launch_chunk"): logged_launch,
        (AtlasWriter, "write_chunk"): logged_write,
    }
    _atlas(tmp_path / "on.h5", model, filters=[0, 1, 2], patches=patches)
    on = list(events)
    events.clear()
    _atlas(tmp_path / "off.h5", model, overlap=False, filters=[0, 1, 2], patches=patches)
    L, W = "launch", "write"
    assert on == [(L, 0), (L, 1), (W, 0), (L, 2), (W, 1), (W, 2)]
    assert events == [(L, 0), (W, 0), (L, 1), (W, 1), (L, 2), (W, 2)]


def test_chunk_seconds_are_device_time_not_the_callers(model):
    """With overlap, a slow consumer must not show up in the chunks' seconds: they are
    timed from the device's ready moments, not from when the host fetched them."""
    prog = engine.program(model, LAYER, 32, presets.get("keras-vis"), steps=4)
    units = np.arange(4)
    list(inflight.chunks(model, prog, LAYER, units, size=32, batch=1))  # compiles
    parts, pause = [], 0.4
    for part in inflight.chunks(model, prog, LAYER, units, size=32, batch=1):
        parts.append(part)
        time.sleep(pause)  # the "write": the device has finished the next chunk meanwhile
    seconds = [p.seconds for p in parts]
    assert all(0 < s < pause / 2 for s in seconds), seconds  # timed from fetches: > pause
    assert all(p.compile_seconds == 0.0 for p in parts)


def test_a_stopped_run_loses_only_the_chunk_in_flight(tmp_path, model):
    whole = _atlas(tmp_path / "whole.h5", model)
    path = tmp_path / "stopped.h5"
    write = AtlasWriter.write_chunk

    def fail_second(self, layer, chunk):
        if chunk.filters[0] != FILTERS[0]:
            raise KeyboardInterrupt  # while the chunk after it is in flight
        return write(self, layer, chunk)

    with pytest.raises(KeyboardInterrupt):
        _atlas(path, model, patches={(AtlasWriter, "write_chunk"): fail_second})
    assert list(_read(path)["filters"]) == FILTERS[:1]
    resumed = _atlas(path, model)
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)


def test_overlap_benchmark_tiny(tmp_path):
    from benchmarks import overlap

    overlap.main(["--tiny", "--weights", "random", "--out-dir", str(tmp_path)])
    (path,) = tmp_path.glob("overlap-tiny-*.json")
    rows = json.loads(path.read_text())["settings"][0]["rows"]
    assert [r["overlap"] for r in rows] == [False, True]
    for r in rows:
        assert 0.0 <= r["idle_fraction_median"] <= 1.0
        assert r["filter_steps_per_s_median"] > 0 and r["write_s_per_chunk_median"] > 0
