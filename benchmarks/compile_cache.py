"""Compile time of a repeat ``jaxvis atlas`` run, with the persistent compilation cache.

Each pair runs the same ``jaxvis atlas`` command twice, as a user would, into one fresh
cache folder (``XDG_CACHE_HOME``): the first run compiles every program and keeps it,
the repeat loads them. Per layer, a chunk's atlas ``seconds`` hold its compile time and
its steps, and a layer's later chunks reuse the first one's programs, so a layer's
compile time is its first chunk's seconds less its second chunk's. The first layer's
first chunk also carries what a process does once (the first dispatch, lazy imports). The
whole run's compile time (tracing, lowering and backend compile or cache load, from
:mod:`jaxvis.compile_time`) comes from the process itself.

Usage: ``python -m benchmarks.compile_cache [--tiny | --quick] [--pairs N]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

from benchmarks import env, options, report

# mode -> (layers, px, steps, preset, pairs)
SETTINGS = {
    "full": ("block1_conv2,block3_conv3,block4_conv1,block5_conv3", 128, 16, "lucid", 2),
    "quick": ("block1_conv1,block3_conv1", 64, 16, "lucid", 1),
    "tiny": ("block1_conv1", 32, 2, "keras-vis", 1),
}
# Runs the real command line in a child; its last line gives the compile seconds and how
# many programs the cache was asked for, found and missed.
CHILD = (
    "import collections, json, sys, jax\n"
    "from jaxvis import cli, compile_time\n"
    "events = collections.Counter()\n"
    "jax.monitoring.register_event_listener(lambda e, **_: events.update([e.rsplit('/')[-1]]))\n"
    "code = cli.main(sys.argv[1:])\n"
    "cache = {k: events[k] for k in ('compile_requests_use_cache', 'cache_hits', 'cache_misses')}\n"
    "print(json.dumps({'compile_s': compile_time.compile_seconds_so_far(), **cache}))\n"
    "sys.exit(code)\n"
)


def run_atlas(argv: list[str], cache_home: str) -> dict:
    """One ``jaxvis atlas`` process; its wall and compile seconds."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    environ["XDG_CACHE_HOME"] = cache_home
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env=environ, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"jaxvis atlas failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return {"wall_s": wall, **json.loads(done.stdout.strip().splitlines()[-1])}


def layer_compile(path: str, layers: list[str]) -> dict[str, dict]:
    """Per layer: its first two chunks' seconds, and the difference (its compile time)."""
    out = {}
    with h5py.File(path, "r") as f:
        for layer in layers:
            seconds = np.asarray(f[layer]["seconds"][...], np.float64)
            out[layer] = {
                "first_chunk_s": float(seconds[0]),
                "second_chunk_s": float(seconds[1]),
                "compile_s": float(seconds[0] - seconds[1]),
            }
    return out


def _row(pair: int, what: str, first: float, repeat: float) -> dict:
    less = f"{first / repeat:.1f}x" if repeat > 0 else "-"
    return {"pair": pair, "what": what, "first run s": first, "repeat s": repeat, "less": less}


def run_pair(pair: int, work: str, argv: list[str], names: list[str]) -> tuple[list, list]:
    """A first run and its repeat into one fresh cache folder: their records and rows."""
    cache = os.path.join(work, f"cache{pair}")
    runs = []
    for which in ("first", "repeat"):
        out = os.path.join(work, f"{pair}-{which}.h5")
        run = run_atlas([*argv, "--out", out], cache)
        run.update(pair=pair, run=which, layers=layer_compile(out, names))
        runs.append(run)
    first, repeat = runs
    rows = [
        _row(
            pair,
            f"{layer}, compile",
            first["layers"][layer]["compile_s"],
            repeat["layers"][layer]["compile_s"],
        )
        for layer in names
    ]
    rows.append(_row(pair, "whole run, compile", first["compile_s"], repeat["compile_s"]))
    rows.append(_row(pair, "whole run, wall", first["wall_s"], repeat["wall_s"]))
    return runs, rows


def main() -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, help="first-and-repeat pairs (default per mode)")
    args = p.parse_args()
    layers, size, steps, preset, pairs = SETTINGS[options.mode(args)]
    print(f"# {env.describe_device()}")
    names = layers.split(",")
    argv = ["atlas", "--layers", layers, "--filters", "0-1", "--size", str(size)]
    argv += ["--steps", str(steps), "--preset", preset, "--weights", args.weights]
    argv += ["--batch", "1", "--no-progress"]
    runs, rows = [], []
    with tempfile.TemporaryDirectory(prefix="jaxvis-compile-cache-") as work:
        for pair in range(args.pairs or pairs):
            pair_runs, pair_rows = run_pair(pair, work, argv, names)
            runs += pair_runs
            rows += pair_rows
    report.print_table(rows, f"Seconds, first run and repeat ({size} px, {steps} steps, {preset})")
    if not args.no_save:
        settings = {"layers": names, "size": size, "steps": steps, "preset": preset}
        payload = {"mode": options.mode(args), "settings": settings, "command": ["jaxvis", *argv]}
        payload.update(runs=runs, rows=rows)
        name = options.result_name("compile_cache", args)
        print(f"\nwrote {report.write_results(name, payload, args.out_dir)}")


if __name__ == "__main__":
    main()
