"""Multi-process atlases: the measurements behind jaxvis/cluster.py's design.

Two designs were candidates (docs/scaling-out.md): (a) one global mesh over every
process's devices, with each chunk's results gathered to process 0
(``multihost_utils.process_allgather``), which needs JAX's distributed runtime up for the
whole run; (b) each process takes a share of the units, runs it on its local devices and
writes a part file that process 0 merges, with the runtime shut down after joining. This
script measures what tells them apart, on whatever machine runs it:

* ``scaling``: wall time of the real ``jaxvis atlas`` for one process with one device,
  one process with two devices (the engine's sharded chunk) and design (b) with two
  processes of one device each; the same command re-run on the finished atlas gives each
  variant's fixed cost (start-up, model, joining), so compute = wall - fixed.
* ``gather``: what design (a) adds per chunk: the seconds of a ``process_allgather`` of
  one chunk's results (pictures, history, objective) between two processes.
* ``failure``: what the survivor does when one of two processes is SIGKILLed: with the
  runtime up (design (a)'s situation: processes meet in a collective loop) and with
  design (b) (the real command). It reports how long the survivor took to end and how:
  its exit status and the lines it wrote to stderr.

    python -m benchmarks.distributed --tiny --out-dir /tmp   # does it run? (about 2 min)
    python -m benchmarks.distributed --quick
    python -m benchmarks.distributed

Each process is a fresh Python: the variants run one after another, never at once, and
in ``scaling`` round-robin after one untimed run each that fills the compile cache.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from benchmarks import env, options
from benchmarks.report import print_table, write_results

MODES = {
    "tiny": {"layer": "block1_conv1", "size": 32, "steps": 8, "filters": 4, "rounds": 1},
    "quick": {"layer": "block2_conv1", "size": 64, "steps": 64, "filters": 8, "rounds": 2},
    "full": {"layer": "block3_conv1", "size": 128, "steps": 128, "filters": 16, "rounds": 3},
}
GATHER_UNITS = {"tiny": (1, 4), "quick": (1, 4, 16), "full": (1, 4, 16, 64)}
TIMEOUT = 15  # seconds: the runtime's heartbeat timeout, and --peer-timeout, in `failure`
BOUND = 600  # no process here may take longer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: str) -> dict:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {
        **os.environ,
        "JAX_NUM_CPU_DEVICES": str(devices),
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "PYTHONPATH": path,
    }


def _atlas_argv(setting: dict, out: str, preset: str) -> list[str]:
    return [
        sys.executable, "-m", "jaxvis.cli", "atlas", "--layers", setting["layer"],
        "--filters", f"0-{setting['filters'] - 1}", "--size", str(setting["size"]),
        "--steps", str(setting["steps"]), "--preset", preset, "--weights", "random",
        "--no-progress", "--out", out,
    ]  # fmt: skip


def _pair_flags(port: int, pid: int, timeout: int = 120) -> list[str]:
    return [
        "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
        "--process-id", str(pid), "--peer-timeout", str(timeout),
    ]  # fmt: skip


def _run_variant(name: str, setting: dict, out: str, preset: str, cache: str) -> float:
    """Wall seconds of one ``jaxvis atlas`` of ``setting`` as variant ``name``."""
    argv = _atlas_argv(setting, out, preset)
    began = time.perf_counter()
    if name == "2 processes x 1 device":
        port = free_port()
        procs = [
            subprocess.Popen(
                [*argv, *_pair_flags(port, i)], env=_env(1, cache), stdout=subprocess.DEVNULL
            )
            for i in (0, 1)
        ]
        codes = [p.wait(timeout=BOUND) for p in procs]
    else:
        devices = 2 if name == "1 process x 2 devices" else 1
        codes = [
            subprocess.run(
                argv, env=_env(devices, cache), stdout=subprocess.DEVNULL, timeout=BOUND
            ).returncode
        ]
    if any(codes):
        raise RuntimeError(f"{name}: jaxvis atlas exited {codes}")
    return time.perf_counter() - began


VARIANTS = ("1 process x 1 device", "1 process x 2 devices", "2 processes x 1 device")


def scaling(setting: dict, preset: str, work: str) -> list[dict]:
    cache = os.path.join(work, "xla")
    walls = {v: [] for v in VARIANTS}
    fixed = {v: [] for v in VARIANTS}
    for i in range(setting["rounds"] + 1):  # round 0 fills the compile cache, untimed
        for v in VARIANTS:
            out = os.path.join(work, f"{v.replace(' ', '_')}-{i}.h5")
            wall = _run_variant(v, setting, out, preset, cache)
            again = _run_variant(v, setting, out, preset, cache)  # nothing left to do
            if i:
                walls[v].append(wall)
                fixed[v].append(again)
    work_steps = setting["filters"] * setting["steps"]
    rows = []
    for v in VARIANTS:
        wall, base = min(walls[v]), min(fixed[v])
        compute = max(wall - base, 1e-9)
        rows.append(
            {
                "variant": v,
                "wall_s": wall,
                "fixed_s": base,
                "compute_s": compute,
                "filter_steps_per_s": work_steps / compute,
                "speedup_vs_1x1": None,
            }
        )
    for r in rows:
        r["speedup_vs_1x1"] = rows[0]["compute_s"] / r["compute_s"]
    return rows


def _worker_argv(role: str, port: int, pid: int, mode: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.distributed",
        "--worker",
        role,
        "--port",
        str(port),
        "--pid",
        str(pid),
        f"--{mode}",
    ]


def gather(mode: str, work: str) -> list[dict]:
    port = free_port()
    procs = [
        subprocess.Popen(
            _worker_argv("gather", port, i, mode),
            env=_env(1, os.path.join(work, "xla")),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=BOUND)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"gather workers exited {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def _worker_gather(port: int, pid: int, mode: str) -> None:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=60)
    size, steps = 224, 512
    rows = []
    for units in GATHER_UNITS[mode]:
        results = (
            np.zeros((units, size, size, 3), np.uint8),
            np.zeros((units, steps), np.float32),
            np.zeros((units,), np.float32),
        )
        multihost_utils.process_allgather(results)  # compile
        times = []
        for _ in range(5):
            began = time.perf_counter()
            multihost_utils.process_allgather(results)
            times.append(time.perf_counter() - began)
        mb = sum(a.nbytes for a in results) / 2**20
        rows.append({"units_per_process": units, "MiB_per_process": mb, "gather_s": min(times)})
    print(json.dumps(rows), flush=True)


def _worker_collective(port: int, pid: int) -> None:
    """Design (a)'s situation: the runtime is up and the processes meet in collectives."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    jax.distributed.initialize(
        f"127.0.0.1:{port}", 2, pid, initialization_timeout=60, heartbeat_timeout_seconds=TIMEOUT
    )
    multihost_utils.process_allgather(np.zeros(4, np.float32))
    print("ready", flush=True)
    while True:
        multihost_utils.process_allgather(np.zeros(4, np.float32))
        time.sleep(0.1)


def _ended(proc, killed_at: float) -> dict:
    _, err = proc.communicate(timeout=BOUND)
    seconds = time.monotonic() - killed_at
    lines = [line for line in err.splitlines() if line.strip()]
    code = proc.returncode
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    return {
        "survivor_ends_after_s": seconds,
        "survivor_ends_by": how,
        "stderr_lines": len(lines),
        "last_line": lines[-1][:120] if lines else "",
    }


def failure(setting: dict, preset: str, mode: str, work: str) -> list[dict]:
    rows = []
    cache = os.path.join(work, "xla")
    for victim in (1, 0):
        port = free_port()
        procs = [
            subprocess.Popen(
                _worker_argv("collective", port, i, mode),
                env=_env(1, cache),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in (0, 1)
        ]
        for p in procs:
            p.stdout.readline()  # "ready"
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        procs[victim].wait()
        rows.append(
            {
                "design": "(a) runtime up, collectives",
                "killed": victim,
                **_ended(procs[1 - victim], killed),
            }
        )
    for victim in (1, 0):
        rows.append(
            {
                "design": "(b) split units (jaxvis atlas)",
                "killed": victim,
                **_kill_split(setting, preset, victim, work),
            }
        )
    return rows


def _kill_split(setting: dict, preset: str, victim: int, work: str) -> dict:
    from jaxvis import parts

    out = os.path.join(work, f"failure-{victim}.h5")
    port = free_port()
    argv = _atlas_argv({**setting, "filters": max(8, setting["filters"])}, out, preset)
    procs = [
        subprocess.Popen(
            [*argv, *_pair_flags(port, i, TIMEOUT)],
            env=_env(1, os.path.join(work, "xla")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    watched = parts.part_path(out, 1) if victim == 1 else out
    while not _has_rows(watched):
        if procs[victim].poll() is not None:
            raise RuntimeError(f"process {victim} ended before it committed a row")
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    procs[victim].wait()
    return _ended(procs[1 - victim], killed)


def _has_rows(path: str) -> bool:
    from jaxvis.atlas import open_atlas
    from jaxvis.errors import JaxvisError

    try:
        with open_atlas(path) as atlas:
            return any(len(atlas[name]) for name in atlas.layers)
    except (JaxvisError, OSError):
        return False


def main() -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--parts", default="scaling,gather,failure", help="which measurements, comma-separated"
    )
    p.add_argument("--worker", choices=["gather", "collective"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    m = options.mode(args)
    if args.worker == "gather":
        return _worker_gather(args.port, args.pid, m)
    if args.worker == "collective":
        return _worker_collective(args.port, args.pid)
    setting, preset = MODES[m], options.default_preset(args)
    print(env.describe_device())
    print(f"setting: {setting}, preset {preset}, random weights, processes run one at a time")
    wanted = args.parts.split(",")
    payload = {"mode": m, "setting": setting, "preset": preset}
    with tempfile.TemporaryDirectory(prefix="jaxvis-distributed-") as work:
        if "scaling" in wanted:
            payload["scaling"] = scaling(setting, preset, work)
            print_table(
                payload["scaling"],
                "jaxvis atlas: one process, two devices, two processes (design b)",
            )
        if "gather" in wanted:
            payload["gather"] = gather(m, work)
            print_table(
                payload["gather"],
                "design (a)'s extra cost per chunk: process_allgather of its results "
                "(224 px, 512 steps)",
            )
        if "failure" in wanted:
            payload["failure"] = failure(setting, preset, m, work)
            print_table(
                payload["failure"], f"one of two processes SIGKILLed (timeouts {TIMEOUT} s)"
            )
    if not args.no_save:
        print(write_results(options.result_name("distributed", args), payload, args.out_dir))


if __name__ == "__main__":
    main()
