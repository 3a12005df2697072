"""One bounded accelerator check: ceilings, per-layer rates, the chunk rule, k, a projection.

Run through ``bash benchmarks/device_check.sh [--tiny] [--out DIR]`` (see
benchmarks/README.md, "Accelerator check"). On a GPU, within about 8 minutes, with random
VGG16 weights and the lucid preset, it measures in one process:

1. the matmul, conv and conv-input-gradient ceilings in float32 and bfloat16
   (benchmarks/ceilings.py);
2. filter-steps/s and executed TFLOP/s of the engine's compiled block at 224 px for the
   last conv of each VGG16 block, in both dtypes, at the chunk the engine picks
   (``devices.chunk_size``) and its k (``engine.block_steps_for``), with compile times;
3. a chunk-size sweep (1, 4, 16, 64, 256, 512 and the rule's own pick, up to memory) at
   one layer, against the rule (``devices.accelerator_chunk``, via ``auto_chunk``);
4. a sweep of steps per block k (``engine.BLOCK_STEPS``) at the rule's chunk;
5. peak device memory, and the projected time of the full conv atlas
   (benchmarks/projection.py) from the rates of part 2;
6. at the sweep layer, the target conv in full against only the unit's channel
   (``Taps.select``, off by default on accelerators until this measures it).

Items run in order of importance, each only if its estimated cost fits the part's budget
and the global deadline (benchmarks/device_budget.py); what did not fit is listed. The
JSON is rewritten after every part, so a run stopped early still leaves its results.
Without ``--tiny`` it refuses to run unless ``jax.devices()[0].platform == "gpu"`` (exit
status 2); ``--tiny`` runs every part at toy sizes on whatever device there is.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from benchmarks import chunk_sweep, device_parts, device_summary, env, options, report
from benchmarks.device_budget import Budget
from benchmarks.device_summary import print_layers, print_summary
from benchmarks.projection import ATLAS_STEPS, print_projection, project_atlas
from benchmarks.timing import median

# The last conv of each VGG16 block, deepest first: blocks 4 and 5 hold 86 % of a full
# atlas's FLOPs (benchmarks/README.md, "Projection"), so they are measured before the
# budget can run out, and each of the 13 conv layers borrows the rate of one of these
# (benchmarks/projection.py). The ten compiled blocks (5 layers x 2 dtypes) fit the
# layers part's 230 s if a 16-step block to block5_conv3 compiles in about 17 s or less
# (benchmarks/README.md, "Accelerator check"); past that, what does not fit is skipped.
FULL_LAYERS = ("block5_conv3", "block4_conv3", "block3_conv3", "block2_conv2", "block1_conv2")
MODES = {
    "tiny": {
        "size": 32,
        "layers": ("block1_conv1",),
        "sweep_layer": "block1_conv1",
        "chunks": (1, 2),
        "ks": (1, 2),
        "k": 2,
        "target_s": 0.05,
        "compile_guess_s": 8.0,
        "guess_k": 2,
        # Generous for toy sizes (about 20 s on the 2-core VM), so that a loaded CPU does
        # not skip items; the full mode's budget is the one that matters.
        "budget_s": 200.0,
        "parts": {
            "ceilings": 30.0,
            "layers": 90.0,
            "chunks": 30.0,
            "block_steps": 30.0,
            "one_channel": 20.0,
        },
    },
    "full": {
        "size": 224,
        "layers": FULL_LAYERS,
        "sweep_layer": "block4_conv3",
        "chunks": (1, 4, 16, 64, 256, 512),
        "ks": (4, 8, 16, 32),
        "k": None,  # the engine's own: block_steps_for(512, "gpu") = BLOCK_STEPS["gpu"]
        "target_s": 3.0,
        # Assumed compile seconds of a guess_k-step block to block5_conv3 until one is
        # measured; later estimates scale the measured ones (device_parts.Run).
        "compile_guess_s": 40.0,
        "guess_k": 16,
        "budget_s": 420.0,
        "parts": {
            "ceilings": 25.0,
            "layers": 230.0,
            "chunks": 75.0,
            "block_steps": 55.0,
            "one_channel": 35.0,
        },
    },
}
DTYPES = ("float32", "bfloat16")
SWEEP_DTYPE = "float32"  # the CLI's default dtype
NAME = "device_check"
# Imports the GPU machine may lack or that would slow every run (benchmarks/README.md).
HEAVY_MODULES = ("keras", "matplotlib", "skimage", "pytest", "tensorflow", "torch")


class HardStop(BaseException):  # not an Exception: the parts catch those per item
    """Raised on SIGTERM (device_check.sh's hard time limit): write what there is."""


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="toy sizes on any device, under a minute")
    p.add_argument("--out", help="folder for the JSON (default benchmarks/results)")
    p.add_argument(
        "--budget-s", type=float, help="total seconds (default: 420, tiny 200); parts scale"
    )
    return p.parse_args(argv)


def check_device(tiny: bool) -> str:
    """The default device's platform; a one-line error unless it is a GPU or ``tiny``."""
    import jax

    from jaxvis.errors import JaxvisError

    platform = jax.devices()[0].platform
    if platform != "gpu" and not tiny:
        raise JaxvisError(
            f"no GPU in use: jax.devices()[0].platform is {platform!r} (jax "
            f"{jax.__version__}), expected 'gpu'; run it on a GPU machine, or add --tiny "
            "for a toy run on this device"
        )
    return platform


def settings(args) -> dict:
    """The mode's settings, with the budget scaled to ``--budget-s``."""
    name = "tiny" if args.tiny else "full"
    mode = {**MODES[name], "name": name, "sweep_dtype": SWEEP_DTYPE}
    total = mode["budget_s"] if args.budget_s is None else max(0.0, args.budget_s)
    scale = total / mode["budget_s"]
    mode["parts"] = {part: cap * scale for part, cap in mode["parts"].items()}
    mode["budget_s"] = total
    return mode


def new_run(mode: dict) -> device_parts.Run:
    from jaxvis import presets
    from jaxvis.errors import JaxvisError

    preset = "lucid"
    if presets.get(preset).steps != ATLAS_STEPS:
        raise JaxvisError(
            f"the {preset} preset runs {presets.get(preset).steps} steps but "
            f"benchmarks/projection.py projects {ATLAS_STEPS}; make them agree"
        )
    models = {d: options.load_model("random", d) for d in DTYPES}
    return device_parts.Run(mode=mode, preset=preset, models=models)


def projections(run: device_parts.Run, rows: list[dict]) -> dict:
    """The full-atlas projection per dtype from its measured rows (None where none ran),
    plus the compile time of one block per conv layer that a real atlas also pays."""
    out = {}
    for dtype, model in run.models.items():
        mine = [r for r in rows if r["dtype"] == dtype]
        if not mine:
            out[dtype] = None
            continue
        conv = run.ceilings[dtype]["conv_fwd"]["flops_per_s_median"]
        idle = max([conv] + [r["conv_ceiling_median"] for r in mine])
        proj = project_atlas(model, mine, idle)
        proj["layers_measured"] = [r["layer"] for r in mine]
        proj["compile_s_per_layer"] = median([r["compile_s"] for r in mine])
        proj["compile_hours"] = len(model.conv_layers) * proj["compile_s_per_layer"] / 3600
        print(f"\n{dtype}:")
        print_projection(proj)
        out[dtype] = proj
    return out


def sweeps(run, budget, payload, kept, layer_rows) -> None:
    """The chunk sweep at the engine's k, then the k sweep at the rule's chunk."""
    import jax

    from jaxvis import devices, engine

    layer, dtype = run.mode["sweep_layer"], run.mode["sweep_dtype"]
    prog = device_parts.program(run, dtype, layer)
    rule = device_parts.rule_chunk(run, dtype, layer)
    used = next((r for r in layer_rows if (r["layer"], r["dtype"]) == (layer, dtype)), None)
    chunk = used["chunk"] if used else rule  # smaller than the rule only after an OOM
    model = run.models[dtype]
    memory = devices.device_memory(jax.devices()[0])
    per_unit = devices.activation_bytes(model, prog.ascent.stop_at, run.mode["size"])
    chunks = device_parts.nearest_first(set(run.mode["chunks"]) | {rule}, rule)
    k0 = prog.block_steps
    rows = device_parts.sweep(run, budget.part("chunks"), [(c, k0) for c in chunks], kept)
    report.print_table(chunk_sweep.sweep_table(rows), title=f"Chunk size ({layer}, k = {k0})")
    payload["chunk_sweep"] = {
        "layer": layer,
        "dtype": dtype,
        "size": run.mode["size"],
        "k": k0,
        "rule_chunk": rule,
        # What the accelerator rule gives one device of this memory (16 GiB where the
        # device does not say, as devices.auto_chunk assumes): on a GPU, the rule_chunk.
        "accelerator_rule_chunk": devices.accelerator_chunk(per_unit, memory or 16 * 2**30, 1),
        "activation_bytes_per_unit": per_unit,
        "device_memory_bytes": memory,
        "rows": rows,
        **device_summary.verdict(rows, "chunk", rule),
    }
    write(payload, run)
    ks = device_parts.nearest_first(run.mode["ks"], k0)
    rows = device_parts.sweep(run, budget.part("block_steps"), [(chunk, k) for k in ks], kept)
    report.print_table(chunk_sweep.sweep_table(rows), title=f"Steps per block k (chunk {chunk})")
    payload["block_steps"] = {
        "layer": layer,
        "dtype": dtype,
        "chunk": chunk,
        "default_k": k0,
        "BLOCK_STEPS": dict(engine.BLOCK_STEPS),
        "JAXVIS_BLOCK_STEPS": os.environ.get(engine.BLOCK_STEPS_ENV),  # overrides it if set
        "rows": rows,
        **device_summary.verdict(rows, "k", k0),
    }


def write(payload: dict, run: device_parts.Run) -> str:
    from benchmarks.memory import peak_memory

    payload["peak_memory"] = peak_memory()
    payload["heavy_modules_imported"] = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    payload["compile_per_step_s"] = dict(run.compile_per_step)
    payload["compile_s"] = device_summary.compile_times(payload)
    name = NAME + ("-tiny" if run.mode["name"] == "tiny" else "")
    run.result_path = report.write_results(
        name, payload, payload["out_dir"], replace=run.result_path
    )
    return run.result_path


def measure(run: device_parts.Run, budget: Budget, payload: dict) -> None:
    """The parts in order, the JSON rewritten after each."""
    device_parts.measure_ceilings(run, budget.part("ceilings"))
    payload["ceilings"] = run.ceilings
    write(payload, run)
    keep = (run.mode["sweep_layer"], run.mode["sweep_dtype"])
    rows = payload["layers"] = []
    kept = device_parts.measure_layers(run, budget.part("layers"), keep, rows)
    print_layers(rows)
    payload["projection"] = projections(run, rows)
    write(payload, run)
    sweeps(run, budget, payload, kept, rows)
    write(payload, run)
    pair = device_parts.one_channel(run, budget.part("one_channel"), kept)
    table = [
        {
            "setting": r["variant"],
            "chunk": r["chunk"],
            "k": r["k"],
            "filter-steps/s": r["filter_steps_per_s"],
            "exec GFLOP/s": r["executed_flops_per_s"] / 1e9,
            "work eff": r["work_eff_vs_conv"],
            "compile s": r["compile_s"],
        }
        for r in pair
    ]
    report.print_table(table, title="Target conv: all channels or one (work eff: full-conv FLOPs)")
    payload["one_channel"] = {
        "layer": run.mode["sweep_layer"],
        "dtype": run.mode["sweep_dtype"],
        "rows": pair,
        "one_over_all": _ratio(pair),
    }


def _ratio(rows: list[dict]) -> float | None:
    """filter-steps/s with one channel of the target conv over all channels."""
    rate = {r["variant"]: r["filter_steps_per_s"] for r in rows}
    if "one channel" not in rate or "all channels" not in rate:
        return None
    return rate["one channel"] / rate["all channels"]


def run_check(args, mode: dict, start: float) -> int:
    import jax

    print(env.describe_device(), flush=True)
    budget = Budget(mode["budget_s"], mode["parts"], start=start)
    run = new_run(mode)
    # device_check.sh runs from the repository root; --out is relative to where it was called.
    cwd = os.environ.get("DEVICE_CHECK_CWD", os.getcwd())
    payload = {
        "mode": mode["name"],
        "preset": run.preset,
        "weights": "random",
        "size": mode["size"],
        "layer_set": list(mode["layers"]),
        "budget_s": mode["budget_s"],
        "part_budgets_s": mode["parts"],
        "default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", None)),
        "out_dir": os.path.join(cwd, args.out) if args.out else None,
        "stopped": None,
    }
    status = 0
    try:
        measure(run, budget, payload)
    except HardStop:
        payload["stopped"] = "SIGTERM (the hard time limit of benchmarks/device_check.sh)"
        status = 3
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the results be written
    if "projection" not in payload:
        payload["projection"] = projections(run, payload.get("layers", []))
    payload["parts"] = budget.report()
    payload["skipped"] = budget.skipped()
    payload["failed"] = budget.failed()
    status = status or (1 if payload["failed"] else 0)
    payload["elapsed_s"] = budget.elapsed()
    path = write(payload, run)
    for line in payload["skipped"] + payload["failed"]:
        print("left out:", line)
    print("wrote", path)
    print_summary(payload, path)
    return status


def main(argv=None) -> int:
    from jaxvis.errors import JaxvisError

    start = time.monotonic()  # starting the device counts against the budget
    args = parse(argv)
    try:
        check_device(args.tiny)
        mode = settings(args)
        signal.signal(signal.SIGTERM, _stop)
        return run_check(args, mode, start)
    except JaxvisError as e:
        print(f"device_check: {e}", file=sys.stderr)
        return 2


def _stop(signum, frame):
    raise HardStop()


if __name__ == "__main__":
    sys.exit(main())
