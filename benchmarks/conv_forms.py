"""Convolution formulations on CPU (issue 14): lax.conv, Winograd F(2,3)/F(4,3)/rows, im2col.

Part 1 times forward + input gradient (what the ascent step runs through every conv) of
each distinct VGG16 conv shape, per formulation of ``jaxvis/models/winograd.py``; part 2
times a whole truncated VGG16 step with every conv replaced (benchmarks/conv_forms_net.py)
against the stock model; part 3 times the engine's real block (lucid preset, one unit per
chunk, the target conv's one channel) with each conv by part 1's fastest formulation for
its shape, against the stock block. All three are interleaved round-robin with the matmul
and conv ceilings (benchmarks/timing.py), so the speedups are per-round ratios from one sitting.
Effective GFLOP/s counts the direct conv's FLOPs for every formulation, so rates compare
on the same work. Errors are max |y - y_lax| / max |y_lax| in fp32.

  python -m benchmarks.conv_forms [--tiny | --quick] [--out-dir DIR] [--no-save]
  python -m benchmarks.conv_forms --shapes-from results/conv_forms-....json   # part 3 only
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import ceilings, env, options
from benchmarks.cases import prepare as prepare_block
from benchmarks.conv_forms_net import (
    FORMS,
    STOCK,
    conv_replaced,
    net_accuracy,
    net_case,
    per_shape_form,
)
from benchmarks.report import print_table, write_results
from benchmarks.timing import interleaved, median
from jaxvis import engine, presets
from jaxvis.models.vgg16 import FEATURE_LAYERS

# Per mode: (sizes, batches, part-1 layers or None for all, part-2 layers, part-2 size).
SETTINGS = {
    "tiny": ((32,), (1,), ("block1_conv2",), ("block1_conv1",), 32),
    "quick": ((64,), (1, 4), None, ("block3_conv3", "block4_conv1"), 128),
    "full": ((128, 224), (1, 4), None, ("block3_conv3", "block4_conv1", "block5_conv3"), 128),
}
# Part 3 per mode: (layers, size, steps) of the engine's lucid block, one unit per chunk;
# 64 steps make blocks of 8 (engine.BLOCK_STEPS on CPU), 2 steps a block of 2.
PART3 = {
    "tiny": (("block1_conv2",), 32, 2),
    "quick": (("block4_conv1",), 128, 64),
    "full": (("block4_conv1", "block5_conv3"), 128, 64),
}
# --tiny only checks that the code runs: F(4,3) shares F(2,3)'s code and compiles slowest,
# and F(2,3) by rows is checked against lax.conv by tests/test_winograd.py.
SKIP = {"tiny": ("winograd F(4,3)", "winograd F(2,3) rows"), "quick": (), "full": ()}
TARGET_S = {"tiny": 0.0, "quick": 0.3, "full": 1.0}  # seconds of timing per case
MIN_ROUNDS = {"tiny": 1, "quick": 3, "full": 5}
PER_SHAPE = "fastest per shape"


def conv_shapes(size: int) -> list[dict]:
    """The distinct VGG16 conv shapes at ``size`` px: first layer of each, with side and
    channels (later convs with the same shape, e.g. block3_conv3, are block3_conv2's)."""
    shapes, cin, side, seen = [], 3, size, set()
    for layer in FEATURE_LAYERS:
        if layer.kind == "pool":
            side //= 2
            continue
        key = (side, cin, layer.num_filters)
        if key not in seen:
            seen.add(key)
            shapes.append({"layer": layer.name, "side": side, "cin": cin, "cout": key[2]})
        cin = layer.num_filters
    return shapes


def _fwd_and_input_grad(form):
    def run(x, kernel, cotangent):
        y, vjp = jax.vjp(lambda x: form(x, kernel), x)
        return y, vjp(cotangent)[0]

    return jax.jit(run)


@dataclasses.dataclass
class ConvCase:
    """One formulation on one conv shape: forward output and input gradient."""

    variant: str
    group: str
    compiled: object
    args: tuple
    flops: float  # direct conv, forward + input gradient
    compile_s: float

    def call(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self.compiled(*self.args))
        return time.perf_counter() - start


def conv_cases(shape: dict, batch: int, size: int, skip=()) -> list[ConvCase]:
    """Compiled cases of every formulation for one shape, with shared random inputs."""
    side, cin, cout = shape["side"], shape["cin"], shape["cout"]
    kx, kk, kg = jax.random.split(jax.random.key(side * 7919 + cin), 3)
    x = jax.random.normal(kx, (batch, side, side, cin), jnp.float32)
    kernel = jax.random.normal(kk, (3, 3, cin, cout), jnp.float32) * np.sqrt(2 / (9 * cin))
    cot = jax.random.normal(kg, (batch, side, side, cout), jnp.float32)
    group = f"{size}px b{batch} {shape['layer']}"
    flops = 2 * (2.0 * batch * side * side * cin * cout * 9)
    cases = []
    for name, form in FORMS.items():
        if name in skip:
            continue
        start = time.perf_counter()
        compiled = _fwd_and_input_grad(form).lower(x, kernel, cot).compile()
        wall = time.perf_counter() - start
        cases.append(ConvCase(f"{group} | {name}", group, compiled, (x, kernel, cot), flops, wall))
    return cases


def _rel_err(a, b) -> float:
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def conv_rows(cases: list[ConvCase], times: dict, base: dict) -> list[dict]:
    """One row per formulation of one shape: ms, GFLOP/s, speedup and errors vs lax."""
    ref = cases[0]
    y0, g0 = ref.compiled(*ref.args)
    rows = []
    for case in cases:
        y, g = case.compiled(*case.args)
        t = times[case.variant]
        ratios = [a / b for a, b in zip(times[ref.variant], t, strict=True)]
        rows.append(
            {
                **base,
                "form": case.variant.split(" | ")[1],
                "ms": median(t) * 1e3,
                "GFLOP/s": case.flops / median(t) / 1e9,
                "speedup": median(ratios),
                "out_err": _rel_err(y, y0),
                "grad_err": _rel_err(g, g0),
                "compile_s": case.compile_s,
                "times_s": t,
            }
        )
    return rows


def part1(mode: str, kernels: dict) -> tuple[list[dict], dict]:
    """Per-shape timing: every shape, batch and size of ``mode``, round-robin."""
    sizes, batches, only, _, _ = SETTINGS[mode]
    groups = []
    for size in sizes:
        for batch in batches:
            for shape in conv_shapes(size):
                if only is None or shape["layer"] in only:
                    base = {"size": size, "batch": batch, **shape}
                    groups.append((base, conv_cases(shape, batch, size, SKIP[mode])))
    every = [c for _, cases in groups for c in cases]
    times, ceil = interleaved(every, kernels, TARGET_S[mode], min_rounds=MIN_ROUNDS[mode])
    rows = [r for base, cases in groups for r in conv_rows(cases, times, base)]
    return rows, ceil


def fastest_per_shape(rows1: list[dict], size: int, batch: int) -> dict:
    """``{(batch, side, cin, cout): form}`` for the shapes where part 1 found a
    formulation faster than lax.conv at this size and batch (empty if none was timed)."""
    best = {}
    for r in rows1:
        key = (r["batch"], r["side"], r["cin"], r["cout"])
        if r["size"] == size and r["batch"] == batch and r["speedup"] > best.get(key, (1.0,))[0]:
            best[key] = (r["speedup"], r["form"])
    return {key: form for key, (_, form) in best.items()}


def part2(mode: str, kernels: dict, rows1: list[dict]) -> tuple[list[dict], dict]:
    """Whole truncated VGG16 step per formulation against the stock model, plus each
    conv by the formulation part 1 measured fastest for its shape (where part 1 timed
    this size)."""
    _, batches, _, layers, size = SETTINGS[mode]
    model = options.load_model("random", "float32")
    groups = []
    for layer in layers:
        for batch in batches:
            variants = [STOCK, *(v for v in FORMS if v != "lax.conv" and v not in SKIP[mode])]
            cases = [net_case(model, layer, size, batch, v) for v in variants]
            table = fastest_per_shape(rows1, size, batch)
            if any(r["size"] == size for r in rows1):
                form = per_shape_form(table)
                cases.append(net_case(model, layer, size, batch, PER_SHAPE, form))
            groups.append(cases)
    every = [c for cases in groups for c in cases]
    for c in every:
        c.variant = f"{c.layer} {c.size}px b{c.batch} | {c.variant}"
    times, ceil = interleaved(every, kernels, TARGET_S[mode], min_rounds=MIN_ROUNDS[mode])
    rows = []
    for cases in groups:
        t0 = times[cases[0].variant]
        for case in cases:
            t = times[case.variant]
            rows.append(
                {
                    "layer": case.layer,
                    "size": case.size,
                    "batch": case.batch,
                    "variant": case.variant.split(" | ")[1],
                    "ms": median(t) * 1e3,
                    "speedup": median([a / b for a, b in zip(t0, t, strict=True)]),
                    **net_accuracy(cases[0], case),
                    "hlo_convs": case.hlo_convs,
                    "compile_s": case.compile_s,
                    "times_s": t,
                }
            )
    return rows, ceil


def part3(mode: str, kernels: dict, rows1: list[dict], weights: str) -> tuple[list[dict], dict]:
    """The engine's lucid block at one unit per chunk (8 steps; 2 with --tiny), stock and
    with each conv by the formulation part 1 measured fastest for its shape (batch 1),
    interleaved. The sliced target conv stays ``lax.conv``. Accuracy is one block's
    objective values from the same start; ``hlo_convs`` shows how many convs each compiled
    block kept. ``weights`` is ``--weights`` (parts 1 and 2 use random weights)."""
    layers, size, steps = PART3[mode]
    model = options.load_model(weights, "float32")
    table = fastest_per_shape(rows1, size, 1)
    pairs = []
    for layer in layers:
        stock = engine.program(model, layer, size, presets.get("lucid"), steps=steps)
        stock_case = prepare_block(model, stock, layer, size, 1, f"{layer} | {STOCK}")
        with conv_replaced(per_shape_form(table)):
            forms = engine.Program(stock.ascent, stock.block_steps)
            forms_case = prepare_block(model, forms, layer, size, 1, f"{layer} | {PER_SHAPE}")
        pairs.append((stock_case, forms_case))
    values = {c.variant: _one_block(c) for pair in pairs for c in pair}
    times, ceil = interleaved(
        [c for pair in pairs for c in pair], kernels, TARGET_S[mode], MIN_ROUNDS[mode]
    )
    rows = []
    for stock_case, forms_case in pairs:
        t0, t1 = times[stock_case.variant], times[forms_case.variant]
        v0 = values[stock_case.variant]
        for case, t in ((stock_case, t0), (forms_case, t1)):
            rows.append(
                {
                    "layer": case.layer,
                    "size": size,
                    "variant": case.variant.split(" | ")[1],
                    "filter-steps/s": case.k / median(t),
                    "speedup": median([a / b for a, b in zip(t0, t, strict=True)]),
                    "values_rel_err": float(
                        np.abs(values[case.variant] - v0).max() / np.abs(v0).max()
                    ),
                    # fewer convs than stock: the patch reached the compiled block
                    "hlo_convs": case.compiled.as_text().count(" convolution("),
                    "times_s": t,
                }
            )
    return rows, ceil


def _one_block(case) -> np.ndarray:
    """The objective values of the case's first block, from the state ``prepare`` made.
    Stock and per-shape cases of a layer start from the same state (the same unit keys),
    so their values compare; timing then continues from the state this block returns."""
    case.args[1], values = case.compiled(*case.args)
    return np.asarray(values)


def _ceiling_summary(ceil: dict, kernels: dict) -> dict:
    return {n: kernels[n]["flops"] / median(ts) / 1e9 for n, ts in ceil.items()}


def load_shapes(path: str, parser) -> list[dict]:
    """Part 1's rows from an earlier conv_forms result (``--shapes-from``), checked."""
    import json

    need = {"size", "batch", "side", "cin", "cout", "form", "speedup"}
    try:
        with open(path) as f:
            payload = json.load(f)
        rows = payload["shapes"]
        bad = not isinstance(rows, list) or not all(need <= set(r) for r in rows)
    except (OSError, ValueError, KeyError, TypeError) as e:
        bad = e
    if bad:
        why = f" ({bad})" if bad is not True else ""
        parser.error(
            f"--shapes-from {path}: not a conv_forms result whose 'shapes' rows hold "
            f"{', '.join(sorted(need))}{why}"
        )
    then = payload.get("environment", {}).get("cpu_id")
    if then != env.cpu_id():
        print(f"warning: {path} was measured on CPU {then!r}, this is {env.cpu_id()!r}")
    return rows


def main(argv=None) -> None:
    parser = options.base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes-from",
        metavar="JSON",
        help="take part 1's timings from this earlier conv_forms result and run part 3 only",
    )
    args = parser.parse_args(argv)
    mode = options.mode(args)
    given = load_shapes(args.shapes_from, parser) if args.shapes_from else None  # fails first
    print(env.describe_device(), flush=True)
    kernels = ceilings.ceiling_kernels(jnp.float32, tiny=mode == "tiny")
    t0 = time.perf_counter()
    if given is not None:
        rows1, c1 = given, None
        rows2, c2 = [], None
    else:
        rows1, ceil1 = part1(mode, kernels)
        rows2, ceil2 = part2(mode, kernels, rows1)
        c1, c2 = _ceiling_summary(ceil1, kernels), _ceiling_summary(ceil2, kernels)
    rows3, ceil3 = part3(mode, kernels, rows1, args.weights)
    c3 = _ceiling_summary(ceil3, kernels)
    hide = {"times_s", "cin", "cout", "side"}
    if not args.shapes_from:
        print_table(
            [{k: v for k, v in r.items() if k not in hide} for r in rows1],
            title="Per shape: forward + input gradient (GFLOP/s = direct-conv FLOPs / time)",
        )
        print(f"ceilings in part 1 (GFLOP/s, median of rounds): {c1}")
        print_table(
            [{k: v for k, v in r.items() if k != "times_s"} for r in rows2],
            title="Truncated VGG16 forward + input gradient, every conv replaced",
        )
        print(f"ceilings in part 2 (GFLOP/s, median of rounds): {c2}")
    print_table(
        [{k: v for k, v in r.items() if k != "times_s"} for r in rows3],
        title="The engine's lucid block, one unit per chunk: stock and fastest conv per shape",
    )
    print(f"ceilings in part 3 (GFLOP/s, median of rounds): {c3}")
    payload = {
        "benchmark": "conv_forms",
        "mode": mode,
        "environment": env.environment(),
        "ceiling_kernels": {
            n: {"what": k["what"], "flops": k["flops"]} for n, k in kernels.items()
        },
        "ceilings_part1_gflops": c1,
        "ceilings_part2_gflops": c2,
        "ceilings_part3_gflops": c3,
        "shapes": rows1,
        "shapes_from": args.shapes_from,
        "network": rows2,
        "engine_block": rows3,
        "wall_s": time.perf_counter() - t0,
    }
    if not args.no_save:
        print(
            f"wrote {write_results(options.result_name('conv_forms', args), payload, args.out_dir)}"
        )


if __name__ == "__main__":
    main()
