"""Faults a real run meets: a full disk, a kill during --overwrite, Ctrl-C and SIGTERM at
any moment, a symlinked output, sizes that cannot fit, and non-integer arguments."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from chunks import make_chunk

import jaxvis
from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.atlas import commit as commit_mod
from jaxvis.atlas import snapshot as snapshot_mod
from jaxvis.errors import JaxvisError
from jaxvis.scheduler import generate_atlas

PROV = {"model": "m", "weights": {}, "config": {"steps": 1}, "device_kind": "cpu"}
JAXVIS = [sys.executable, "-m", "jaxvis.cli"]
SIDE = 224  # one 224 px image is 147 KiB, so a 2 MiB disk holds a dozen


def picture(f: int) -> np.ndarray:
    return np.random.default_rng(f).integers(1, 256, (1, SIDE, SIDE, 3), dtype=np.uint8)


def write_one(w: AtlasWriter, f: int, layer: str = "c") -> None:
    chunk = make_chunk(layer, [f], picture(f), [float(f)], [[float(f)]])
    w.write_chunk(layer, chunk, num_filters_in_layer=64)


def contents(path) -> tuple:
    """What a reader sees: committed filters, images and the commit record."""
    with open_atlas(path) as atlas:
        view = atlas["c"]
        return view.filters.tolist(), view.images[:].tobytes(), view.failed, len(view.seconds)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (CI runs as root); skipped, loudly, only if mounting is refused."""
    mount = tmp_path / "small"
    mount.mkdir()
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if run.returncode:
        message = f"FULL-DISK TEST NOT RUN: mounting a tmpfs was refused: {run.stderr.strip()}"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path) -> tuple[int, str]:
    """Writes chunks until the disk is full; returns (filters committed, the error)."""
    with AtlasWriter(path, provenance=PROV) as w:
        for f in range(64):
            try:
                write_one(w, f)
            except JaxvisError as e:
                return f, str(e)
    raise AssertionError("the disk never filled")


def _assert_whole(path, committed: int) -> None:
    with open_atlas(path) as atlas:
        view = atlas["c"]
        assert sorted(view.filters.tolist()) == list(range(committed))
        for f in range(committed):  # every committed row is the real picture, not zeros
            np.testing.assert_array_equal(view.image(f), picture(f)[0])
    assert not os.path.exists(f"{path}.tmp")


def test_full_disk_refused_before_writing(small_disk):
    path = small_disk / "a.h5"
    committed, message = _fill(path)
    assert committed >= 2
    assert message.startswith(f"no space left on {small_disk}") and "re-run to resume" in message
    _assert_whole(path, committed)


def test_write_error_during_snapshot_aborts_the_commit(small_disk, monkeypatch):
    # Without the room check, HDF5 itself runs out of space mid-write: the error must still
    # abort that one commit, with the live atlas as it was and no segfault.
    monkeypatch.setattr(snapshot_mod, "_check_room", lambda directory, need: None)
    path = small_disk / "a.h5"
    committed, message = _fill(path)
    assert committed >= 2
    assert message.startswith(f"no space left on {small_disk}") and "\n" not in message
    _assert_whole(path, committed)


def test_rows_that_read_back_wrong_are_not_committed(tmp_path, monkeypatch):
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        write_one(w, 0)
        write_one(w, 1)  # the capacity is now 2: the next row is written in place
    before = contents(path)
    real_rows = commit_mod.write_rows

    def lossy_rows(fd, writes):  # what a silently failed write leaves behind
        real_rows(fd, [(n, o, bytes(len(d)) if n == "images" else d) for n, o, d in writes])

    monkeypatch.setattr(commit_mod, "write_rows", lossy_rows)
    with AtlasWriter(path, provenance=PROV) as w, pytest.raises(JaxvisError, match="read back"):
        write_one(w, 2)
    assert contents(path) == before and not os.path.exists(f"{path}.tmp")
    monkeypatch.undo()  # a resume writes the row again, and commits it
    with AtlasWriter(path, provenance=PROV) as w:
        write_one(w, 2)
    _assert_whole(path, 3)


def test_cli_full_disk_is_one_line_and_resumes(small_disk, tmp_path):
    out = small_disk / "a.h5"
    args = ["--layers", "block1_conv1", "--filters", "0-19", "--size", "224", "--steps", "1"]
    cmd = [*JAXVIS, "atlas", *args, "--batch", "1", "--weights", "random", "--no-progress"]
    run = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jaxvis: error: no space left on {small_disk}")
    with open_atlas(out) as atlas:
        done = len(atlas["block1_conv1"])
        # The first chunk allocates room for all 20 requested filters (about 3 MB), so the
        # full disk is found there, before any row is written, not in the middle of a run.
        assert done == 0
        assert all(atlas["block1_conv1"].images[i].max() > 0 for i in range(done))
    assert not os.path.exists(f"{out}.tmp")
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    run = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    with open_atlas(out) as atlas:
        assert sorted(atlas["block1_conv1"].filters.tolist()) == list(range(20))


OVERWRITE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from chunks import make_chunk
    from jaxvis.atlas import AtlasWriter
    prov = {{"model": "m", "weights": {{}}, "config": {{"steps": 2}}, "device_kind": "cpu"}}
    with AtlasWriter(sys.argv[1], provenance=prov, overwrite=True) as w:
        for f in range(8):
            if f not in w.done("c"):
                image = np.full((1, 8, 8, 3), f + 1, np.uint8)
                w.write_chunk("c", make_chunk("c", [f], image, [0.0], [[0.0]]),
                              num_filters_in_layer=64)
                print("chunk", flush=True)
                if sys.argv[2] == "slow":
                    time.sleep(30)
    """
)


def test_kill_during_overwrite_keeps_the_old_atlas_then_resumes(tmp_path):
    path = tmp_path / "a.h5"
    with AtlasWriter(path, provenance=PROV) as w:
        for f in range(8):
            write_one(w, f)
    old = digest(path)
    script = OVERWRITE_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path), "slow"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "chunk"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert digest(path) == old  # the finished atlas is whole and unchanged
    with open_atlas(path) as atlas:
        assert len(atlas["c"]) == 8
    with open_atlas(f"{path}.new") as new:
        assert new["c"].filters.tolist() == [0]
    run = subprocess.run([sys.executable, "-c", script, str(path), "fast"], capture_output=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().count("chunk") == 7  # resumed the new build, not a third
    assert not os.path.exists(f"{path}.new")
    with open_atlas(path) as atlas:
        assert atlas.config == {"steps": 2} and sorted(atlas["c"].filters.tolist()) == list(
            range(8)
        )


def test_symlinked_out_writes_through_the_link(tmp_path):
    real = tmp_path / "real.h5"
    link = tmp_path / "link.h5"
    with AtlasWriter(real, provenance=PROV) as w:
        write_one(w, 0)
    link.symlink_to(real)
    with AtlasWriter(link, provenance=PROV) as w:
        assert os.path.exists(f"{real}.lock") and not os.path.exists(f"{link}.lock")
        write_one(w, 1)
    assert link.is_symlink()
    with open_atlas(real) as atlas:
        assert sorted(atlas["c"].filters.tolist()) == [0, 1]


CTRL_C_RUN = [
    "atlas",
    "--layers",
    "block1_conv1",
    "--filters",
    "0-31",  # long enough (a few seconds) that a signal after the first chunk lands mid-run
    "--size",
    "32",
    "--steps",
    "4",
    "--batch",
    "1",
    "--preset",
    "keras-vis",
    "--weights",
    "random",
]


def _signal_run(out, signum, when):
    """Starts the CLI, sends ``signum`` at ``when`` (seconds, or "chunk" after one chunk
    is committed), and returns (status, stderr)."""
    proc = subprocess.Popen(
        [*JAXVIS, *CTRL_C_RUN, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    if when == "chunk":
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, JaxvisError, KeyError), open_atlas(out) as atlas:
                if len(atlas["block1_conv1"]):
                    break
            time.sleep(0.02)
    else:
        time.sleep(when)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize(
    "signum, when, status",
    [
        (signal.SIGINT, 0.3, 130),  # during imports
        (signal.SIGINT, 2.5, 130),  # model load and compile
        (signal.SIGINT, "chunk", 130),
        (signal.SIGTERM, "chunk", 143),
    ],
)
def test_signals_exit_with_one_line_and_resume(tmp_path, signum, when, status):
    out = tmp_path / "a.h5"
    code, err = _signal_run(out, signum, when)
    if code == 0:
        pytest.skip("the run finished before the signal")
    assert code == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("jaxvis: error: ") and "re-run the same command" in lines[-1]
    assert not any("done:" in line for line in lines), err
    if when == "chunk":  # what was committed stays, and the same command finishes
        run = subprocess.run([*JAXVIS, *CTRL_C_RUN, "--out", str(out)], capture_output=True)
        assert run.returncode == 0, run.stderr
        with open_atlas(out) as atlas:
            assert sorted(atlas["block1_conv1"].filters.tolist()) == list(range(32))


@pytest.fixture(scope="module")
def model():
    return jaxvis.vgg16(None)


def test_huge_size_refused_before_the_file(tmp_path, model):
    out = tmp_path / "a.h5"
    with pytest.raises(JaxvisError, match=r"GiB .* the largest size that fits is about \d+ px"):
        generate_atlas(model, str(out), {"block1_conv1": [0]}, size=100_000, progress=False)
    assert not os.path.exists(out)
    with pytest.raises(JaxvisError, match="largest size that fits"):
        jaxvis.visualize(model, "block1_conv1", [0], size=8000)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, out: jaxvis.visualize(m, "block1_conv1", [1.7], size=32), "integers"),
        (lambda m, out: generate_atlas(m, out, {"block1_conv1": [2.9]}, size=32), "integers"),
        (lambda m, out: jaxvis.visualize(m, "block1_conv1", [0], size=32, steps=4.7), "steps"),
        (lambda m, out: generate_atlas(m, out, {"block1_conv1": [3, 3]}, size=32), "twice"),
        (lambda m, out: jaxvis.visualize(m, "block1_conv1", [0], size=32.0), "size"),
        (lambda m, out: jaxvis.visualize(m, "block1_conv1", [0], size=32, batch=1.5), "batch"),
    ],
)
def test_non_integers_refused(tmp_path, model, call, match):
    out = str(tmp_path / "a.h5")
    with pytest.raises(JaxvisError, match=match):
        call(model, out)
    assert not os.path.exists(out)


def test_numpy_integers_accepted(model):
    res = jaxvis.visualize(model, "block1_conv1", np.array([2]), size=np.int64(32), steps=1)
    assert res.filters.tolist() == [2]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["atlas", "--layers", "block1_conv1", "--size", "abc", "--out", "x.h5"], "--size"),
        (["atlas", "--layers", "block1_conv1", "--filters", "-1", "--out", "x.h5"], "'-1'"),
        (["atlas", "--layers", "block1_conv1", "--out", ""], "atlas path is empty"),
        (["atlas", "--out", "x.h5"], "--layers"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_every_cli_error_is_one_line(tmp_path, argv, words):
    run = subprocess.run([*JAXVIS, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvis: error: ") and words in lines[0], lines
    assert "usage" not in run.stderr


def test_bad_block_steps_from_the_environment_is_one_line_before_the_file(tmp_path):
    argv = ["atlas", "--layers", "block1_conv1", "--filters", "0", "--size", "32"]
    argv += ["--steps", "2", "--weights", "random", "--no-progress", "--out", "x.h5"]
    env = {**os.environ, "JAXVIS_BLOCK_STEPS": "eight"}
    run = subprocess.run([*JAXVIS, *argv], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "JAXVIS_BLOCK_STEPS must be a positive" in lines[0], lines
    assert "'eight'" in lines[0] and not list(tmp_path.iterdir())


def test_overwrite_help_says_what_it_does():
    run = subprocess.run([*JAXVIS, "atlas", "--help"], capture_output=True, text=True)
    text = " ".join(run.stdout.split())
    assert "OUT.new" in text and "replaces OUT only once complete" in text


def test_h5py_sees_the_error_not_a_warning(small_disk, monkeypatch):
    """The snapshot opens HDF5 without a chunk cache, so a failed write raises where it
    happens instead of being reported only when the file closes."""
    monkeypatch.setattr(snapshot_mod, "_check_room", lambda directory, need: None)
    path = small_disk / "a.h5"
    with pytest.raises(JaxvisError), snapshot_mod.snapshot(str(path), fresh=True) as f:
        f.create_dataset("x", data=np.ones((12, 512, 512), np.uint8), chunks=(1, 512, 512))
    assert not os.path.exists(path) and not os.path.exists(f"{path}.tmp")
