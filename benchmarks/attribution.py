"""Attribution maps per second, batched against one image per call (the keras-vis way).

For each method, the same images, target and options in two variants:

* ``batched``: ``attribute(model, images, batch=N)``, one compiled call per chunk of N;
* ``per image``: ``attribute(model, images[i:i+1])`` for each image, as keras-vis's
  ``visualize_saliency`` / ``visualize_cam`` take one seed input per call. The compiled
  program is cached, so only the first call compiles (keras-vis rebuilt its graph).

"cold" is the variant's first use in the process, on a fresh ``apply`` so that it misses
the program cache (compile included); "steady" is the median of repeats once compiled.

FLOPs: ``fwd`` is the analytic forward conv count of one image up to the target's layer
(benchmarks/flops.py; VGG-style 3x3 convs). ``passes`` is how many forward-equivalents
the method needs per image (gradient 2: forward and input gradient; SmoothGrad and
Integrated Gradients 2 per sample; Grad-CAM at most 2; Score-CAM one forward per
channel of its layer, plus two), so ``analytic = fwd * passes``. ``XLA`` is XLA's own
count of the compiled chunk, per image; XLA counts a loop body once, so where the method
loops (Score-CAM's batches of masks, samples that do not fit in memory at once;
``loop=yes``) it is lower than what runs.

    python -m benchmarks.attribution --tiny --out-dir /tmp   # seconds: does it run?
    python -m benchmarks.attribution --quick
    python -m benchmarks.attribution                         # 224 px, random VGG16
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from benchmarks import env, flops, options
from benchmarks.report import print_table, write_results
from benchmarks.timing import median
from jaxvis.attribution.specs import METHODS

MODES = {
    "tiny": {
        "size": 32,
        "images": 2,
        "target": "channel:block2_conv2:pre:0",
        "samples": 2,
        "steps": 2,
        "repeats": 1,
    },
    "quick": {
        "size": 64,
        "images": 4,
        "target": "channel:block4_conv3:pre:0",
        "samples": 8,
        "steps": 8,
        "repeats": 2,
    },
    "full": {
        "size": 224,
        "images": 4,
        "target": "channel:block5_conv3:pre:0",
        "samples": 25,
        "steps": 32,
        "repeats": 3,
    },
}


def fresh(model):
    """The same model with a new ``apply``: misses the attribution program cache."""
    return dataclasses.replace(model, apply=functools.partial(model.apply))


def method_options(method: str, mode: dict) -> dict:
    if method == "smoothgrad":
        return {"samples": mode["samples"]}
    if method == "integrated_gradients":
        return {"steps": mode["steps"]}
    return {}


def passes(attributor, model, mode: dict) -> float:
    """Forward-equivalents per image (see the module docstring)."""
    o = attributor.description
    per = {"smoothgrad": o.get("samples"), "integrated_gradients": o.get("steps")}
    if attributor.method == "scorecam":
        return model.num_filters(attributor.layer.removesuffix(":pre")) + 2
    if attributor.method == "guided_gradcam":
        return 4
    return 2 * (per.get(attributor.method) or 1)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, seconds jax spent compiling) of ``fn()``."""
    from jaxvis import compile_time

    start, compiling = time.perf_counter(), compile_time.compile_seconds_so_far()
    fn()
    return time.perf_counter() - start, compile_time.compile_seconds_so_far() - compiling


def cost(model, method: str, images, mode: dict, kw: dict) -> dict:
    """Analytic and XLA FLOPs per image of the batched program, and whether it loops."""
    from jaxvis import attribution

    target = mode["target"]
    a = attribution.prepare(
        model, method=method, size=mode["size"], target=target, batch=len(images), **kw
    )
    compiled = a.lower(images, target).compile()
    stop = model.deepest(attribution.parse_target(target, model).layers)
    fwd = sum(c["fwd_flops"] for c in flops.conv_flops(model, stop, mode["size"]))
    return {
        "layer": a.layer,
        "fwd_flops_per_image": fwd,
        "passes": passes(a, model, mode),
        "analytic_flops_per_image": fwd * passes(a, model, mode),
        "xla_flops_per_image": (flops.xla_cost(compiled)["flops"] or 0) / len(images),
        "loops": loops(a, model, mode["size"], len(images)),
    }


def loops(attributor, model, size: int, n: int) -> bool:
    """Whether the program loops over groups of passes (XLA then counts one group)."""
    from jaxvis.attribution import program

    spec = attributor.spec
    if spec.method == "scorecam":
        return (
            model.num_filters(attributor.layer.removesuffix(":pre")) > spec.options["score_batch"]
        )
    return program.plan(model, spec, (size, size), n).group < program.passes(spec)


def measure_method(model, method: str, images, mode: dict) -> list[dict]:
    from jaxvis import attribution

    kw = {"method": method, "target": mode["target"], **method_options(method, mode)}
    n = len(images)
    variants = {
        f"batched, batch={n}": lambda m: attribution.attribute(m, images, batch=n, **kw),
        "per image": lambda m: [
            attribution.attribute(m, images[i : i + 1], **kw) for i in range(n)
        ],
    }
    opts = {k: v for k, v in kw.items() if k not in ("method", "target")}
    flop = cost(model, method, images, mode, opts)
    rows = []
    for name, fn in variants.items():
        m = fresh(model)
        cold, compile_s = timed(lambda fn=fn, m=m: fn(m))
        steady = [timed(lambda fn=fn, m=m: fn(m))[0] for _ in range(mode["repeats"])]
        s = median(steady)
        rows.append(
            {
                "method": method,
                "variant": name,
                "images": n,
                "size": mode["size"],
                "cold_wall_s": cold,
                "cold_compile_s": compile_s,
                "steady_wall_s": s,
                "steady_runs": steady,
                "images_per_s": n / s,
                "analytic_flops_per_s": flop["analytic_flops_per_image"] * n / s,
                **flop,
            }
        )
        print_table([table_row(rows[-1])])
    return rows


def table_row(r: dict) -> dict:
    return {
        "method": r["method"],
        "variant": r["variant"],
        "layer": r["layer"] or "-",
        "images/s": r["images_per_s"],
        "steady s": r["steady_wall_s"],
        "cold s": r["cold_wall_s"],
        "compile s": r["cold_compile_s"],
        "fwd GFLOP": r["fwd_flops_per_image"] / 1e9,
        "passes": r["passes"],
        "XLA GFLOP/img": r["xla_flops_per_image"] / 1e9,
        "loop": "yes" if r["loops"] else "no",
        "GFLOP/s": r["analytic_flops_per_s"] / 1e9,
    }


def test_images(size: int, n: int) -> np.ndarray:
    """``n`` smooth random RGB images in [0, 1] (fixed seed): no photos needed."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(size=(n, 4, 4, 3))
    return np.kron(coarse, np.ones((1, -(-size // 4), -(-size // 4), 1)))[:, :size, :size]


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.set_defaults(weights="random")
    p.add_argument("--methods", help=f"comma-separated (default: all of {', '.join(METHODS)})")
    p.add_argument("--size", type=int)
    p.add_argument("--images", type=int)
    p.add_argument("--target", help="e.g. channel:block5_conv3:pre:0 (the model has no head)")
    p.add_argument("--samples", type=int, help="SmoothGrad samples")
    p.add_argument("--steps", type=int, help="Integrated Gradients steps")
    p.add_argument("--repeats", type=int, help="steady-state repeats per variant")
    args = p.parse_args(argv)
    mode = dict(MODES[options.mode(args)])
    for name in ("size", "images", "target", "samples", "steps", "repeats"):
        if getattr(args, name) is not None:
            mode[name] = getattr(args, name)
    mode["methods"] = args.methods.split(",") if args.methods else list(METHODS)
    run(args, mode)


def run(args, mode: dict) -> None:
    print(env.describe_device())
    print(f"{mode['images']} images @ {mode['size']} px, target {mode['target']}")
    model = options.load_model(args.weights, args.dtype)
    images = test_images(mode["size"], mode["images"]).astype(np.float32)
    rows = [r for m in mode["methods"] for r in measure_method(model, m, images, mode)]
    print_table([table_row(r) for r in rows], title="Attribution: batched vs one image per call")
    payload = {"mode": options.mode(args), **mode, "dtype": args.dtype, "weights": args.weights}
    payload["rows"] = rows
    if not args.no_save:
        name = options.result_name("attribution", args)
        print("wrote", write_results(name, payload, args.out_dir))


if __name__ == "__main__":
    main()
