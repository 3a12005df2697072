"""What optimization snapshots cost: filter-steps/s with snapshots off and on (K=16, K=64),
and the atlas's size on disk.

Every timed call writes a fresh atlas of the same filters with ``generate_atlas``, so the
time is what a user waits for: the steps, the snapshots (one more compiled piece after
the blocks that end at a multiple of K, and their transfer) and the atlas writes, which
grow with the file because every chunk copies it (docs/atlas-format.md, "Crash
safety"). The variants are timed round-robin with the conv and matmul ceilings
(benchmarks/timing.py), after an untimed call each that compiles, and the cost of a
variant is the median over rounds of its time over the off time in the same round. The
atlas's ``seconds`` dataset splits each call into compute (chunks, transfer included)
and the rest (writing).

    python -m benchmarks.snapshots --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.snapshots --quick
    python -m benchmarks.snapshots                  # lucid, block3_conv3, 128 px, 512 steps
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

from benchmarks import ceilings, env, options
from benchmarks.report import print_table, write_results
from benchmarks.timing import interleaved, median, summary

MODES = {
    "tiny": {
        "layer": "block1_conv1",
        "size": 32,
        "steps": 64,
        "filters": 2,
        "chunk": 2,
        "target_s": 0.05,
    },
    "quick": {
        "layer": "block2_conv2",
        "size": 64,
        "steps": 128,
        "filters": 4,
        "chunk": None,
        "target_s": 20.0,
    },
    "full": {
        "layer": "block3_conv3",
        "size": 128,
        "steps": 512,
        "filters": 64,
        "chunk": None,
        "target_s": 120.0,
    },
}
EVERY = (0, 16, 64)  # 0: snapshots off


@dataclasses.dataclass
class AtlasCase:
    """One variant: a fresh atlas of the same filters per call, snapshots every K steps."""

    variant: str
    every: int
    model: object
    layer: str
    filters: list[int]
    run: dict  # preset, size, steps, batch
    path: str
    sizes: list[int] = dataclasses.field(default_factory=list)
    compute: list[float] = dataclasses.field(default_factory=list)

    def call(self) -> float:
        from jaxvis.atlas import open_atlas
        from jaxvis.scheduler import generate_atlas

        if os.path.exists(self.path):
            os.remove(self.path)
        start = time.perf_counter()
        generate_atlas(
            self.model,
            self.path,
            {self.layer: self.filters},
            snapshots=self.every or None,
            progress=False,
            **self.run,
        )
        seconds = time.perf_counter() - start
        self.sizes.append(os.path.getsize(self.path))
        with open_atlas(self.path) as atlas:
            self.compute.append(float(atlas[self.layer].seconds.sum()))
        return seconds


def row(case: AtlasCase, times: list[float], off: list[float], steps: int) -> dict:
    """Rates, the cost relative to off (median of per-round ratios), and the file size.

    The first compute/size entries belong to the untimed calls and are skipped.
    """
    s = summary(times)
    work = len(case.filters) * steps
    compute = median(case.compute[-len(times) :])
    size = case.sizes[-1]
    return {
        "variant": case.variant,
        "every": case.every,
        "snapshots_per_filter": steps // case.every if case.every else 0,
        **s,
        "times_s": times,
        "filter_steps_per_s": work / s["median_s"],
        "time_over_off": median([t / o for t, o in zip(times, off, strict=True)]),
        "compute_s_median": compute,
        "write_s_median": s["median_s"] - compute,
        "atlas_bytes": size,
        "atlas_bytes_per_filter": size / len(case.filters),
    }


def table_row(r: dict) -> dict:
    return {
        "variant": r["variant"],
        "S": r["snapshots_per_filter"],
        "filter-steps/s": r["filter_steps_per_s"],
        "time / off": r["time_over_off"],
        "median s": r["median_s"],
        "compute s": r["compute_s_median"],
        "write s": r["write_s_median"],
        "atlas MiB": r["atlas_bytes"] / 2**20,
        "MiB/filter": r["atlas_bytes_per_filter"] / 2**20,
        "rounds": r["n"],
    }


def cases(args, mode: dict, model, out_dir: str) -> list[AtlasCase]:
    from jaxvis import engine, presets

    layer, steps = mode["layer"], mode["steps"]
    run = {"preset": args.preset, "size": mode["size"], "steps": steps, "batch": mode["chunk"]}
    filters = list(range(min(mode["filters"], model.num_filters(layer))))
    out = []
    for every in EVERY:
        name = f"snapshots every {every}" if every else "snapshots off"
        prog = engine.program(
            model,
            layer,
            mode["size"],
            presets.get(args.preset),
            steps=steps,
            snapshots=every or None,
        )
        print(f"{name}: blocks of {prog.block_steps} steps", flush=True)
        path = os.path.join(out_dir, f"{every}.h5")
        out.append(AtlasCase(name, every, model, layer, filters, run, path))
    return out


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--layer", help="layer (default: per mode)")
    p.add_argument("--size", type=int, help="image side in pixels (default: per mode)")
    p.add_argument("--steps", type=int, help="steps, at least 64 (default: per mode)")
    p.add_argument("--filters", type=int, help="filters per atlas (default: per mode)")
    p.add_argument("--chunk", type=int, help="units per chunk (default: devices.auto_chunk)")
    p.add_argument("--preset", help="preset (default: keras-vis if --tiny, else lucid)")
    args = p.parse_args(argv)
    args.preset = args.preset or options.default_preset(args)
    mode = dict(MODES[options.mode(args)])
    for name in ("layer", "size", "steps", "filters", "chunk"):
        if getattr(args, name) is not None:
            mode[name] = getattr(args, name)
    run(args, mode)


def run(args, mode: dict) -> None:
    print(env.describe_device())
    run_mode = options.mode(args)
    model = options.load_model(args.weights, args.dtype)
    kernels = ceilings.ceiling_kernels(options.DTYPES[args.dtype], tiny=run_mode == "tiny")
    with tempfile.TemporaryDirectory(prefix="jaxvis-snapshots-") as out_dir:
        group = cases(args, mode, model, out_dir)
        for case in group:  # compiles, untimed
            case.call()
        times, ceil_times = interleaved(group, kernels, mode["target_s"])
    off = times[group[0].variant]
    rows = [row(c, times[c.variant], off, mode["steps"]) for c in group]
    print_table([table_row(r) for r in rows], title="Snapshots off and on (median of rounds)")
    payload = {
        "mode": run_mode,
        "dtype": args.dtype,
        "weights": args.weights,
        "preset": args.preset,
        **{k: mode[k] for k in ("layer", "size", "steps", "chunk")},
        "filters": len(group[0].filters),
        "rows": rows,
        "ceilings_per_round": {
            name: [kernels[name]["flops"] / t for t in ts] for name, ts in ceil_times.items()
        },
    }
    if not args.no_save:
        print("wrote", write_results(options.result_name("snapshots", args), payload, args.out_dir))


if __name__ == "__main__":
    main()
