"""Steady-state throughput of the engine per layer, against ceilings measured in the same run.

For each layer: filter-steps/s of the compiled block (k unrolled steps for a chunk of
units, as ``Program.run`` drives it), the analytic FLOP/s (forward + input-gradient
convs; see benchmarks/common.py), XLA's own FLOP count of the same compiled block,
efficiency against the measured conv and matmul ceilings, compile time and memory.

A breakdown (``--breakdown``) re-times a layer with parts of the step removed: no
transforms; pixel parameterization and no transforms; and the model's forward +
input-gradient alone (no parameterization, transforms or optimizer). The gaps between
the rows are what those parts cost.

Finally the per-layer rates are turned into a projection of a full VGG16 conv atlas
(all 4,224 filters of the 13 conv layers, 224 px, 512 steps) on this device.

    python -m benchmarks.throughput --quick
    python -m benchmarks.throughput                      # 5 layers at 128 px + 2 at 224 px
    python -m benchmarks.throughput --dtype bfloat16
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp

from benchmarks import common as C

QUICK = {
    "layers": ["block2_conv2", "block4_conv3"],
    "sizes": [64],
    "at_224": [],
    "breakdown": ["block2_conv2"],
    "target_s": 2.0,
}
FULL = {
    "layers": ["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"],
    "sizes": [128],
    "at_224": ["block3_conv3", "block5_conv3"],
    "breakdown": ["block1_conv2", "block3_conv3", "block5_conv3"],
    "target_s": 6.0,
}
ATLAS_SIZE, ATLAS_STEPS = 224, 512


class ModelOnly:
    """The model's forward + input gradient for a chunk, k times, with no ascent around it.

    Quacks like ``engine.Program`` (``init``, ``block``) so the same timing code applies.
    Like the engine it keeps each step's objective value (so no forward conv is dead code)
    and moves the image by 1e-3 * gradient so the k steps stay dependent.
    """

    def __init__(self, model, layer: str, size: int, k: int):
        self.block_steps = k
        target = layer + ":pre"

        def objective(params, image, unit):
            return model.apply(params, image, layer)[target][..., unit].mean()

        grad = jax.vmap(jax.value_and_grad(objective, argnums=1), in_axes=(None, 0, 0))

        def block(params, images, keys, units, start):
            values = []
            for _ in range(k):
                value, g = grad(params, images, units)
                images = images + 1e-3 * g
                values.append(value)
            return images, jnp.stack(values, axis=1)

        self.init = jax.jit(lambda keys: jnp.full((keys.shape[0], 1, size, size, 3), 0.5))
        self.block = jax.jit(block, donate_argnums=(1,))


class TransformsOnly:
    """The preset's transforms alone, forward + gradient, k times: their cost per step."""

    def __init__(self, transform, size: int, k: int):
        self.block_steps = k

        def seen_sum(image, key):
            return transform(key, image).sum()

        grad = jax.vmap(jax.grad(seen_sum))

        def block(params, images, keys, units, start):
            for j in range(k):
                step_keys = jax.vmap(lambda key, j=j: jax.random.fold_in(key, j))(keys)
                images = images + 1e-3 * grad(images, step_keys)
            return images, jnp.zeros((images.shape[0], k), jnp.float32)

        self.init = jax.jit(lambda keys: jnp.full((keys.shape[0], 1, size, size, 3), 0.5))
        self.block = jax.jit(block, donate_argnums=(1,))


@dataclasses.dataclass
class Case:
    """One compiled block to time, with the FLOPs one call does."""

    variant: str
    layer: str
    size: int
    chunk: int
    k: int
    compiled: object
    args: list  # [params, state, keys, units, start]; state is replaced after each call
    info: dict

    def call(self) -> float:
        start = time.perf_counter()
        self.args[1], values = self.compiled(*self.args)
        jax.block_until_ready((self.args[1], values))
        return time.perf_counter() - start


def prepare(model, prog, layer: str, size: int, chunk: int, variant: str) -> Case:
    """Compiles the block of ``prog`` for one chunk and counts its FLOPs."""
    from jaxvis import engine

    units, keys = C.units_and_keys(engine, layer, chunk)
    units = units % model.num_filters(layer)
    compiled, state, ctimes = C.compile_block(prog, model.params, keys, units)
    k = prog.block_steps
    if isinstance(prog, (ModelOnly, TransformsOnly)):
        images, h, w = 1, size, size
    else:
        images, h, w = C.seen_shape(prog)
    hoisted = C.target_grad_hoisted(compiled, model, layer, k)
    flops = C.step_flops(model, layer, h, w, images, k=k, hoisted=bool(hoisted))
    if isinstance(prog, TransformsOnly):
        flops = {key: 0.0 for key in flops}
    info = {
        "seen": f"{images}x{h}x{w}",
        "flops": flops,
        "target_grad_hoisted": hoisted,
        "hlo_convs": C.count_convs(compiled),
        "xla": C.xla_cost(compiled),
        "xla_memory": C.xla_memory(compiled),
        **{f"compile_{key}": v for key, v in ctimes.items()},
    }
    args = [model.params, state, keys, units, jnp.int32(0)]
    return Case(variant, layer, size, chunk, k, compiled, args, info)


def interleaved(
    cases: list[Case], kernels: dict, target_s: float, min_rounds: int = 3, max_rounds: int = 60
) -> tuple[dict, dict]:
    """Times the cases round-robin, with the conv and matmul ceilings in every round.

    On a shared machine contention drifts over seconds; interleaving exposes every case
    and the ceilings to the same drift, and per-round ratios cancel most of it.

    Returns:
      ``({variant: [seconds per round]}, {ceiling: [seconds per round]})``.
    """
    ceil_names = ("conv_fwd", "matmul")
    first = sum(c.call() for c in cases)  # warm-up round, untimed
    rounds = int(min(max_rounds, max(min_rounds, target_s * len(cases) / max(first, 1e-6))))
    times = {c.variant: [] for c in cases}
    ceil = {n: [] for n in ceil_names}
    for _ in range(rounds):
        for n in ceil_names:
            ceil[n].append(min(C.time_calls(kernels[n]["call"], 1, warmup=0)))
        for c in cases:
            times[c.variant].append(c.call())
    return times, ceil


def result_row(case: Case, times: list[float], ceil: dict, kernels: dict) -> dict:
    s = C.summary(times)
    work = case.chunk * case.k
    flops = case.info["flops"]
    per_call = flops["executed"] * work
    xla_flops = case.info["xla"]["flops"]
    eff = {}
    for name, label in (("conv_fwd", "conv"), ("matmul", "matmul")):
        rates = [kernels[name]["flops"] / t for t in ceil[name]]
        eff[f"{label}_ceiling_median"] = C.median(rates)
        paired = zip(times, rates, strict=True)
        eff[f"eff_vs_{label}"] = C.median([per_call / t / r for t, r in paired])
    return {
        "layer": case.layer,
        "size": case.size,
        "variant": case.variant,
        "chunk": case.chunk,
        "k": case.k,
        **s,
        "timed_calls": len(times),
        "times_s": times,
        "filter_steps_per_s": work / s["median_s"],
        "filter_steps_per_s_best": work / s["best_s"],
        "analytic_flops_per_filter_step": flops["total"],
        "executed_flops_per_filter_step": flops["executed"],
        "analytic_flops_per_s": flops["total"] * work / s["median_s"],
        "executed_flops_per_s": per_call / s["median_s"],
        "executed_flops_per_s_best": per_call / s["best_s"],
        "xla_flops_per_s": xla_flops / s["median_s"] if xla_flops else None,
        "xla_over_executed": xla_flops / per_call if xla_flops and per_call else None,
        **eff,
        **case.info,
        "process_memory": C.peak_memory(),
        "load_average": list(os.getloadavg()),
    }


def programs(model, layer: str, size: int, preset: str, k: int | None, breakdown: bool):
    """(variant name, program) pairs for one layer: the preset, then the breakdown ones."""
    from jaxvis import engine, param, presets

    config = presets.get(preset)

    def with_k(prog):
        return prog if k is None or k == prog.block_steps else engine.Program(prog.ascent, k)

    main = with_k(engine.program(model, layer, size, config))
    out = [(preset, main)]
    if breakdown:
        out.append(
            ("no transforms", with_k(engine.program(model, layer, size, config, transform=None)))
        )
        pixel = param.pixel_image(size)
        out.append(
            (
                "pixel param, no transforms",
                with_k(engine.program(model, layer, size, config, param=pixel, transform=None)),
            )
        )
        out.append(("model fwd+input-grad only", ModelOnly(model, layer, size, main.block_steps)))
        if main.ascent.recipe.transform is not None:
            out.append(
                (
                    "transforms only (fwd+grad)",
                    TransformsOnly(main.ascent.recipe.transform, size, main.block_steps),
                )
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
        "eff mm": r["eff_vs_matmul"],
        "compile s": r["compile_trace_lower_s"] + r["compile_compile_s"],
        "XLA mem MiB": r["xla_memory"].get("peak_estimate", 0) / 2**20,
        "peak MiB": C.peak_bytes(r["process_memory"]) / 2**20,
        "calls": r["timed_calls"],
    }


def _nearest(conv_layers: list[str], rows: list[dict], layer: str) -> dict:
    """The measured row closest to ``layer`` in network order (largest size on ties)."""
    index = conv_layers.index(layer)

    def distance(r):
        return (
            abs(conv_layers.index(r["layer"]) - index),
            -r["size"],
            -conv_layers.index(r["layer"]),
        )

    return min(rows, key=distance)


def project_atlas(model, rows: list[dict], idle_conv_ceiling: float) -> dict:
    """Projected wall time of the full conv atlas from the measured rows of one variant.

    Projections per layer: (a) by FLOPs: the achieved FLOP/s of the nearest measured
    layer (at its largest measured size) applied to the layer's 224 px FLOPs; (b) measured
    at 224 px: filters x steps / filter-steps/s, where that layer was timed at 224 px;
    (c) idle-machine estimate: as (a) but at ``eff_vs_conv x idle_conv_ceiling`` (the
    best conv-ceiling median seen in the run), since on a shared machine the paired
    efficiency is steadier than the absolute rate.
    """
    conv_layers = model.conv_layers
    atlas = C.atlas_flops(model, ATLAS_SIZE, ATLAS_STEPS)
    out, total_flops, total_best, total_idle = [], 0.0, 0.0, 0.0
    for layer in conv_layers:
        filters = model.num_filters(layer)
        src = _nearest(conv_layers, rows, layer)
        hoist = C.step_flops(
            model, layer, ATLAS_SIZE, k=src["k"], hoisted=bool(src["target_grad_hoisted"])
        )
        layer_flops = filters * ATLAS_STEPS * hoist["executed"]
        by_flops = layer_flops / src["executed_flops_per_s"]
        at_224 = [r for r in rows if r["layer"] == layer and r["size"] == ATLAS_SIZE]
        measured = filters * ATLAS_STEPS / at_224[0]["filter_steps_per_s"] if at_224 else None
        idle = layer_flops / (src["eff_vs_conv"] * idle_conv_ceiling)
        total_flops += by_flops
        total_best += measured if measured is not None else by_flops
        total_idle += idle
        out.append(
            {
                "layer": layer,
                "filters": filters,
                "GFLOP/filter-step@224": C.step_flops(model, layer, 224)["total"] / 1e9,
                "rate from": f"{src['layer']}@{src['size']}",
                "exec GFLOP/s used": src["executed_flops_per_s"] / 1e9,
                "hours (by FLOPs)": by_flops / 3600,
                "hours (measured @224)": None if measured is None else measured / 3600,
                "hours (idle est.)": idle / 3600,
            }
        )
    return {
        "rows": out,
        "total_hours_by_flops": total_flops / 3600,
        "total_hours_best": total_best / 3600,
        "total_hours_idle_estimate": total_idle / 3600,
        "idle_conv_ceiling": idle_conv_ceiling,
        "atlas_pflop": atlas["total"] / 1e15,
        "filters": atlas["filters"],
        "size": ATLAS_SIZE,
        "steps": ATLAS_STEPS,
    }


def main(argv=None) -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--layers", help="comma-separated layers (default: per mode)")
    p.add_argument("--sizes", help="comma-separated image sizes (default: 64 quick, 128 full)")
    p.add_argument("--at-224", help="comma-separated layers also timed at 224 px")
    p.add_argument("--breakdown", help="comma-separated layers to break down, or 'none'")
    p.add_argument("--k", type=int, help="steps per block (default: engine.BLOCK_STEPS)")
    p.add_argument("--chunk", type=int, help="units per chunk (default: devices.auto_chunk)")
    p.add_argument("--preset", default="lucid")
    args = p.parse_args(argv)
    mode = dict(QUICK if args.quick else FULL)
    for name in ("layers", "sizes", "at_224", "breakdown"):
        value = getattr(args, name)
        if value is not None:
            mode[name] = [] if value == "none" else value.split(",")
    mode["sizes"] = [int(s) for s in mode["sizes"]]
    run(args, mode)


def run(args, mode: dict) -> None:
    from jaxvis import devices, engine, presets

    print(C.describe_device())
    model = C.load_model(args.weights, args.dtype)
    dtype = C.DTYPES[args.dtype]
    kernels = C.ceiling_kernels(dtype)
    ceil = C.ceilings(dtype, args.quick, kernels)
    C.print_ceilings(ceil)
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
            for variant, prog in programs(model, layer, size, args.preset, args.k, breakdown)
        ]
        times, ceil_times = interleaved(group, kernels, mode["target_s"])
        new = [result_row(c, times[c.variant], ceil_times, kernels) for c in group]
        C.print_table([table_row(r) for r in new])
        rows += new
        del group
    C.print_table([table_row(r) for r in rows], title="Throughput (median of timed calls)")
    ceil_end = C.ceilings(dtype, args.quick, kernels)
    C.print_ceilings(ceil_end)
    main_rows = [r for r in rows if r["variant"] == args.preset]
    idle = max(
        [c["conv_fwd"]["flops_per_s_median"] for c in (ceil, ceil_end)]
        + [r["conv_ceiling_median"] for r in rows]
    )
    projection = project_atlas(model, main_rows, idle)
    C.print_table(
        projection["rows"],
        title=(
            f"Projection: full VGG16 conv atlas, {projection['filters']} filters, "
            f"{ATLAS_SIZE} px, {ATLAS_STEPS} steps = {projection['atlas_pflop']:.1f} PFLOP"
        ),
    )
    print(
        f"total: {projection['total_hours_by_flops']:.1f} h by FLOPs; "
        f"{projection['total_hours_best']:.1f} h using 224 px measurements where made; "
        f"{projection['total_hours_idle_estimate']:.1f} h idle-machine estimate (paired "
        f"efficiency x best conv ceiling seen, {idle / 1e9:.0f} GFLOP/s)"
    )
    payload = {
        "mode": "quick" if args.quick else "full",
        "dtype": args.dtype,
        "weights": args.weights,
        "preset": args.preset,
        "block_steps_default": engine.BLOCK_STEPS,
        "ceilings": ceil,
        "ceilings_end": ceil_end,
        "rows": rows,
        "projection": projection,
    }
    if not args.no_save:
        name = (
            "throughput"
            + ("-quick" if args.quick else "")
            + (f"-{args.dtype}" if args.dtype != "float32" else "")
        )
        print("wrote", C.write_results(name, payload))


if __name__ == "__main__":
    main()
