"""Multi-process atlases (jaxvis/cluster.py, jaxvis/parts.py, jaxvis/heartbeat.py):
the same atlas as one process, SIGKILL of either process then a resume, bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from chunks import make_chunk

from jaxvis import parts
from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.cluster import Cluster, share
from jaxvis.errors import JaxvisError
from jaxvis.heartbeat import Watch

ATLAS = [
    "atlas", "--layers", "conv1,conv2", "--filters", "0-7", "--size", "64",
    "--steps", "8", "--preset", "keras-vis", "--model", "alexnet", "--weights", "random",
    "--no-progress",
]  # fmt: skip
BOUND = 90  # seconds any one process may take here; a hang fails the test, not CI
# --peer-timeout of the pairs that get killed: the survivor waits this long for the dead
# peer's heartbeat, so it is short; the same bound covers joining, and both processes of
# a pair start together.
PEER_TIMEOUT = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "JAX_NUM_CPU_DEVICES": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def start(out, *extra, environ=None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "jaxvis.cli", *ATLAS, "--out", str(out), *extra]
    return subprocess.Popen(
        argv, env=environ or env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def start_pair(out, timeout=15):
    port = free_port()
    flags = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    flags += ["--peer-timeout", str(timeout)]
    return [start(out, *flags, "--process-id", str(i)) for i in (0, 1)]


def start_slurm_pair(out, timeout=15):
    """As ``srun --ntasks=2 jaxvis atlas ... --distributed`` would: no explicit options;
    jax finds the step from SLURM's variables (its port comes from the job id)."""
    for job in range(1000, 5096):  # jax takes port 61440 + job % 4096
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + job % 4096))
            except OSError:
                continue
        break
    step = {"SLURM_JOB_ID": str(job), "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2"}
    flags = ["--distributed", "--peer-timeout", str(timeout)]
    return [
        start(
            out, *flags, environ={**env(), **step, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}
        )
        for i in (0, 1)
    ]


def finish(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=BOUND)
    return proc.returncode, out, err


def contents(path):
    """``{layer: (sorted filters, images, objective, history, failed)}`` by filter."""
    with open_atlas(path) as atlas:
        out = {}
        for name in sorted(atlas.layers):
            v = atlas[name]
            order = np.argsort(v.filters)
            images = np.asarray(v.images[:])[order]
            out[name] = (v.filters[order].tolist(), images, v.objective[order], v.failed)
        return out, atlas.provenance["device_kinds"]


def assert_same(got, want):
    assert list(got) == list(want)
    for name, (filters, images, objective, failed) in want.items():
        g_filters, g_images, g_objective, g_failed = got[name]
        assert g_filters == filters, f"{name}: units lost or duplicated"
        assert np.abs(g_images.astype(int) - images.astype(int)).max() <= 1
        np.testing.assert_allclose(g_objective, objective, rtol=1e-4, atol=1e-5)
        assert g_failed == failed


def rows(path) -> int:
    try:
        with open_atlas(path) as atlas:
            return sum(len(atlas[name]) for name in atlas.layers)
    except (JaxvisError, OSError):
        return 0


def kill_when_rows(proc, path, deadline=BOUND) -> None:
    """SIGKILLs ``proc`` as soon as ``path`` holds a committed row: mid-share."""
    end = time.monotonic() + deadline
    while rows(path) == 0:
        assert proc.poll() is None, "the process ended before committing a row"
        assert time.monotonic() < end, "no row committed in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=BOUND)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one.h5"
    code, _, err = finish(start(out))
    assert code == 0, err
    return contents(out)


@pytest.mark.parametrize("victim", [1, 0])
def test_two_processes_killed_then_resumed_equal_one_process(tmp_path, reference, victim):
    out = tmp_path / "two.h5"
    procs = start_pair(out, timeout=PEER_TIMEOUT)
    watched = parts.part_path(str(out), 1) if victim == 1 else str(out)
    kill_when_rows(procs[victim], watched)
    survivor = procs[1 - victim]
    killed_at = time.monotonic()
    code, _, err = finish(survivor)
    waited = time.monotonic() - killed_at
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("jaxvis: error: ") and "run the same command" in lines[0]
    assert f"process {victim}" in lines[0]
    assert waited < PEER_TIMEOUT + 30, f"the survivor took {waited:.0f} s to stop"

    resume = start_pair if victim == 1 else start_slurm_pair
    results = [finish(p) for p in resume(out)]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    got, kinds = contents(out)
    assert_same(got, reference[0])
    assert kinds == ["cpu:cpu x1, 2 processes"]
    assert not os.path.exists(parts.folder(str(out))), "parts left behind"
    if victim == 1:  # the same command on the finished atlas: nothing to do, no error
        results = [finish(p) for p in start_pair(out)]
        assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
        assert_same(contents(out)[0], reference[0])


def test_join_timeout_is_one_line_and_bounded(tmp_path):
    port = free_port()
    flags = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    began = time.monotonic()
    proc = start(tmp_path / "a.h5", *flags, "--process-id", "0", "--peer-timeout", "3")
    code, _, err = finish(proc)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "did not join" in err and time.monotonic() - began < 30
    assert not os.path.exists(tmp_path / "a.h5")


def test_processes_with_other_settings_are_refused(tmp_path):
    port = free_port()
    flags = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    a = start(tmp_path / "a.h5", *flags, "--process-id", "0", "--peer-timeout", "20")
    b = start(tmp_path / "a.h5", *flags, "--process-id", "1", "--peer-timeout", "20", "--seed", "1")
    for code, _, err in (finish(a), finish(b)):
        assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "a.h5")


EXPLICIT = ["--num-processes", "2", "--process-id"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--coordinator", "h:1", *EXPLICIT, "0"], "need --distributed"),
        (["--distributed", "--coordinator", "h:1"], "give all of"),
        (["--distributed", "--coordinator", "h", *EXPLICIT, "0"], "HOST:PORT"),
        (["--distributed", "--coordinator", "h:1", *EXPLICIT, "2"], "0 to 1"),
        (["--distributed", "--peer-timeout", "0"], "positive"),
    ],
)
def test_bad_distributed_options(tmp_path, capsys, extra, match):
    from jaxvis.cli import main

    code = main([*ATLAS, "--out", str(tmp_path / "a.h5"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_shares_partition_the_request_whatever_is_done():
    units = [5, 9, 1, 7, 3, 8, 2]
    for n in (1, 2, 3, 8):
        pieces = [share(units, Cluster(i, n)) for i in range(n)]
        assert sorted(sum(pieces, [])) == sorted(units)  # each unit in exactly one share
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    assert share(units, Cluster(1, 2)) == [9, 7, 8]


def test_watch_counts_silence_with_its_own_clock(tmp_path):
    beat = tmp_path / "p.alive"
    now = [0.0]
    watch = Watch({1: str(beat)}, 10.0, clock=lambda: now[0])
    now[0] = 9.0
    assert watch.stopped([1]) == []  # a file not there yet: counted from the start
    now[0] = 11.0
    assert watch.stopped([1]) == [1]
    beat.write_text("7 1\n")
    assert watch.stopped([1]) == [] and watch.changed(1)
    now[0] = 20.0
    assert watch.stopped([1]) == []
    now[0] = 21.5
    assert watch.stopped([1]) == [1]


PROV = {
    "model": "m",
    "weights": {"source": "random", "sha256": "", "trained": False, "seed": 0},
    "config": {"steps": 3, "size": 8, "seed": 0},
    "device_kind": "cpu",
}


def synthetic(layer, filters, failed=None):
    filters = np.asarray(filters)
    images = (filters[:, None, None, None] + np.zeros((1, 8, 8, 3))).astype(np.uint8)
    objective = filters.astype(np.float32)
    history = np.repeat(objective[:, None], 3, axis=1)
    return make_chunk(layer, filters, images, objective, history, seconds=1.0, failed=failed or {})


def test_merge_adds_each_unit_once_with_failures(tmp_path):
    out = str(tmp_path / "a.h5")
    os.makedirs(parts.folder(out))
    with AtlasWriter(parts.part_path(out, 1), provenance=PROV) as part:
        part.write_chunk("c", synthetic("c", [1, 3], {5: "boom"}), num_filters_in_layer=8)
        part.write_chunk("c", synthetic("c", [7]), num_filters_in_layer=8)
    with AtlasWriter(out, provenance=PROV) as main:
        main.write_chunk("c", synthetic("c", [0, 3]), num_filters_in_layer=8)
        assert parts.merge(out, main, PROV) == 3  # 1, 5 (failed) and 7; 3 is there already
        assert parts.merge(out, main, PROV) == 0
    with open_atlas(out) as atlas:
        v = atlas["c"]
        assert sorted(v.filters.tolist()) == [0, 1, 3, 7] and v.failed == {5: "boom"}
        assert v.image(7)[0, 0, 0] == 7 and v.objective[v.index(1)] == 1.0


def test_merge_refuses_a_part_of_another_run(tmp_path):
    out = str(tmp_path / "a.h5")
    os.makedirs(parts.folder(out))
    other = {**PROV, "config": {**PROV["config"], "seed": 1}}
    with AtlasWriter(parts.part_path(out, 1), provenance=other) as part:
        part.write_chunk("c", synthetic("c", [1]), num_filters_in_layer=8)
    with AtlasWriter(out, provenance=PROV) as main, pytest.raises(JaxvisError, match="seed"):
        parts.merge(out, main, PROV)


JOIN = """
import sys, jax
from jaxvis import cluster
me = cluster.join("same", coordinator=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                  timeout=30)
print(me.process_id, me.num_processes, jax.process_index(), jax.process_count(),
      [d.id for d in jax.devices()])
"""


def test_joined_processes_are_plain_single_process_jax():
    """After the join each process numbers its devices from 0, as one process would, so
    that every process's programs hit the same persistent compilation cache."""
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOIN, address, str(i)],
            env=env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=BOUND)[0].split(maxsplit=4) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [o[:4] for o in outs] == [["0", "2", "0", "1"], ["1", "2", "0", "1"]]
    assert [o[4].strip() for o in outs] == ["[0]", "[0]"]
