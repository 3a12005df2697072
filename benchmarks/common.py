"""Shared pieces of the benchmarks: environment, ceilings, FLOP counts, timing, output.

Everything here runs unchanged on CPU, GPU and TPU: the platform decides only problem
sizes (``jax.devices()[0].platform``) and where peak memory comes from
(``device.memory_stats()`` on accelerators, the process RSS on CPU).

FLOP convention: one multiply-add is 2 FLOPs. A 3x3 'same' conv on an H x W map costs
``2 * H * W * Cin * Cout * 9`` per image forward; its gradient with respect to its input
(a transposed conv, what an ascent step needs to reach the image) costs the same again.
No weight gradients are taken. Bias adds, ReLU, pooling, preprocessing, the
parameterization (FFT, colour), the transforms and the optimizer are *excluded* from the
analytic count; XLA's own count (``compiled.cost_analysis()``) includes them, so the two
columns together show how much non-conv work a step does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ----------------------------------------------------------------------------- environment


def platform_name() -> str:
    """``cpu``, ``gpu`` or ``tpu`` of the default device."""
    return jax.devices()[0].platform


def on_cpu() -> bool:
    return platform_name() == "cpu"


def cpu_model() -> str:
    """The host CPU's model name as /proc/cpuinfo gives it (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The AVX-512 / AMX feature flags of the host, which decide XLA:CPU's kernels."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))
    except OSError:
        pass
    return []


def environment() -> dict:
    """Device, software and host facts recorded with every result."""
    import jaxlib

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_pressure": cpu_pressure(),
        "argv": sys.argv[1:],
    }


def cpu_pressure() -> str | None:
    """Linux PSI line for CPU ("some avg10=... avg60=..."): how contended the host is."""
    try:
        with open("/proc/pressure/cpu") as f:
            return f.readline().strip()
    except OSError:
        return None


def device_slug() -> str:
    """A file-name-safe device name: ``cpu-2core``, ``nvidia-h100-80gb-hbm3``, ..."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu-{os.cpu_count()}core"
    name = re.sub(r"[^a-z0-9]+", "-", dev.device_kind.lower()).strip("-")
    count = jax.device_count()
    return f"{name}-x{count}" if count > 1 else name


def describe_device() -> str:
    env = environment()
    where = (
        env["device_kind"]
        if env["platform"] != "cpu"
        else (f"{env['cpu_model']}, {env['cpu_count']} cores")
    )
    return (
        f"{env['platform']} ({where}) x{env['device_count']}; jax {env['jax']}, "
        f"date {env['date']}, load avg {env['load_average']}; cpu pressure "
        f"{env['cpu_pressure']}"
    )


# ----------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``fn`` must wait for its result (``jax.block_until_ready``) so that each time covers
    the work and nothing else.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: Sequence[float]) -> dict:
    """Median, best and spread of a list of timings (seconds)."""
    return {
        "median_s": statistics.median(times),
        "best_s": min(times),
        "worst_s": max(times),
        "n": len(times),
    }


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


# ----------------------------------------------------------------------------- ceilings


def ceiling_kernels(dtype) -> dict:
    """Jitted, warmed-up ceiling kernels of the default device in ``dtype``.

    Returns ``{name: {"what", "flops", "call"}}`` for ``matmul`` (n x n @ n x n, 2 n^3
    FLOPs; n = 2048 on CPU, 4096 on accelerators), ``conv_fwd`` and ``conv_input_grad``
    (3x3 'same' conv 256->256 at 56x56, batch 2 on CPU, 32 on accelerators, and its
    gradient with respect to its input, the two kinds of conv an ascent step runs).
    ``call()`` runs once and waits for the result.
    """
    cpu = on_cpu()
    n, batch, side, ch = (2048 if cpu else 4096), (2 if cpu else 32), 56, 256
    ka, kb, kx, kw, kg = jax.random.split(jax.random.key(0), 5)

    def normal(key, shape, scale=1.0):
        return (jax.random.normal(key, shape, jnp.float32) * scale).astype(dtype)

    a, b = normal(ka, (n, n)), normal(kb, (n, n))
    x, g = normal(kx, (batch, side, side, ch)), normal(kg, (batch, side, side, ch))
    w = normal(kw, (3, 3, ch, ch), 0.02)
    mm = jax.jit(jnp.matmul)
    fwd = jax.jit(_conv)
    bwd = jax.jit(lambda x, w, g: jax.vjp(lambda x: _conv(x, w), x)[1](g)[0])
    conv_flops_ = 2.0 * batch * side * side * ch * ch * 9
    what = f"conv3x3 {ch}->{ch} {side}x{side} batch {batch}"
    kernels = {
        "matmul": {
            "what": f"matmul {n}x{n}x{n}",
            "flops": 2.0 * n**3,
            "call": lambda: jax.block_until_ready(mm(a, b)),
        },
        "conv_fwd": {
            "what": f"{what} fwd",
            "flops": conv_flops_,
            "call": lambda: jax.block_until_ready(fwd(x, w)),
        },
        "conv_input_grad": {
            "what": f"{what} input-grad",
            "flops": conv_flops_,
            "call": lambda: jax.block_until_ready(bwd(x, w, g)),
        },
    }
    for kern in kernels.values():
        kern["call"]()
        kern["call"]()
    return kernels


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _rate(info: dict, times: Sequence[float]) -> dict:
    s = summary(times)
    return {
        **info,
        **s,
        "flops_per_s_median": info["flops"] / s["median_s"],
        "flops_per_s_best": info["flops"] / s["best_s"],
    }


def ceilings(dtype, quick: bool, kernels: dict | None = None) -> dict:
    """Measured ceilings (see :func:`ceiling_kernels`): median and best of repeats."""
    kernels = kernels or ceiling_kernels(dtype)
    repeats = (5 if quick else 15) if on_cpu() else (20 if quick else 50)
    out = {"dtype": jnp.dtype(dtype).name}
    for name, kern in kernels.items():
        times = time_calls(kern["call"], repeats, warmup=0)
        out[name] = _rate({"what": kern["what"], "flops": kern["flops"]}, times)
    return out


def print_ceilings(c: dict) -> None:
    rows = [
        {
            "ceiling": c[k]["what"],
            "GFLOP/s median": c[k]["flops_per_s_median"] / 1e9,
            "GFLOP/s best": c[k]["flops_per_s_best"] / 1e9,
            "ms median": c[k]["median_s"] * 1e3,
        }
        for k in ("matmul", "conv_fwd", "conv_input_grad")
    ]
    print_table(rows, title=f"Ceilings ({c['dtype']}), measured in this run")


# ----------------------------------------------------------------------------- FLOPs


def conv_flops(model, stop_at: str, height: int, width: int | None = None) -> list[dict]:
    """Per-conv forward FLOPs of ONE image through ``model`` up to ``stop_at``.

    Assumes VGG-style 3x3 'same' convs and 2x2 pools that floor odd sizes (as
    ``jaxvis.models.vgg16.max_pool_2x2`` does).
    """
    width = height if width is None else width
    stop_at = stop_at.removesuffix(":pre")
    h, w, cin, out = height, width, 3, []
    for layer in model.layers:
        if layer.kind == "pool":
            h, w = h // 2, w // 2
        elif layer.kind == "conv":
            flops = 2.0 * h * w * cin * layer.filters * 9
            out.append(
                {
                    "layer": layer.name,
                    "h": h,
                    "w": w,
                    "cin": cin,
                    "cout": layer.filters,
                    "fwd_flops": flops,
                }
            )
            cin = layer.filters
        if layer.name == stop_at:
            return out
    raise ValueError(f"{stop_at!r} is not a layer of {model.name}")


def step_flops(
    model,
    stop_at: str,
    height: int,
    width: int | None = None,
    images: int = 1,
    k: int = 1,
    hoisted: bool = False,
) -> dict:
    """Analytic FLOPs of one filter-step: forward + input-gradient of every conv.

    ``total`` is the plain convention (every conv forward, every conv's input gradient).
    ``executed`` corrects for one thing XLA does: when the objective is linear in the
    target conv's output (Lucid's pre-ReLU channel mean), the cotangent reaching that
    conv is the same every step, so its input gradient is image-independent and XLA's
    CSE computes it once per compiled block of ``k`` steps (``hoisted=True``; see
    :func:`count_convs`). Then ``executed = total - (1 - 1/k) * target_conv_fwd``.

    Args:
      images: images per unit (a parameterization with a batch dimension).
    """
    convs = conv_flops(model, stop_at, height, width)
    fwd = images * sum(c["fwd_flops"] for c in convs)
    last = images * convs[-1]["fwd_flops"]
    executed = 2.0 * fwd - ((1.0 - 1.0 / k) * last if hoisted else 0.0)
    return {
        "fwd": fwd,
        "input_grad": fwd,
        "total": 2.0 * fwd,
        "target_conv_fwd": last,
        "executed": executed,
    }


def count_convs(compiled) -> int:
    """Convolutions in the optimized HLO (XLA ``convolution`` ops or cuDNN conv calls)."""
    try:
        text = compiled.as_text()
    except Exception:
        return -1
    return len(re.findall(r" convolution\(|__cudnn\$conv", text))


def target_grad_hoisted(compiled, model, stop_at: str, k: int) -> bool | None:
    """Whether XLA computed the target conv's input gradient once per block, not per step.

    Per step there are 2 L convs (L forward, L input-gradient) for L convs up to
    ``stop_at``; hoisting leaves ``k (2 L - 1) + 1``. None if the count matches neither
    (e.g. the backend fused or split convs), in which case ``total`` is used.
    """
    n = count_convs(compiled)
    convs = len(conv_flops(model, stop_at, 32))
    if n == k * (2 * convs - 1) + 1:
        return True
    if n == k * 2 * convs:
        return False
    return None


def seen_shape(prog) -> tuple[int, int, int]:
    """(images per unit, H, W) of what the model sees in one step of ``prog``.

    Found by abstract evaluation of the parameterization and the transforms, so the FLOP
    count follows whatever padding/cropping the recipe does.
    """
    recipe = prog.ascent.recipe
    key = jax.random.key(0)
    raw = jax.eval_shape(recipe.param.init, key)
    image = jax.eval_shape(recipe.param.to_image, raw)
    if recipe.transform is not None:
        image = jax.eval_shape(recipe.transform, key, image)
    shape = image.shape
    if len(shape) == 3:
        shape = (1, *shape)
    return int(np.prod(shape[:-3])), int(shape[-3]), int(shape[-2])


def atlas_flops(model, size: int, steps: int) -> dict:
    """FLOPs of a whole-model conv atlas: every filter of every conv layer, ``steps`` each."""
    per_layer = {}
    for layer in model.conv_layers:
        per_layer[layer] = (
            model.num_filters(layer) * steps * step_flops(model, layer, size)["total"]
        )
    return {
        "per_layer": per_layer,
        "total": sum(per_layer.values()),
        "filters": sum(model.num_filters(la) for la in model.conv_layers),
    }


# ----------------------------------------------------------------------------- XLA


def xla_cost(compiled) -> dict:
    """``{"flops", "bytes_accessed"}`` from XLA's cost analysis (dict or list of dicts)."""
    try:
        cost = compiled.cost_analysis()
    except Exception as e:  # not every backend implements it
        return {"flops": None, "bytes_accessed": None, "error": str(e).splitlines()[0]}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed")}


def xla_memory(compiled) -> dict:
    """Static buffer sizes of a compiled program (bytes): arguments, outputs, temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return {}
    if m is None:
        return {}
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    out = {f.removesuffix("_size_in_bytes"): int(getattr(m, f, 0) or 0) for f in fields}
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def peak_memory() -> dict:
    """Peak memory so far: device allocator stats on accelerators, process RSS on CPU.

    Both are process-lifetime peaks (no reset), so per-case numbers are upper bounds;
    ``xla_memory`` gives the per-program estimate.
    """
    dev = jax.devices()[0]
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        import psutil

        out["rss_bytes"] = psutil.Process().memory_info().rss
    except ImportError:
        pass
    if dev.platform != "cpu":
        try:
            stats = dev.memory_stats() or {}
        except Exception:
            stats = {}
        for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit"):
            if k in stats:
                out[f"device_{k}"] = int(stats[k])
    return out


def peak_bytes(mem: dict) -> int:
    """The one peak number to print: the device's on accelerators, RSS on CPU."""
    return mem.get("device_peak_bytes_in_use", mem.get("peak_rss_bytes", 0))


# ----------------------------------------------------------------------------- engine blocks


def compile_block(prog, params, keys, units):
    """AOT-compiles ``prog.block`` for these shapes; returns (compiled, state, timings).

    The compiled executable is what gets timed and cost-analysed, so the timing and the
    XLA FLOP count are of exactly the same program.
    """
    t0 = time.perf_counter()
    state = jax.block_until_ready(prog.init(keys))
    t1 = time.perf_counter()
    lowered = prog.block.lower(params, state, keys, units, jnp.int32(0))
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    times = {"init_s": t1 - t0, "trace_lower_s": t2 - t1, "compile_s": t3 - t2}
    return compiled, state, times


def time_block(compiled, params, state, keys, units, repeats: int, warmup: int = 1):
    """Per-call seconds of ``repeats`` steady-state block calls; returns (times, state).

    The block donates its state, so each call feeds the next, as in ``Program.run``.
    """
    start = jnp.int32(0)
    box = [state]

    def call():
        box[0], values = compiled(params, box[0], keys, units, start)
        jax.block_until_ready((box[0], values))

    times = time_calls(call, repeats, warmup)
    return times, box[0]


def units_and_keys(engine, layer: str, chunk: int, seed: int = 0):
    """Units 0..chunk-1 (mod the layer's width is the caller's job) and their keys."""
    units = np.arange(chunk, dtype=np.int32)
    return jnp.asarray(units), engine.unit_keys(seed, layer, units)


# ----------------------------------------------------------------------------- output


def write_results(name: str, payload: dict) -> str:
    """Writes ``benchmarks/results/<name>-<device>-<YYYY-MM-DD>.json``; returns the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    env = payload.setdefault("environment", environment())
    path = os.path.join(RESULTS_DIR, f"{name}-{device_slug()}-{env['date']}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
        f.write("\n")
    return path


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"
    return "-" if v is None else str(v)


def print_table(
    rows: Sequence[dict], title: str | None = None, columns: Sequence[str] | None = None
) -> None:
    """Prints rows of dicts as a Markdown table (so it can be pasted into README.md)."""
    if not rows:
        return
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for raw, row in zip(rows, cells, strict=False):
        just = [str.rjust if isinstance(raw.get(c), (int, float)) else str.ljust for c in columns]
        print("| " + " | ".join(j(v, w) for j, v, w in zip(just, row, widths, strict=False)) + " |")
    sys.stdout.flush()


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, few steps and filters: about 1-2 min on a 2-core CPU",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="compute dtype of the model (and of the ceilings)",
    )
    p.add_argument(
        "--weights", default="imagenet", help="'imagenet' (embedded, offline) or 'random'"
    )
    p.add_argument("--no-save", action="store_true", help="do not write the JSON result")
    return p


def load_model(weights: str, dtype_name: str):
    import jaxvis

    return jaxvis.vgg16(None if weights == "random" else weights, dtype=DTYPES[dtype_name])


def time_block_adaptive(
    compiled,
    params,
    state,
    keys,
    units,
    *,
    target_s: float,
    min_repeats: int = 3,
    max_repeats: int = 50,
):
    """Like :func:`time_block`, with the repeat count chosen so timing takes ~target_s.

    One untimed warm-up call sets the count. Returns (times, state).
    """
    start = time.perf_counter()
    state, values = compiled(params, state, keys, units, jnp.int32(0))
    jax.block_until_ready((state, values))
    first = time.perf_counter() - start
    repeats = int(min(max_repeats, max(min_repeats, np.ceil(target_s / max(first, 1e-6)))))
    return time_block(compiled, params, state, keys, units, repeats, warmup=0)
