"""The evidence for ``engine.BLOCK_STEPS`` and the chunk rule in ``jaxvis.devices``.

At one mid layer it times, interleaved (so contention on a shared machine hits every
setting alike):

1. steps per compiled block k (1, 2, 4, 8, 16, ...) at the automatic chunk size, with
   compile time and the wall time of a 1-filter and a whole-layer job (compile + work);
2. chunk sizes (units per compiled call) at the platform's default k, up to memory;
3. ``lax.scan`` over all steps (``jit(vmap(ascent.run_one))``) against the engine's
   ``Program.run`` for the same steps, end to end (PERF-NOTES fact 1).

    python -m benchmarks.chunk_sweep --quick
    python -m benchmarks.chunk_sweep
"""

from __future__ import annotations

import time

import jax
import numpy as np

from benchmarks import common as C
from benchmarks.throughput import interleaved, prepare

QUICK = {
    "layer": "block3_conv1",
    "size": 64,
    "ks": [1, 2, 4, 8],
    "chunk_k": 2,
    "chunks": [1, 2, 4, 8],
    "scan_steps": 8,
    "target_s": 1.5,
}
FULL = {
    "layer": "block4_conv1",
    "size": 128,
    "ks": [1, 2, 4, 8, 16],
    "chunk_k": None,
    "chunks": None,
    "scan_steps": 32,
    "target_s": 3.0,
}
ATLAS_STEPS = 512


def default_chunks(platform: str) -> list[int]:
    """CPU: 1..16 (compute-bound already at 1); accelerators: 1, 4, 16, 64, 256."""
    return [1, 2, 4, 8, 16] if platform == "cpu" else [1, 4, 16, 64, 256]


def fits(model, stop_at: str, size: int, chunk: int) -> bool:
    """False if the engine's own activation estimate says ``chunk`` cannot fit."""
    from jaxvis import devices

    memory = devices.device_memory(jax.devices()[0])
    if memory is None:  # CPU: host memory, the chunks here are small
        return True
    return devices.activation_bytes(model, stop_at, size) * chunk < 0.9 * memory


def out_of_memory(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


class RunCase:
    """A whole run (init, all steps, finish) as one timed call: Program.run or the scan."""

    def __init__(self, variant: str, fn, args, steps: int, chunk: int):
        self.variant, self.fn, self.args = variant, fn, args
        self.steps, self.chunk = steps, chunk

    def call(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self.fn(*self.args))
        return time.perf_counter() - start


def block_cases(model, layer, size, base, settings, chunk_label: bool):
    """Compiled block cases for (chunk, k) settings; stops at the first out-of-memory."""
    from jaxvis import engine

    cases = []
    for chunk, k in settings:
        if not fits(model, base.ascent.stop_at, size, chunk):
            print(f"skip chunk {chunk}: estimated activations exceed device memory")
            break
        label = f"chunk={chunk}" if chunk_label else f"k={k}"
        try:
            cases.append(prepare(model, engine.Program(base.ascent, k), layer, size, chunk, label))
        except Exception as e:  # noqa: BLE001 - only out-of-memory is expected here
            if not out_of_memory(e):
                raise
            print(f"chunk {chunk}: out of memory, stopping the sweep")
            break
    return cases


def sweep_rows(cases, times, ceil, kernels, model, layer) -> list[dict]:
    from benchmarks.throughput import result_row

    rows = []
    filters = model.num_filters(layer)
    for case in cases:
        r = result_row(case, times[case.variant], ceil, kernels)
        compile_s = r["compile_trace_lower_s"] + r["compile_compile_s"]
        rate = r["filter_steps_per_s"]
        r["one_filter_wall_s"] = compile_s + ATLAS_STEPS / rate
        r["layer_wall_s"] = compile_s + filters * ATLAS_STEPS / rate
        rows.append(r)
    return rows


def sweep_table(rows: list[dict]) -> list[dict]:
    return [
        {
            "setting": r["variant"],
            "chunk": r["chunk"],
            "k": r["k"],
            "filter-steps/s": r["filter_steps_per_s"],
            "exec GFLOP/s": r["executed_flops_per_s"] / 1e9,
            "eff conv": r["eff_vs_conv"],
            "compile s": r["compile_trace_lower_s"] + r["compile_compile_s"],
            "1 filter x512 s": r["one_filter_wall_s"],
            "layer x512 min": r["layer_wall_s"] / 60,
            "calls": r["timed_calls"],
        }
        for r in rows
    ]


def scan_vs_blocks(model, layer, size, config, steps, chunk, kernels, target_s):
    """End-to-end steady-state: lax.scan over steps vs Program.run (blocks of k)."""
    from jaxvis import engine

    prog = engine.program(model, layer, size, config, steps=steps)
    units, keys = C.units_and_keys(engine, layer, chunk)
    params = model.params
    scan = jax.jit(jax.vmap(prog.ascent.run_one, in_axes=(None, 0, 0)))
    cases, compile_s = [], {}
    for label, fn in (
        (f"Program.run (k={prog.block_steps})", prog.run),
        ("lax.scan (jit(vmap(run_one)))", scan),
    ):
        start = time.perf_counter()
        jax.block_until_ready(fn(params, keys, units))  # compiles
        compile_s[label] = time.perf_counter() - start
        cases.append(RunCase(label, fn, (params, keys, units), steps, chunk))
    times, _ = interleaved(cases, kernels, target_s)
    flops = C.step_flops(model, layer, *C.seen_shape(prog)[1:])["total"]
    rows = []
    for case in cases:
        s = C.summary(times[case.variant])
        rows.append(
            {
                "variant": case.variant,
                "steps": steps,
                "chunk": chunk,
                **s,
                "first_call_s": compile_s[case.variant],
                "filter_steps_per_s": steps * chunk / s["median_s"],
                "gflop_per_s_total_convention": flops * steps * chunk / s["median_s"] / 1e9,
            }
        )
    return rows


def best(rows: list[dict], key: str = "filter_steps_per_s") -> dict:
    return max(rows, key=lambda r: r[key])


def main(argv=None) -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--layer")
    p.add_argument("--size", type=int)
    p.add_argument("--ks", help="comma-separated steps per block")
    p.add_argument("--chunks", help="comma-separated chunk sizes")
    p.add_argument("--preset", default="lucid")
    args = p.parse_args(argv)
    mode = dict(QUICK if args.quick else FULL)
    mode["layer"] = args.layer or mode["layer"]
    mode["size"] = args.size or mode["size"]
    if args.ks:
        mode["ks"] = [int(k) for k in args.ks.split(",")]
    if args.chunks:
        mode["chunks"] = [int(c) for c in args.chunks.split(",")]
    run(args, mode)


def run(args, mode: dict) -> None:
    from jaxvis import devices, engine, presets

    print(C.describe_device())
    platform = C.platform_name()
    model = C.load_model(args.weights, args.dtype)
    layer, size = mode["layer"], mode["size"]
    config = presets.get(args.preset)
    base = engine.program(model, layer, size, config)
    kernels = C.ceiling_kernels(C.DTYPES[args.dtype])
    auto = devices.auto_chunk(model, base.ascent.stop_at, size, model.num_filters(layer))
    default_k = engine.BLOCK_STEPS.get(platform, 16)
    chunk_k = mode["chunk_k"] or default_k
    chunks = mode["chunks"] or default_chunks(platform)
    print(
        f"{layer} @ {size} px, preset {args.preset}; auto chunk {auto}, "
        f"BLOCK_STEPS[{platform}] = {default_k}"
    )

    k_cases = block_cases(model, layer, size, base, [(auto, k) for k in mode["ks"]], False)
    times, ceil = interleaved(k_cases, kernels, mode["target_s"])
    k_rows = sweep_rows(k_cases, times, ceil, kernels, model, layer)
    C.print_table(sweep_table(k_rows), title=f"Steps per block k (chunk {auto})")
    del k_cases

    c_cases = block_cases(model, layer, size, base, [(c, chunk_k) for c in chunks], True)
    times, ceil = interleaved(c_cases, kernels, mode["target_s"])
    c_rows = sweep_rows(c_cases, times, ceil, kernels, model, layer)
    C.print_table(sweep_table(c_rows), title=f"Chunk size (k = {chunk_k})")
    del c_cases

    scan_rows = scan_vs_blocks(
        model, layer, size, config, mode["scan_steps"], auto, kernels, mode["target_s"]
    )
    C.print_table(
        [
            {
                k: r[k]
                for k in (
                    "variant",
                    "steps",
                    "chunk",
                    "median_s",
                    "best_s",
                    "first_call_s",
                    "filter_steps_per_s",
                    "gflop_per_s_total_convention",
                )
            }
            for r in scan_rows
        ],
        title="lax.scan vs blocks, whole run, steady state",
    )

    conclusions = summarize(k_rows, c_rows, scan_rows, default_k, auto)
    for line in conclusions:
        print(line)
    payload = {
        "mode": "quick" if args.quick else "full",
        "layer": layer,
        "size": size,
        "dtype": args.dtype,
        "preset": args.preset,
        "block_steps_default": engine.BLOCK_STEPS,
        "auto_chunk": auto,
        "k_sweep": k_rows,
        "chunk_sweep": c_rows,
        "scan_vs_blocks": scan_rows,
        "conclusions": conclusions,
    }
    if not args.no_save:
        name = "chunk_sweep" + ("-quick" if args.quick else "")
        print("wrote", C.write_results(name, payload))


def summarize(k_rows, c_rows, scan_rows, default_k, auto) -> list[str]:
    """Which settings won, in words (steady state and with compile time)."""
    lines = []
    bk = best(k_rows)
    lines.append(
        f"best k (steady state): {bk['k']} at {bk['filter_steps_per_s']:.1f} "
        f"filter-steps/s; default k={default_k}."
    )
    quick_k = min(k_rows, key=lambda r: r["one_filter_wall_s"])
    layer_k = min(k_rows, key=lambda r: r["layer_wall_s"])
    lines.append(
        f"best k for one filter x {ATLAS_STEPS} steps incl. compile: {quick_k['k']}; "
        f"for a whole layer: {layer_k['k']}."
    )
    if c_rows:
        bc = best(c_rows)
        ref = next((r for r in c_rows if r["chunk"] == auto), c_rows[0])
        lines.append(
            f"best chunk: {bc['chunk']} at {bc['filter_steps_per_s']:.1f} "
            f"filter-steps/s ({bc['filter_steps_per_s'] / ref['filter_steps_per_s']:.2f}x"
            f" the auto chunk {auto})."
        )
    blocks, scan = scan_rows
    ratio = blocks["filter_steps_per_s"] / scan["filter_steps_per_s"]
    lines.append(f"Program.run is {ratio:.2f}x the lax.scan throughput (steady state).")
    return lines


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
