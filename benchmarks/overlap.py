"""Overlapping compute with writing: a real ``generate_atlas`` with ``inflight.chunks``'s
overlap off and on, its wall time, filter-steps/s and the device's idle fraction.

Each call writes a fresh atlas. The two variants are timed interleaved, alternating
which goes first, after one untimed call that compiles. A call is instrumented, not
changed: ``inflight.chunks`` gets ``overlap=`` (the scheduler passes none), and wrappers
around ``inflight.launch_chunk``, ``inflight.fetch_chunk`` and ``AtlasWriter.write_chunk``
record when each chunk was dispatched, when its outputs were ready (the engine's watcher
thread, jaxvis/inflight.py ``Launch``), and how long its fetch and its write took.

The device's busy time is the union over chunks of [max(dispatch_i, ready_{i-1}),
ready_i] (it runs chunks in order); the idle fraction is 1 - busy / (ready_last -
ready_0), so the first chunk (compile, start-up) and the last write are left out.

``--peak-memory`` also writes an atlas of chunks with a large block (``BIG_BLOCK``) once
per variant, each in a fresh process, and reports the peak memory (RSS on CPU,
``peak_bytes_in_use`` on accelerators) after one chunk alone and after the atlas, with
XLA's temp size of one block: were two chunks to run at once, the peak would grow by
about that much.

    python -m benchmarks.overlap --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.overlap --quick
    python -m benchmarks.overlap --peak-memory
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import tempfile
import time

from benchmarks import env, in_flight, options
from benchmarks.report import print_table, write_results
from benchmarks.timing import median

# write-heavy: block1_conv1 is the cheapest layer, and at 224 px with a snapshot after
# every step the pictures are large next to the compute, so the fetch and write are the
# largest share of a chunk that this model allows.
WRITE_HEAVY = dict(layer="block1_conv1", size=224, steps=8, snapshots=1, preset="keras-vis")
REALISTIC = dict(layer="block3_conv3", size=128, snapshots=None, preset="lucid")
TINY = dict(layer="block1_conv1", size=32, steps=4, snapshots=2, preset="keras-vis")
SETTINGS = {  # rounds: timed calls per variant
    "tiny": [dict(name="tiny", **TINY, filters=3, chunk=1, rounds=1)],
    "quick": [
        dict(name="write-heavy", **WRITE_HEAVY, filters=8, chunk=None, rounds=5),
        dict(name="realistic", **REALISTIC, steps=32, filters=3, chunk=None, rounds=2),
    ],
    "full": [
        dict(name="write-heavy", **WRITE_HEAVY, filters=24, chunk=None, rounds=7),
        dict(name="realistic", **REALISTIC, steps=128, filters=4, chunk=None, rounds=3),
    ],
}
# --peak-memory: chunks whose block needs far more temp memory than the noise of RSS.
BIG_BLOCK = dict(
    name="memory", layer="block2_conv2", size=224, steps=16, snapshots=None, preset="keras-vis"
) | dict(filters=24, chunk=8)
MEMORY = {"tiny": SETTINGS["tiny"][0], "quick": BIG_BLOCK, "full": BIG_BLOCK}


class Recorder:
    """What one ``generate_atlas`` call did, chunk by chunk (see the module docstring)."""

    def __init__(self, overlap: bool):
        self.overlap = overlap
        self.launches, self.fetch_s, self.write_s = [], [], []

    @contextlib.contextmanager
    def active(self):
        from jaxvis import inflight
        from jaxvis.atlas import AtlasWriter

        saved = (
            inflight.launch_chunk,
            inflight.fetch_chunk,
            inflight.chunks,
            AtlasWriter.write_chunk,
        )
        launch, fetch, chunks, write = saved

        def launch_chunk(*args, **kwargs):
            self.launches.append(launch(*args, **kwargs))
            return self.launches[-1]

        def fetch_chunk(launched, *args, **kwargs):
            start = time.perf_counter()
            out = fetch(launched, *args, **kwargs)
            self.fetch_s.append(time.perf_counter() - max(start, launched.ready))
            return out

        def write_chunk(writer, layer, chunk):
            start = time.perf_counter()
            write(writer, layer, chunk)
            self.write_s.append(time.perf_counter() - start)

        inflight.launch_chunk, inflight.fetch_chunk = launch_chunk, fetch_chunk
        inflight.chunks = functools.partial(chunks, overlap=self.overlap)
        AtlasWriter.write_chunk = write_chunk
        try:
            yield self
        finally:
            inflight.launch_chunk, inflight.fetch_chunk, inflight.chunks = saved[:3]
            AtlasWriter.write_chunk = saved[3]

    def busy(self) -> list[float]:
        """Device seconds of each chunk after the first (the engine's ``Chunk.seconds``)."""
        ready = [launch.ready for launch in self.launches]
        return [
            ready[i] - max(launch.dispatched, ready[i - 1])
            for i, launch in enumerate(self.launches)
            if i
        ]

    def idle_fraction(self) -> float:
        span = self.launches[-1].ready - self.launches[0].ready
        return 1.0 - sum(self.busy()) / span if span > 0 else float("nan")


def one_call(model, setting: dict, path: str, overlap: bool) -> dict:
    """Writes a fresh atlas of ``setting`` with overlap on or off; returns its timings."""
    from jaxvis.scheduler import generate_atlas

    if os.path.exists(path):
        os.remove(path)
    filters = list(range(min(setting["filters"], model.num_filters(setting["layer"]))))
    with Recorder(overlap).active() as rec:
        start = time.perf_counter()
        generate_atlas(
            model,
            path,
            {setting["layer"]: filters},
            preset=setting["preset"],
            size=setting["size"],
            steps=setting["steps"],
            batch=setting["chunk"],
            snapshots=setting["snapshots"],
            progress=False,
        )
        wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "chunks": len(rec.launches),
        "filter_steps_per_s": len(filters) * setting["steps"] / wall,
        "idle_fraction": rec.idle_fraction(),
        "device_s_per_chunk": median(rec.busy()),
        "fetch_s_per_chunk": median(rec.fetch_s),
        "write_s_per_chunk": median(rec.write_s),
    }


def measure(model, setting: dict, rounds: int | None, out_dir: str) -> list[dict]:
    """Interleaved calls, off and on, alternating the order; one row per variant."""
    path = os.path.join(out_dir, "atlas.h5")
    one_call(model, setting, path, True)  # compiles, untimed
    calls = {False: [], True: []}
    for r in range(rounds or setting["rounds"]):
        for overlap in (False, True) if r % 2 == 0 else (True, False):
            calls[overlap].append(one_call(model, setting, path, overlap))
    rows = []
    for overlap, runs in calls.items():
        row = {"setting": setting["name"], "overlap": overlap, "calls": runs}
        for key in runs[0]:
            row[f"{key}_median"] = median([c[key] for c in runs])
        row["wall_over_off"] = median(
            [on["wall_s"] / off["wall_s"] for on, off in zip(runs, calls[False], strict=True)]
        )
        rows.append(row)
    return rows


def table_row(r: dict) -> dict:
    return {
        "setting": r["setting"],
        "overlap": "on" if r["overlap"] else "off",
        "chunks": int(r["chunks_median"]),
        "wall s": r["wall_s_median"],
        "wall / off": r["wall_over_off"],
        "filter-steps/s": r["filter_steps_per_s_median"],
        "device idle": r["idle_fraction_median"],
        "device s/chunk": r["device_s_per_chunk_median"],
        "fetch s/chunk": r["fetch_s_per_chunk_median"],
        "write s/chunk": r["write_s_per_chunk_median"],
        "calls": len(r["calls"]),
    }


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="timed calls per variant (default: per setting)")
    p.add_argument("--peak-memory", action="store_true", help="also peak memory, off vs on")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        setting, overlap = json.loads(args.child)
        print(json.dumps(in_flight.peak_memory_child(args, setting, overlap)))
        return
    print(env.describe_device())
    run_mode = options.mode(args)
    model = options.load_model(args.weights, args.dtype)
    depth = in_flight.dispatch_depth()
    print(f"dispatches queued before one blocks: {depth}")
    rows = []
    for setting in SETTINGS[run_mode]:
        with tempfile.TemporaryDirectory(prefix="jaxvis-overlap-") as out_dir:
            rows += measure(model, setting, args.rounds, out_dir)
    memory = in_flight.peak_memory(args, MEMORY[run_mode]) if args.peak_memory else []
    title = "Overlap off and on (median of calls)"
    print_table([table_row(r) for r in rows], title=title)
    print_table(
        [in_flight.memory_row(r) for r in memory], title="Peak memory (MiB), one process each"
    )
    payload = {
        "mode": run_mode,
        "dtype": args.dtype,
        "weights": args.weights,
        "settings": [
            {**s, "rows": [r for r in rows if r["setting"] == s["name"]]}
            for s in SETTINGS[run_mode]
        ],
        "peak_memory": memory,
        "dispatch_depth": depth,
    }
    if not args.no_save:
        print("wrote", write_results(options.result_name("overlap", args), payload, args.out_dir))


if __name__ == "__main__":
    main()
