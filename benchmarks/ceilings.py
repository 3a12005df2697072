"""Ceilings measured in the same run: a matmul, a conv and the conv's input gradient.

An efficiency is only meaningful against what the same device, in the same dtype and
under the same load, reaches on plain kernels; so every benchmark measures these itself
instead of quoting a peak. The conv and its input gradient are the two kinds of conv an
ascent step runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import env
from benchmarks.report import print_table
from benchmarks.timing import summary, time_calls

NAMES = ("matmul", "conv_fwd", "conv_input_grad")


def kernel_sizes(tiny: bool = False) -> dict:
    """Problem sizes: matmul side ``n``; conv ``batch``, map ``side`` and channels ``ch``.

    ``tiny`` sizes only check that the code runs; on CPU a 2048 matmul and a 56x56
    256->256 conv keep the cores busy; accelerators need larger problems.
    """
    if tiny:
        return {"n": 256, "batch": 1, "side": 16, "ch": 32}
    if env.on_cpu():
        return {"n": 2048, "batch": 2, "side": 56, "ch": 256}
    return {"n": 4096, "batch": 32, "side": 56, "ch": 256}


def repeats(mode: str) -> int:
    """Timed calls per ceiling for a benchmark mode (``tiny``, ``quick`` or ``full``)."""
    if mode == "tiny":
        return 1
    quick = mode == "quick"
    return (5 if quick else 15) if env.on_cpu() else (20 if quick else 50)


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def ceiling_kernels(dtype, tiny: bool = False) -> dict:
    """Jitted, warmed-up ceiling kernels of the default device in ``dtype``.

    Returns:
      ``{name: {"what", "flops", "call"}}`` for :data:`NAMES`; ``call()`` runs once and
      waits for the result. A matmul n x n @ n x n is 2 n^3 FLOPs; a 3x3 conv is
      2 * batch * side^2 * ch^2 * 9, forward or input gradient alike.
    """
    s = kernel_sizes(tiny)
    n, batch, side, ch = s["n"], s["batch"], s["side"], s["ch"]
    ka, kb, kx, kw, kg = jax.random.split(jax.random.key(0), 5)

    def normal(key, shape, scale=1.0):
        return (jax.random.normal(key, shape, jnp.float32) * scale).astype(dtype)

    a, b = normal(ka, (n, n)), normal(kb, (n, n))
    x, g = normal(kx, (batch, side, side, ch)), normal(kg, (batch, side, side, ch))
    w = normal(kw, (3, 3, ch, ch), 0.02)
    mm = jax.jit(jnp.matmul)
    fwd = jax.jit(_conv)
    bwd = jax.jit(lambda x, w, g: jax.vjp(lambda x: _conv(x, w), x)[1](g)[0])
    conv_flops = 2.0 * batch * side * side * ch * ch * 9
    what = f"conv3x3 {ch}->{ch} {side}x{side} batch {batch}"
    kernels = {
        "matmul": {
            "what": f"matmul {n}x{n}x{n}",
            "flops": 2.0 * n**3,
            "call": lambda: jax.block_until_ready(mm(a, b)),
        },
        "conv_fwd": {
            "what": f"{what} fwd",
            "flops": conv_flops,
            "call": lambda: jax.block_until_ready(fwd(x, w)),
        },
        "conv_input_grad": {
            "what": f"{what} input-grad",
            "flops": conv_flops,
            "call": lambda: jax.block_until_ready(bwd(x, w, g)),
        },
    }
    for kern in kernels.values():  # compile, then one warm call
        kern["call"]()
        kern["call"]()
    return kernels


def _rate(info: dict, times: list[float]) -> dict:
    s = summary(times)
    return {
        **info,
        **s,
        "flops_per_s_median": info["flops"] / s["median_s"],
        "flops_per_s_best": info["flops"] / s["best_s"],
    }


def ceilings(dtype, mode: str, kernels: dict) -> dict:
    """Measured ceilings of ``kernels``: median and best of :func:`repeats` calls each."""
    out = {"dtype": jnp.dtype(dtype).name}
    for name, kern in kernels.items():
        times = time_calls(kern["call"], repeats(mode), warmup=0)
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
        for k in NAMES
    ]
    print_table(rows, title=f"Ceilings ({c['dtype']}), measured in this run")
