"""Steady-state throughput of the engine per layer, against ceilings measured in the same run.

For each layer: filter-steps/s of the compiled block (k unrolled steps for a chunk of
units, as ``Program.run`` drives it), the analytic FLOP/s (forward + input-gradient
convs; see benchmarks/flops.py), XLA's own FLOP count of the same compiled block,
efficiency against the measured conv and matmul ceilings, compile time and memory.

A breakdown (``--breakdown``) re-times a layer with parts of the step removed: no
transforms; pixel parameterization and no transforms; the model's forward +
input-gradient alone (no parameterization, transforms or optimizer); and the transforms
alone. The gaps between the rows are what those parts cost. ``--convs lax,auto`` adds a
row with each 3x3 conv by the formulation measured fastest for its shape on this CPU
(jaxvis/conv_tune.py; measured now if its cache lacks a shape). Its GFLOP/s and
efficiencies count the direct conv's FLOPs, so they compare with the stock row on the
same work and may exceed the conv ceiling.

Finally the per-layer rates are turned into a projection of a full VGG16 conv atlas
(all 4,224 filters of the 13 conv layers, 224 px, 512 steps) on this device.

    python -m benchmarks.throughput --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.throughput --quick
    python -m benchmarks.throughput                      # 5 layers at 128 px + 2 at 224 px
    python -m benchmarks.throughput --dtype bfloat16
"""

from __future__ import annotations

from benchmarks import ceilings, env, options
from benchmarks.cases import prepare, result_row
from benchmarks.memory import peak_bytes
from benchmarks.partial_steps import ModelOnly, TransformsOnly
from benchmarks.projection import print_projection, project_atlas
from benchmarks.report import print_table, write_results
from benchmarks.timing import interleaved

MODES = {
    "tiny": {
        "layers": ["block1_conv1"],
        "sizes": [32],
        "at_224": [],
        "breakdown": ["block1_conv1"],
        "target_s": 0.05,
        "k": 2,
    },
    "quick": {
        "layers": ["block2_conv2", "block4_conv3"],
        "sizes": [64],
        "at_224": [],
        "breakdown": ["block2_conv2"],
        "target_s": 2.0,
        "k": None,
    },
    "full": {
        "layers": ["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"],
        "sizes": [128],
        "at_224": ["block3_conv3", "block5_conv3"],
        "breakdown": ["block1_conv2", "block3_conv3", "block5_conv3"],
        "target_s": 6.0,
        "k": None,
    },
}


def programs(
    model, layer: str, size: int, preset: str, k: int | None, breakdown: bool, convs=("lax",)
):
    """(variant name, program) pairs for one layer: the preset, the preset with each conv
    setting of ``convs`` other than lax, then the breakdown ones."""
    from jaxvis import conv_tune, engine, param, presets

    config = presets.get(preset)

    def with_k(prog):
        return prog if k is None or k == prog.block_steps else engine.Program(prog.ascent, k)

    main = with_k(engine.program(model, layer, size, config))
    out = [(preset, main)]
    for setting in convs:
        table = conv_tune.forms_for(main, model.params, setting, size, 10**6, note=print)
        if setting != "lax":
            formed = engine.program(model, layer, size, config, convs=table)
            out.append((f"{preset}, convs {setting}", with_k(formed)))
    if not breakdown:
        return out
    if main.ascent.select:  # the target conv's every channel, as before Taps.select
        full = engine.program(model, layer, size, config, select=False)
        out.append(("all channels of target conv", with_k(full)))
    bare = engine.program(model, layer, size, config, transforms=[])
    pixel = engine.program(model, layer, size, config, param=param.pixel_image(size), transforms=[])
    out.append(("no transforms", with_k(bare)))
    out.append(("pixel param, no transforms", with_k(pixel)))
    out.append(("model fwd+input-grad only", ModelOnly(model, layer, size, main.block_steps)))
    transform = main.ascent.recipe.transform
    if transform is not None:
        out.append(
            ("transforms only (fwd+grad)", TransformsOnly(transform, size, main.block_steps))
        )
    return out


def table_row(r: dict) -> dict:
    return {
        "layer": r["layer"],
        "px": r["size"],
        "variant": r["variant"],
        "chunk": r["chunk"],
        "k": r["k"],
        "filter-steps/s": r["filter_steps_per_s"],
        "ms/filter-step": 1e3 / r["filter_steps_per_s"],
        "GFLOP/step": r["analytic_flops_per_filter_step"] / 1e9,
        "exec GFLOP/step": r["executed_flops_per_filter_step"] / 1e9,
        "exec GFLOP/s": r["executed_flops_per_s"] / 1e9,
        "XLA GFLOP/s": (r["xla_flops_per_s"] or 0) / 1e9,
        "XLA/exec": r["xla_over_executed"],
        "conv ceil": r["conv_ceiling_median"] / 1e9,
        "mm ceil": r["matmul_ceiling_median"] / 1e9,
        "eff conv": r["eff_vs_conv"],
        "work eff": r["work_eff_vs_conv"],
        "eff mm": r["eff_vs_matmul"],
        "compile s": r["compile_trace_lower_s"] + r["compile_compile_s"],
        "XLA mem MiB": r["xla_memory"].get("peak_estimate", 0) / 2**20,
        "peak MiB": peak_bytes(r["process_memory"]) / 2**20,
        "calls": r["timed_calls"],
    }


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--layers", help="comma-separated layers (default: per mode)")
    p.add_argument("--sizes", help="comma-separated image sizes (default: per mode)")
    p.add_argument("--at-224", help="comma-separated layers also timed at 224 px")
    p.add_argument("--breakdown", help="comma-separated layers to break down, or 'none'")
    p.add_argument("--k", type=int, help="steps per block (default: engine.BLOCK_STEPS)")
    p.add_argument("--chunk", type=int, help="units per chunk (default: devices.auto_chunk)")
    p.add_argument("--preset", help="preset to time (default: keras-vis if --tiny, else lucid)")
    p.add_argument(
        "--convs", default="lax", help="conv settings to time, e.g. lax,auto (jaxvis/conv_tune.py)"
    )
    args = p.parse_args(argv)
    args.preset = args.preset or options.default_preset(args)
    mode = dict(MODES[options.mode(args)])
    for name in ("layers", "sizes", "at_224", "breakdown"):
        value = getattr(args, name)
        if value is not None:
            mode[name] = [] if value == "none" else value.split(",")
    mode["sizes"] = [int(s) for s in mode["sizes"]]
    mode["k"] = args.k or mode["k"]
    run(args, mode)


def measure(args, mode: dict, model, kernels: dict) -> list[dict]:
    """Times every (layer, size) of ``mode``, each layer's variants interleaved."""
    from jaxvis import devices, engine, presets

    cases = [(layer, size) for size in mode["sizes"] for layer in mode["layers"]]
    cases += [(layer, 224) for layer in mode["at_224"]]
    rows = []
    for layer, size in cases:
        prog0 = engine.program(model, layer, size, presets.get(args.preset))
        chunk = args.chunk or devices.auto_chunk(
            model, prog0.ascent.stop_at, size, model.num_filters(layer)
        )
        breakdown = layer in mode["breakdown"] and size == mode["sizes"][0]
        group = [
            prepare(model, prog, layer, size, chunk, variant)
            for variant, prog in programs(
                model, layer, size, args.preset, mode["k"], breakdown, args.convs.split(",")
            )
        ]
        times, ceil_times = interleaved(group, kernels, mode["target_s"])
        new = [result_row(c, times[c.variant], ceil_times, kernels) for c in group]
        print_table([table_row(r) for r in new])
        rows += new
        del group
    return rows


def run(args, mode: dict) -> None:
    from jaxvis import engine

    print(env.describe_device())
    run_mode = options.mode(args)
    model = options.load_model(args.weights, args.dtype)
    dtype = options.DTYPES[args.dtype]
    kernels = ceilings.ceiling_kernels(dtype, tiny=run_mode == "tiny")
    ceil = ceilings.ceilings(dtype, run_mode, kernels)
    ceilings.print_ceilings(ceil)
    rows = measure(args, mode, model, kernels)
    print_table([table_row(r) for r in rows], title="Throughput (median of timed calls)")
    ceil_end = ceilings.ceilings(dtype, run_mode, kernels)
    ceilings.print_ceilings(ceil_end)
    idle = max(
        [c["conv_fwd"]["flops_per_s_median"] for c in (ceil, ceil_end)]
        + [r["conv_ceiling_median"] for r in rows]
    )
    projection = project_atlas(model, [r for r in rows if r["variant"] == args.preset], idle)
    print_projection(projection)
    payload = {
        "mode": run_mode,
        "dtype": args.dtype,
        "weights": args.weights,
        "preset": args.preset,
        "block_steps_default": engine.block_target(env.platform_name()),
        "ceilings": ceil,
        "ceilings_end": ceil_end,
        "rows": rows,
        "projection": projection,
    }
    if not args.no_save:
        print(
            "wrote", write_results(options.result_name("throughput", args), payload, args.out_dir)
        )


if __name__ == "__main__":
    main()
