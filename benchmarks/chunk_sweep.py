"""The evidence for ``engine.BLOCK_STEPS`` and the chunk rule in ``jaxvis.devices``.

At one mid layer it times, interleaved (so contention on a shared machine hits every
setting alike):

1. steps per compiled block k (1, 2, 4, 8, 16, ...) at the automatic chunk size, with
   compile time and the wall time of a 1-filter and a whole-layer job (compile + work);
2. chunk sizes (units per compiled call) at the platform's default k, up to memory;
3. ``lax.scan`` over all steps (``jit(vmap(ascent.run_one))``) against the engine's
   ``Program.run`` for the same steps, end to end (benchmarks/README.md, "while-loop
   convolutions").

    python -m benchmarks.chunk_sweep --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.chunk_sweep --quick
    python -m benchmarks.chunk_sweep
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from benchmarks import ceilings, env, options
from benchmarks.cases import prepare, result_row
from benchmarks.report import print_table, write_results
from benchmarks.scan import print_scan_rows, scan_vs_blocks
from benchmarks.timing import interleaved

MODES = {
    "tiny": {
        "layer": "block1_conv1",
        "size": 32,
        "ks": [1, 2],
        "chunk_k": 2,
        "chunks": [1, 2],
        "scan_steps": 2,
        "target_s": 0.05,
    },
    "quick": {
        "layer": "block3_conv1",
        "size": 64,
        "ks": [1, 2, 4, 8],
        "chunk_k": 2,
        "chunks": [1, 2, 4, 8],
        "scan_steps": 8,
        "target_s": 1.5,
    },
    "full": {
        "layer": "block4_conv1",
        "size": 128,
        "ks": [1, 2, 4, 8, 16],
        "chunk_k": None,
        "chunks": None,
        "scan_steps": 32,
        "target_s": 3.0,
    },
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


def block_cases(model, layer, size, base, settings, by_chunk: bool, reuse=()):
    """Compiled block cases for (chunk, k) settings; stops at the first out-of-memory.

    A setting already compiled in ``reuse`` is relabelled, not compiled again.
    """
    from jaxvis import engine

    done = {(c.chunk, c.k): c for c in reuse}
    cases = []
    for chunk, k in settings:
        label = f"chunk={chunk}" if by_chunk else f"k={k}"
        if (chunk, k) in done:
            cases.append(dataclasses.replace(done[chunk, k], variant=label))
            continue
        if not fits(model, base.ascent.stop_at, size, chunk):
            print(f"skip chunk {chunk}: estimated activations exceed device memory")
            break
        try:
            cases.append(prepare(model, engine.Program(base.ascent, k), layer, size, chunk, label))
        except Exception as e:  # noqa: BLE001 - only out-of-memory is expected here
            if not out_of_memory(e):
                raise
            print(f"chunk {chunk}: out of memory, stopping the sweep")
            break
    return cases


def sweep_rows(cases, times, ceil, kernels, model, layer) -> list[dict]:
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


def best(rows: list[dict], key: str = "filter_steps_per_s") -> dict:
    return max(rows, key=lambda r: r[key])


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--layer")
    p.add_argument("--size", type=int)
    p.add_argument("--ks", help="comma-separated steps per block")
    p.add_argument("--chunks", help="comma-separated chunk sizes")
    p.add_argument("--preset", help="preset to time (default: keras-vis if --tiny, else lucid)")
    args = p.parse_args(argv)
    args.preset = args.preset or options.default_preset(args)
    mode = dict(MODES[options.mode(args)])
    mode["layer"] = args.layer or mode["layer"]
    mode["size"] = args.size or mode["size"]
    if args.ks:
        mode["ks"] = [int(k) for k in args.ks.split(",")]
    if args.chunks:
        mode["chunks"] = [int(c) for c in args.chunks.split(",")]
    run(args, mode)


def sweep(cases, model, layer, kernels, target_s, title) -> list[dict]:
    """Times (interleaved) and prints one sweep of compiled block cases."""
    times, ceil = interleaved(cases, kernels, target_s)
    rows = sweep_rows(cases, times, ceil, kernels, model, layer)
    print_table(sweep_table(rows), title=title)
    return rows


def run(args, mode: dict) -> None:
    from jaxvis import devices, engine, presets

    print(env.describe_device())
    platform = env.platform_name()
    model = options.load_model(args.weights, args.dtype)
    layer, size, target_s = mode["layer"], mode["size"], mode["target_s"]
    config = presets.get(args.preset)
    base = engine.program(model, layer, size, config)
    tiny = options.mode(args) == "tiny"
    kernels = ceilings.ceiling_kernels(options.DTYPES[args.dtype], tiny=tiny)
    auto = devices.auto_chunk(model, base.ascent.stop_at, size, model.num_filters(layer))
    default_k = engine.block_target(platform)
    chunk_k = mode["chunk_k"] or default_k
    chunks = mode["chunks"] or default_chunks(platform)
    print(
        f"{layer} @ {size} px, preset {args.preset}; auto chunk {auto}, "
        f"steps per block {default_k} (engine.block_target)"
    )
    cases = block_cases(model, layer, size, base, [(auto, k) for k in mode["ks"]], False)
    title = f"Steps per block k (chunk {auto})"
    k_rows = sweep(cases, model, layer, kernels, target_s, title)
    keep = [c for c in cases if c.k == chunk_k]  # the chunk sweep's own setting
    del cases  # free the other k's buffers before the larger chunks
    settings = [(c, chunk_k) for c in chunks]
    cases = block_cases(model, layer, size, base, settings, True, reuse=keep)
    del keep
    c_rows = sweep(cases, model, layer, kernels, target_s, f"Chunk size (k = {chunk_k})")
    del cases
    scan_rows = scan_vs_blocks(
        model, layer, size, config, mode["scan_steps"], auto, kernels, target_s
    )
    print_scan_rows(scan_rows)
    conclusions = summarize(k_rows, c_rows, scan_rows, default_k, auto)
    print("\n".join(conclusions))
    payload = {
        "mode": options.mode(args),
        "layer": layer,
        "size": size,
        "dtype": args.dtype,
        "preset": args.preset,
        "block_steps_default": engine.block_target(platform),
        "auto_chunk": auto,
        "k_sweep": k_rows,
        "chunk_sweep": c_rows,
        "scan_vs_blocks": scan_rows,
        "conclusions": conclusions,
    }
    if not args.no_save:
        name = options.result_name("chunk_sweep", args)
        print("wrote", write_results(name, payload, args.out_dir))


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
