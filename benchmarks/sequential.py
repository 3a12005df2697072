"""One call per filter (how keras-vis users work) against one call per chunk of filters.

Same filters, layer, size, steps and preset in every variant:

* ``per filter``: ``visualize(model, layer, [f])`` for each filter; the compiled program
  is cached, so only the first call compiles;
* ``per filter, retrace``: the same with a fresh model (see :func:`fresh`) per call, which
  misses the program cache and traces and compiles every time, as keras-vis rebuilds its
  graph;
* ``one call, auto chunk``: ``visualize(model, layer, filters)`` (chunk from
  ``devices.auto_chunk``: 1 on CPU, memory-based on accelerators);
* ``one call, batch=N``: all filters in one compiled chunk.

"cold" is the first use of the variant in the process (compile included, measured on a
fresh model so no variant reuses another's program); "steady" is the median of
repeats once compiled.

    python -m benchmarks.sequential --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.sequential --quick
    python -m benchmarks.sequential --weights random   # the peer settings: block4_conv1,
                                                       # 128 px, 64 steps, filters 0-3

The peers' rates at those settings are in benchmarks/README.md, "Peers at the same
settings".
"""

from __future__ import annotations

import dataclasses
import functools
import time

from benchmarks import env, options
from benchmarks.report import print_table, write_results
from benchmarks.timing import median

MODES = {
    "tiny": {
        "layer": "block1_conv1",
        "size": 32,
        "steps": 2,
        "filters": [0, 1],
        "retrace_filters": 1,
        "repeats": 1,
    },
    "quick": {
        "layer": "block3_conv1",
        "size": 64,
        "steps": 4,
        "filters": [0, 1, 2, 3],
        "retrace_filters": 2,
        "repeats": 2,
    },
    "full": {
        "layer": "block4_conv1",
        "size": 128,
        "steps": 64,
        "filters": [0, 1, 2, 3],
        "retrace_filters": 4,
        "repeats": 3,
    },
}
PEER_SETTINGS = ("block4_conv1", 128, 64)  # layer, px, steps; filters 0-3
# Filter-steps/s of the peers at PEER_SETTINGS: benchmarks/README.md, "Peers at the same
# settings" (random-init VGG16, median of 3 after a warm-up).
PEERS = {
    "tf-keras-vis 0.8.7, one call per filter": 8.9,
    "tf-keras-vis 0.8.7, 4 filters in one call": 13.7,
    "Lucent 0.1.8 as users call it, one call per filter": 3.8,
    "Lucent 0.1.8, truncated 128 px, 4 filters in one call": 20.5,
}


def fresh(model):
    """The same model with a new ``apply`` object: the engine's program cache is keyed on
    ``apply``, so this misses it and everything is traced and compiled again."""
    return dataclasses.replace(model, apply=functools.partial(model.apply))


def timed(fn) -> tuple[float, float]:
    """(wall seconds, compile seconds reported by the engine) of ``fn() -> [results]``."""
    start = time.perf_counter()
    results = fn()
    wall = time.perf_counter() - start
    return wall, sum(r.compile_seconds for r in results)


def variants(model, mode: dict) -> dict:
    """name -> (fn(model) -> [Visualization], the filters it covers)."""
    import jaxvis

    vis = jaxvis.visualize
    layer, filters = mode["layer"], mode["filters"]
    kw = {"size": mode["size"], "steps": mode["steps"]}
    few = filters[: mode["retrace_filters"]]
    return {
        "per filter": (lambda m: [vis(m, layer, [f], **kw) for f in filters], filters),
        "per filter, retrace every call": (
            lambda m: [vis(fresh(m), layer, [f], **kw) for f in few],
            few,
        ),
        "one call, auto chunk": (lambda m: [vis(m, layer, filters, **kw)], filters),
        f"one call, batch={len(filters)}": (
            lambda m: [vis(m, layer, filters, batch=len(filters), **kw)],
            filters,
        ),
    }


def measure(model, mode: dict) -> list[dict]:
    rows = []
    steps = mode["steps"]
    for name, (fn, filters) in variants(model, mode).items():
        m = fresh(model)
        cold, cold_compile = timed(lambda fn=fn, m=m: fn(m))
        retrace = "retrace" in name
        steady = (
            [cold]
            if retrace
            else [timed(lambda fn=fn, m=m: fn(m))[0] for _ in range(mode["repeats"])]
        )
        work = len(filters) * steps
        rows.append(
            {
                "variant": name,
                "filters": len(filters),
                "steps": steps,
                "cold_wall_s": cold,
                "cold_compile_s": cold_compile,
                "steady_wall_s": median(steady),
                "steady_runs": steady,
                "cold_filter_steps_per_s": work / cold,
                "steady_filter_steps_per_s": work / median(steady),
            }
        )
        print_table([table_row(rows[-1])])
    return rows


def table_row(r: dict) -> dict:
    return {
        "variant": r["variant"],
        "filters": r["filters"],
        "steps": r["steps"],
        "cold wall s": r["cold_wall_s"],
        "of which compile s": r["cold_compile_s"],
        "cold filter-steps/s": r["cold_filter_steps_per_s"],
        "steady wall s": r["steady_wall_s"],
        "steady filter-steps/s": r["steady_filter_steps_per_s"],
    }


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--layer")
    p.add_argument("--size", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--repeats", type=int, help="steady-state repeats per variant")
    p.add_argument("--retrace-filters", type=int, help="filters in the retrace variant")
    args = p.parse_args(argv)
    mode = dict(MODES[options.mode(args)])
    for name in ("layer", "size", "steps", "repeats", "retrace_filters"):
        if getattr(args, name) is not None:
            mode[name] = getattr(args, name)
    run(args, mode)


def run(args, mode: dict) -> None:
    print(env.describe_device())
    print(
        f"{mode['layer']} @ {mode['size']} px, {mode['steps']} steps, "
        f"filters {mode['filters']}, preset lucid"
    )
    model = options.load_model(args.weights, args.dtype)
    rows = measure(model, mode)
    print_table([table_row(r) for r in rows], title="One call per filter vs per chunk")
    same = (mode["layer"], mode["size"], mode["steps"]) == PEER_SETTINGS
    if same:
        print_table(
            [{"peer (earlier AVX-512 CPU)": k, "filter-steps/s": v} for k, v in PEERS.items()],
            title="Peers at the same settings",
        )
    payload = {
        "mode": options.mode(args),
        **mode,
        "dtype": args.dtype,
        "weights": args.weights,
        "rows": rows,
        "peers": PEERS if same else None,
    }
    if not args.no_save:
        name = options.result_name("sequential", args)
        print("wrote", write_results(name, payload, args.out_dir))


if __name__ == "__main__":
    main()
