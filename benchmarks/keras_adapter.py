"""What the Keras adapter costs: jaxvis's own VGG16 against the same network through
``jaxvis.models.keras_model.from_keras``.

Both models hold the same weights: those of ``jaxvis.vgg16`` (``--weights``, random by
default), copied into ``keras.applications.VGG16(weights=None, include_top=False)``, with
the same input convention, so they compute the same function. The benchmark checks that: XLA's FLOPs
per step of the two programs, and the largest difference between their pictures. Each
timed call is one ``jaxvis.visualize`` of the same filters, layer, size and steps; the two
models are timed round-robin with the conv and matmul ceilings (benchmarks/timing.py),
after an untimed call each that compiles. The ratio is the median over rounds of
(keras filter-steps/s) / (jaxvis filter-steps/s) in the same round.

    python -m benchmarks.keras_adapter --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.keras_adapter --quick
    python -m benchmarks.keras_adapter      # block4_conv1, 128 px, 64 steps, 4 filters
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from benchmarks import ceilings, env, options
from benchmarks.report import print_table, write_results
from benchmarks.timing import interleaved, median, summary

MODES = {
    "tiny": {"layer": "block1_conv1", "size": 32, "steps": 2, "filters": 2, "target_s": 0.05},
    "quick": {"layer": "block3_conv1", "size": 64, "steps": 16, "filters": 4, "target_s": 10.0},
    "full": {"layer": "block4_conv1", "size": 128, "steps": 64, "filters": 4, "target_s": 60.0},
}
# jaxvis.models.weights names the torchvision convention "torchvision"; conventions.py "torch".
_CONVENTION = {"torchvision": "torch", "caffe": "caffe"}


def keras_vgg16(model, dtype: str):
    """``model``'s weights in Keras's VGG16, as a FeatureModel through ``from_keras``."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    from jaxvis.models.keras_model import from_keras

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
    try:
        net = keras.applications.VGG16(weights=None, include_top=False)
    finally:
        keras.config.set_dtype_policy(policy)
    for name, p in model.params.items():
        net.get_layer(name).set_weights([np.asarray(p["kernel"]), np.asarray(p["bias"])])
    return from_keras(net, preprocess=_CONVENTION[model.info.preprocessing])


@dataclasses.dataclass
class VisualizeCase:
    """One model: a ``visualize`` of the same filters per call."""

    variant: str
    model: object
    layer: str
    filters: list[int]
    run: dict  # preset, size, steps
    last: object = None  # the latest Visualization

    def call(self) -> float:
        import jaxvis

        start = time.perf_counter()
        self.last = jaxvis.visualize(self.model, self.layer, self.filters, **self.run)
        return time.perf_counter() - start


def step_flops(case: VisualizeCase, preset: str) -> float:
    """XLA's FLOPs of one step of one unit (the engine's lowered program)."""
    from jaxvis import engine, presets

    run = case.run
    prog = engine.program(
        case.model, case.layer, run["size"], presets.get(preset), steps=run["steps"]
    )
    return prog.step_flops(case.model.params)


def row(case: VisualizeCase, cold: tuple[float, float], times: list[float], flops: float) -> dict:
    """Rates of one model's timed calls; ``cold`` is (wall, compile) seconds of its first."""
    s = summary(times)
    steps = case.run["steps"]
    return {
        "variant": case.variant,
        "cold_s": cold[0],
        "compile_s": cold[1],
        **s,
        "times_s": times,
        "filter_steps_per_s": len(case.filters) * steps / s["median_s"],
        "xla_flops_per_filter_step": flops,
    }


def table_row(r: dict) -> dict:
    return {
        "model": r["variant"],
        "filter-steps/s": r["filter_steps_per_s"],
        "median s": r["median_s"],
        "best s": r["best_s"],
        "cold s": r["cold_s"],
        "compile s": r["compile_s"],
        "XLA GFLOP/step": r["xla_flops_per_filter_step"] / 1e9,
        "rounds": r["n"],
    }


def agreement(ours: VisualizeCase, theirs: VisualizeCase) -> dict:
    """How far the two models' last pictures and objectives are apart."""
    a, b = ours.last, theirs.last
    diff = np.abs(a.images.astype(np.int16) - b.images.astype(np.int16))
    scale = np.abs(a.objective).max() or 1.0
    return {
        "max_pixel_diff_uint8": int(diff.max()),
        "mean_pixel_diff_uint8": float(diff.mean()),
        "max_objective_rel_diff": float(np.abs(a.objective - b.objective).max() / scale),
    }


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--layer", help="layer (default: per mode)")
    p.add_argument("--size", type=int, help="image side in pixels (default: per mode)")
    p.add_argument("--steps", type=int, help="steps (default: per mode)")
    p.add_argument("--filters", type=int, help="filters per call (default: per mode)")
    p.add_argument("--preset", help="preset (default: keras-vis if --tiny, else lucid)")
    p.set_defaults(weights="random")  # jaxvis.vgg16(weights=None), as the Keras side
    args = p.parse_args(argv)
    args.preset = args.preset or options.default_preset(args)
    mode = dict(MODES[options.mode(args)])
    for name in ("layer", "size", "steps", "filters"):
        if getattr(args, name) is not None:
            mode[name] = getattr(args, name)
    run(args, mode)


def run(args, mode: dict) -> None:
    print(env.describe_device())
    run_mode = options.mode(args)
    layer, steps = mode["layer"], mode["steps"]
    print(f"{layer} @ {mode['size']} px, {steps} steps, {mode['filters']} filters, {args.preset}")
    ours = options.load_model(args.weights, args.dtype)
    theirs = keras_vgg16(ours, args.dtype)
    kernels = ceilings.ceiling_kernels(options.DTYPES[args.dtype], tiny=run_mode == "tiny")
    settings = {"preset": args.preset, "size": mode["size"], "steps": steps}
    filters = list(range(mode["filters"]))
    group = [
        VisualizeCase("jaxvis.vgg16", ours, layer, filters, settings),
        VisualizeCase("from_keras(keras VGG16)", theirs, layer, filters, settings),
    ]
    cold = {c.variant: (c.call(), c.last.compile_seconds) for c in group}  # untimed
    times, ceil_times = interleaved(group, kernels, mode["target_s"])
    flops = {c.variant: step_flops(c, args.preset) for c in group}
    rows = [row(c, cold[c.variant], times[c.variant], flops[c.variant]) for c in group]
    print_table([table_row(r) for r in rows], title="jaxvis VGG16 vs from_keras (median)")
    ratio = median([o / k for o, k in zip(*(times[c.variant] for c in group), strict=True)])
    same = agreement(*group)
    print(f"keras / jaxvis filter-steps/s (median of per-round ratios): {ratio:.3f}; {same}")
    payload = {
        "mode": run_mode,
        "dtype": args.dtype,
        "weights": args.weights,
        "preset": args.preset,
        **{k: mode[k] for k in ("layer", "size", "steps")},
        "filters": len(filters),
        "rows": rows,
        "keras_over_jaxvis": ratio,
        "agreement": same,
        "ceilings_per_round": {
            name: [kernels[name]["flops"] / t for t in ts] for name, ts in ceil_times.items()
        },
    }
    if not args.no_save:
        name = options.result_name("keras_adapter", args)
        print("wrote", write_results(name, payload, args.out_dir))


if __name__ == "__main__":
    main()
