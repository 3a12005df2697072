"""Optimization snapshots: engine, atlas (write, resume, validation, reading without jax)
and animated export.

The engine tests share one light recipe (pixel parameterization, no transforms, Adam) on
the first VGG16 layer at 32 px and 16 steps, so that its few programs compile in seconds;
snapshots are compared with pictures made by the program's own compiled pieces, which is
exact. Atlas validation and export use small synthetic atlases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import textwrap

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import jaxvis
from jaxvis import engine, inflight, objectives, optim, param, presets
from jaxvis.ascent import Ascent, State
from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.atlas import commit as commit_module
from jaxvis.chunk import Chunk
from jaxvis.errors import JaxvisError
from jaxvis.export import FINAL_MS, FRAME_MS, export_atlas
from jaxvis.keys import unit_keys
from jaxvis.scheduler import generate_atlas

LAYER, SIZE, STEPS, UNITS = "block1_conv1", 32, 16, [0, 3]
LIGHT = presets.Config(
    preset="snapshot-test",
    steps=STEPS,
    param=lambda size: param.pixel_image(size),
    transforms=lambda size: (),
    objective=lambda layer: objectives.channel(layer),
    optimizer=optim.spec(optax.adam, learning_rate=0.05),
)
RUN = dict(size=SIZE, preset=LIGHT, batch=len(UNITS))
PROV = {
    "model": "vgg16",
    "weights": {"source": "random", "sha256": "", "trained": False},
    "config": {"preset": "test", "size": 8, "steps": 8},
    "device_kind": "cpu",
}


@pytest.fixture(scope="module", autouse=True)
def stock_blocks():
    """The engine's own steps per block: the suite's smaller ones (tests/conftest.py)
    would not show what the CPU block size does with snapshots."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(engine.BLOCK_STEPS_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def model():
    return jaxvis.vgg16(None, seed=1)


@pytest.fixture(scope="module")
def runs(model):
    """Off, on (K=8, the CPU block size) and off again, with trace counts in between."""
    prog = engine.program(model, LAYER, SIZE, LIGHT)
    off = jaxvis.visualize(model, LAYER, UNITS, **RUN)
    traces = [prog.traces]
    on = jaxvis.visualize(model, LAYER, UNITS, snapshots=8, **RUN)
    traces.append(prog.traces)
    again = jaxvis.visualize(model, LAYER, UNITS, **RUN)
    traces.append(prog.traces)
    return {"prog": prog, "off": off, "on": on, "again": again, "traces": traces}


@pytest.fixture(scope="module")
def atlas_k8(runs, model, tmp_path_factory):
    path = tmp_path_factory.mktemp("k8") / "a.h5"
    generate_atlas(model, path, {LAYER: UNITS}, snapshots=8, progress=False, **RUN)
    return path


def pictures_after_blocks(prog, params, n_blocks: int) -> np.ndarray:
    """uint8 [N, H, W, 3] after ``n_blocks`` blocks, from the program's init, block and
    finish: what snapshot ``n_blocks * block_steps / K - 1`` must hold."""
    keys = unit_keys(0, LAYER, UNITS)
    units = jnp.asarray(UNITS, jnp.int32)
    state = prog.init(keys)
    for b in range(n_blocks):
        state, _ = prog.block(params, state, keys, units, jnp.int32(b * prog.block_steps))
    images, _ = prog.finish(params, state, units)
    return inflight.to_uint8(np.asarray(images)[:, 0])


def test_snapshots_off_runs_the_same_program(runs, model):
    prog, off, on, again = runs["prog"], runs["off"], runs["on"], runs["again"]
    assert engine.program(model, LAYER, SIZE, LIGHT, snapshots=8) is prog
    assert prog.block_steps == 8
    off_traces, on_traces, again_traces = runs["traces"]
    assert on_traces == off_traces + 1  # only the snap piece; init, block, finish reused
    assert again_traces == on_traces
    assert off.snapshots is None and off.snapshot_every == 0
    np.testing.assert_array_equal(on.images, off.images)
    np.testing.assert_array_equal(again.images, off.images)
    np.testing.assert_array_equal(on.history, off.history)


def test_snapshot_s_is_the_picture_after_step_s_plus_1_times_k(runs, model):
    on, prog = runs["on"], runs["prog"]
    assert on.snapshot_every == 8
    assert on.snapshots.shape == (2, STEPS // 8, SIZE, SIZE, 3)
    assert on.snapshots.dtype == np.uint8
    # K divides the steps: the last snapshot is the final image, exactly.
    np.testing.assert_array_equal(on.snapshots[:, -1], on.images)
    # Snapshot 0 is the picture after 8 steps (one block), not the initial one.
    np.testing.assert_array_equal(on.snapshots[:, 0], pictures_after_blocks(prog, model.params, 1))
    change = np.abs(on.snapshots[:, 1].astype(int) - on.snapshots[:, 0]).mean()
    assert change > 1.0, change


def test_k_that_does_not_divide_the_steps(model, runs):
    prog = engine.program(model, LAYER, SIZE, LIGHT, snapshots=6)
    assert prog.block_steps == 6  # a divisor of K: blocks end at steps 6 and 12
    res = jaxvis.visualize(model, LAYER, UNITS, snapshots=6, **RUN)
    assert res.snapshots.shape == (2, STEPS // 6, SIZE, SIZE, 3)
    np.testing.assert_array_equal(res.snapshots[:, 0], pictures_after_blocks(prog, model.params, 1))
    np.testing.assert_array_equal(res.snapshots[:, 1], pictures_after_blocks(prog, model.params, 2))
    # After step 12, four steps before the end: not the final image.
    assert np.abs(res.snapshots[:, 1].astype(int) - res.images).mean() > 0.5
    # Block size is not the picture: the same run with the usual blocks of 8 agrees.
    assert np.abs(res.images.astype(int) - runs["off"].images).max() <= 2


@pytest.mark.parametrize("keep_best", [False, True])
def test_a_snapshot_shows_what_the_final_image_would(keep_best):
    # keras-vis: a display view differs from the model-space image, and keep_best shows
    # the best raw so far, not the current one.
    config = dataclasses.replace(presets.get("keras-vis"), keep_best=keep_best)
    recipe = presets.resolve(config, LAYER, SIZE, steps=4)
    ascent = Ascent(apply=None, stop_at=LAYER, recipe=recipe)
    raw, best = (recipe.param.init(k) for k in jax.random.split(jax.random.key(0)))
    got = np.asarray(ascent.snapshot_one(State(raw, None, best, jnp.float32(0.0))))
    shown, other = (best, raw) if keep_best else (raw, best)
    want = inflight.to_uint8(np.asarray(param.to_display(recipe.param, shown)))
    assert got.dtype == np.uint8 and got.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_array_equal(got, want)
    unwanted = inflight.to_uint8(np.asarray(param.to_display(recipe.param, other)))
    assert np.abs(got.astype(int) - unwanted).mean() > 1


def test_block_size_divides_k():
    assert engine.block_steps_for(512, "cpu") == engine.block_steps_for(512, "cpu", 64) == 8
    assert engine.block_steps_for(512, "gpu", 16) == engine.block_steps_for(512, "gpu") == 16
    assert engine.block_steps_for(512, "cpu", 12) == 6
    assert engine.block_steps_for(512, "gpu", 24) == 12
    assert engine.block_steps_for(512, "gpu", 13) == 13
    assert engine.block_steps_for(512, "gpu", 17) == 1  # a prime over the target
    assert engine.block_steps_for(8, "cpu", 3) == 3
    assert engine.block_steps_for(509, "cpu", 509) == 8  # K = steps: only the final picture


def test_block_steps_from_the_environment(monkeypatch):
    monkeypatch.setenv(engine.BLOCK_STEPS_ENV, "3")
    assert engine.block_steps_for(512, "cpu") == engine.block_steps_for(512, "gpu") == 2
    assert engine.block_steps_for(9, "cpu") == engine.block_steps_for(12, "gpu", 6) == 3
    for bad in ("0", "-2", "two", "1.5", "²"):
        monkeypatch.setenv(engine.BLOCK_STEPS_ENV, bad)
        with pytest.raises(JaxvisError, match=f"JAXVIS_BLOCK_STEPS must be a positive.*{bad}"):
            engine.block_steps_for(512, "cpu")


@pytest.mark.parametrize(
    "k, why",
    [(0, "positive integer"), (-3, "positive integer"), (17, "valid: 1 to 16"), (2.0, "got 2.0")],
)
def test_invalid_k_is_refused_before_anything_runs(model, tmp_path, k, why):
    with pytest.raises(JaxvisError, match=why) as e:
        jaxvis.visualize(model, LAYER, UNITS, snapshots=k, **RUN)
    assert "\n" not in str(e.value) and "16" in str(e.value)
    with pytest.raises(JaxvisError, match=why):
        generate_atlas(model, tmp_path / "x.h5", {LAYER: UNITS}, snapshots=k, **RUN)
    assert not os.listdir(tmp_path)


def test_atlas_holds_the_snapshots_and_off_holds_none(runs, model, atlas_k8, tmp_path):
    with open_atlas(atlas_k8) as atlas:
        view = atlas[LAYER]
        assert view.snapshot_every == 8
        assert list(view.filters) == UNITS
        np.testing.assert_array_equal(view.snapshots[()], runs["on"].snapshots)
        np.testing.assert_array_equal(view.images[()], runs["on"].images)
        assert f"snapshots {LAYER}: every 8 steps, 2 a filter" in atlas.summary()
    off = generate_atlas(model, tmp_path / "off.h5", {LAYER: UNITS}, progress=False, **RUN)
    with h5py.File(off, "r") as f:
        assert "snapshots" not in f[LAYER] and "snapshot_every" not in f[LAYER].attrs
    with open_atlas(off) as atlas:
        assert atlas[LAYER].snapshots is None and atlas[LAYER].snapshot_every == 0
        assert not [ln for ln in atlas.summary().splitlines() if ln.startswith("snapshots")]


def fingerprint(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_resume_with_another_k_is_refused(runs, model, atlas_k8, tmp_path):
    path = tmp_path / "a.h5"
    path.write_bytes(atlas_k8.read_bytes())
    before = fingerprint(path)
    for k, now in [(None, 0), (16, 16)]:
        with pytest.raises(JaxvisError) as e:
            generate_atlas(model, path, {LAYER: [0, 3, 5, 6]}, snapshots=k, progress=False, **RUN)
        assert f"layers.{LAYER}.snapshot_every: 8 in the file, {now} now" in str(e.value)
        assert "--overwrite" in str(e.value) and "\n" not in str(e.value)
        assert fingerprint(path) == before
    # Two new units: a full chunk of the compiled program (one would compile another).
    generate_atlas(model, path, {LAYER: [0, 3, 5, 6]}, snapshots=8, progress=False, **RUN)
    with open_atlas(path) as atlas:
        assert list(atlas[LAYER].filters) == [0, 3, 5, 6]
        assert atlas[LAYER].snapshots.shape == (4, 2, SIZE, SIZE, 3)
    # And the other way round: rows without snapshots take none.
    off = tmp_path / "off.h5"
    generate_atlas(model, off, {LAYER: [0, 1]}, progress=False, **RUN)
    with pytest.raises(JaxvisError, match="snapshot_every: 0 in the file, 8 now"):
        generate_atlas(model, off, {LAYER: [0, 1, 2]}, snapshots=8, progress=False, **RUN)


def test_reader_reads_snapshots_without_jax(atlas_k8, runs):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import jaxvis.atlas
        with jaxvis.atlas.open_atlas({str(atlas_k8)!r}) as atlas:
            view = atlas[{LAYER!r}]
            frames = view.snapshots[view.index(3)]
            print(view.snapshot_every, frames.shape, int(frames.astype(np.int64).sum()))
            atlas.summary()
        assert "jax" not in sys.modules, sorted(m for m in sys.modules if "jax" in m)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    want = runs["on"].snapshots[1].astype(np.int64).sum()
    assert out.stdout.split() == ["8", "(2,", f"{SIZE},", f"{SIZE},", "3)", str(want)]


def synthetic_chunk(layer, filters, every, steps=8, size=8) -> Chunk:
    """Flat-coloured frames, different for every (filter, snapshot); the final image is
    the last snapshot when ``every`` divides ``steps`` (as the engine makes it), and
    ``every=0`` makes a chunk without snapshots."""
    f = np.asarray(filters)
    s = steps // (every or steps)
    level = 10 + 60 * np.arange(s)[None, :] + 5 * f[:, None]  # [n, S]
    snaps = np.broadcast_to(level[:, :, None, None, None], (len(f), s, size, size, 3))
    snaps = snaps.astype(np.uint8).copy()
    snaps[..., 1] = 200 - snaps[..., 1]  # colour, so channels are told apart
    final = snaps[:, -1].copy() if steps % (every or 1) == 0 else snaps[:, -1] + np.uint8(25)
    return Chunk(
        layer=layer,
        filters=f,
        images=final,
        objective=np.zeros(len(f), np.float32),
        history=np.zeros((len(f), steps), np.float32),
        failed={},
        seconds=0.0,
        compile_seconds=0.0,
        snapshots=snaps if every else None,
        snapshot_every=every,
    )


def write_synthetic(path, layers: dict[str, tuple[list[int], int]]):
    with AtlasWriter(path, provenance=PROV) as w:
        for layer, (filters, every) in layers.items():
            w.write_chunk(layer, synthetic_chunk(layer, filters, every), num_filters_in_layer=16)
    return path


def frames_of(path: str) -> tuple[list[np.ndarray], list[int]]:
    with Image.open(path) as im:
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            im.load()
            frames.append(np.asarray(im.convert("RGB")).astype(int))
            durations.append(im.info["duration"])
    return frames, durations


def test_export_animate_writes_snapshots_then_the_final_image(tmp_path):
    path = write_synthetic(tmp_path / "a.h5", {"a": ([0, 2], 3), "b": ([1], 4)})
    out = tmp_path / "out"
    written = export_atlas(path, out, animate=True)
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["a_0.jpg", "a_0.webp", "a_2.jpg", "a_2.webp", "b_1.jpg", "b_1.webp"]
    with open_atlas(path) as atlas:
        for layer, unit, frames_expected in [("a", 0, 3), ("a", 2, 3), ("b", 1, 2)]:
            view = atlas[layer]
            row = view.index(unit)
            want = [*view.snapshots[row], view.images[row]]
            frames, durations = frames_of(out / f"{layer}_{unit}.webp")
            # S + 1 frames; when K divides the steps (layer b) the last snapshot is the
            # final image and the encoder merges the two into one longer frame.
            assert len(frames) == frames_expected == view.snapshots.shape[1] + (layer == "a")
            for got, expect in zip(frames, want, strict=False):
                assert np.abs(got - expect.astype(int)).mean() < 3
            np.testing.assert_allclose(frames[-1], view.images[row], atol=6)
            last = FINAL_MS if layer == "a" else FRAME_MS + FINAL_MS
            assert durations == [FRAME_MS] * (frames_expected - 1) + [last]


def test_export_animate_refusals_and_force(tmp_path):
    path = write_synthetic(tmp_path / "a.h5", {"a": ([0], 3), "plain": ([0, 1], 0)})
    out = tmp_path / "out"
    with pytest.raises(JaxvisError, match="layer plain of .* has no snapshots") as e:
        export_atlas(path, out, animate=True)
    assert "--layers a" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()  # refused before anything is written
    plain = write_synthetic(tmp_path / "p.h5", {"plain": ([0], 0)})
    with pytest.raises(JaxvisError, match="has no snapshots to animate; write the atlas"):
        export_atlas(plain, out, animate=True)
    export_atlas(plain, out)  # stills need no snapshots
    out.joinpath("a_0.webp").write_bytes(b"mine")
    with pytest.raises(JaxvisError, match="a_0.webp already exists; pass --force"):
        export_atlas(path, out, layers="a", animate=True)
    assert out.joinpath("a_0.webp").read_bytes() == b"mine" and not out.joinpath("a_0.jpg").exists()
    export_atlas(path, out, layers="a", animate=True, force=True)
    with Image.open(out / "a_0.webp") as im:
        assert im.n_frames == 3


def edit(path, tmp_path, name, change):
    """A copy of ``path`` with ``change(group)`` applied to layer ``a``."""
    copy = tmp_path / f"{name}.h5"
    copy.write_bytes(path.read_bytes())
    with h5py.File(copy, "r+") as f:
        change(f["a"])
    return copy


def _retype(group, dtype):
    data = group["snapshots"][()]
    del group["snapshots"]
    group.create_dataset("snapshots", data=data.astype(dtype))


def _attr(value):
    def change(group):
        group.attrs["snapshot_every"] = value

    return change


MALFORMED = {
    "no attribute": (
        lambda g: g.attrs.__delitem__("snapshot_every"),
        "has snapshots but no attribute 'snapshot_every'",
    ),
    "no dataset": (
        lambda g: g.__delitem__("snapshots"),
        "has attribute 'snapshot_every' but no snapshots",
    ),
    "K zero": (_attr(np.int32(0)), "'snapshot_every' is 0; expected an integer >= 1"),
    "K a string": (_attr("3"), "'snapshot_every' is '3'; expected an integer"),
    "K over steps": (_attr(np.int32(9)), "'snapshot_every' is 9; expected 1 to 8"),
    "S not steps // K": (_attr(np.int32(2)), r"expected uint8 \[2, 4, 8, 8, 3\]"),
    "float frames": (lambda g: _retype(g, np.float32), "snapshots is float32"),
    "a row short": (lambda g: g["snapshots"].resize(1, axis=0), r"expected uint8 \[2, 2, 8"),
    "rank 4": (
        lambda g: (g.__delitem__("snapshots"), g.create_dataset("snapshots", (2, 8, 8, 3), "u1")),
        r"expected uint8 \[N, S, H, W, 3\]",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_snapshots_are_refused(tmp_path, case):
    good = write_synthetic(tmp_path / "good.h5", {"a": ([0, 1], 3)})
    change, message = MALFORMED[case]
    bad = edit(good, tmp_path, "bad", change)
    with pytest.raises(JaxvisError, match=message) as e:
        open_atlas(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(JaxvisError, match=message):  # nor resumed
        AtlasWriter(bad, provenance=PROV)


def test_writer_keeps_a_layers_rows_alike(tmp_path):
    path = write_synthetic(tmp_path / "a.h5", {"a": ([0], 2), "plain": ([0], 0)})
    with AtlasWriter(path, provenance=PROV) as w:  # each layer has its own K, or none
        with pytest.raises(JaxvisError, match="snapshot_every 2 .* snapshot_every 0"):
            w.write_chunk("a", synthetic_chunk("a", [1], 0), num_filters_in_layer=16)
        with pytest.raises(JaxvisError, match="snapshot_every 0 .* snapshot_every 4"):
            w.write_chunk("plain", synthetic_chunk("plain", [1], 4), num_filters_in_layer=16)
        with pytest.raises(JaxvisError, match="layers.a.snapshot_every: 2 in the file, 4 now"):
            w.request({"a": [3]}, num_filters={"a": 16}, snapshot_every={"a": 4})
        w.write_chunk("new", synthetic_chunk("new", [1], 4), num_filters_in_layer=16)
        short = synthetic_chunk("a", [1], 2)
        short = Chunk(**{**short.__dict__, "snapshots": short.snapshots[:, :3]})
        with pytest.raises(JaxvisError, match=r"must be uint8 \[1, 4, 8, 8, 3\]"):
            w.write_chunk("a", short, num_filters_in_layer=16)
    with open_atlas(path) as atlas:
        assert [atlas[la].snapshot_every for la in ("a", "plain", "new")] == [2, 0, 4]


def test_snapshots_are_read_back_before_the_commit(tmp_path, monkeypatch):
    path = write_synthetic(tmp_path / "a.h5", {"a": ([0], 2)})
    with open_atlas(path) as atlas:
        before = atlas["a"].filters.tolist(), atlas["a"].snapshots[:].tobytes()
    write_rows = commit_module.write_rows

    def lossy(fd, writes):  # a write the disk got wrong without an error
        write_rows(fd, [(n, o, bytes(len(d)) if n == "snapshots" else d) for n, o, d in writes])

    monkeypatch.setattr(commit_module, "write_rows", lossy)
    with (
        AtlasWriter(path, provenance=PROV) as w,
        pytest.raises(JaxvisError, match="a/snapshots read back differently"),
    ):
        w.write_chunk("a", synthetic_chunk("a", [1], 2), num_filters_in_layer=16)
    with open_atlas(path) as atlas:  # the chunk is not committed: the atlas reads as before
        assert (atlas["a"].filters.tolist(), atlas["a"].snapshots[:].tobytes()) == before
    assert not os.path.exists(f"{path}.tmp")
