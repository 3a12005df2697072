"""A compiled engine block as a timed case, and the result row of its timings.

The block is compiled ahead of time, and that one executable is both timed and
cost-analysed, so the seconds and XLA's FLOP count belong to the same program. Each call
is one block (k steps for a chunk of units) fed with the state it donated, as
``engine.Program.run`` drives it.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops, memory
from benchmarks.timing import median, summary


def compile_block(prog, params, keys, units):
    """AOT-compiles ``prog.block`` for these shapes; returns (compiled, state, timings)."""
    t0 = time.perf_counter()
    state = jax.block_until_ready(prog.init(keys))
    t1 = time.perf_counter()
    lowered = prog.block.lower(params, state, keys, units, jnp.int32(0))
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    times = {"init_s": t1 - t0, "trace_lower_s": t2 - t1, "compile_s": t3 - t2}
    return compiled, state, times


def units_and_keys(layer: str, chunk: int, seed: int = 0):
    """Units 0..chunk-1 (reducing them mod the layer's width is the caller's job) and
    their keys, as the engine derives them."""
    from jaxvis import keys

    units = np.arange(chunk, dtype=np.int32)
    return jnp.asarray(units), keys.unit_keys(seed, layer, units)


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
    """Compiles the block of ``prog`` for one chunk and counts its FLOPs.

    ``prog`` is an ``engine.Program`` or a stand-in with ``init``, ``block`` and
    ``block_steps`` (see benchmarks/partial_steps.py); a stand-in without ``ascent`` sees
    one ``size`` px image, and one with ``no_convs`` counts no conv FLOPs.
    """
    units, keys = units_and_keys(layer, chunk)
    units = units % model.num_filters(layer)
    compiled, state, ctimes = compile_block(prog, model.params, keys, units)
    k = prog.block_steps
    images, h, w = flops.seen_shape(prog) if hasattr(prog, "ascent") else (1, size, size)
    hoisted = flops.target_grad_hoisted(compiled, model, layer, k)
    selected = bool(getattr(getattr(prog, "ascent", None), "select", False))
    step = flops.step_flops(
        model, layer, h, w, images, k=k, hoisted=bool(hoisted), selected=selected
    )
    if getattr(prog, "no_convs", False):
        step = {key: 0.0 for key in step}
    info = {
        "seen": f"{images}x{h}x{w}",
        "flops": step,
        "target_grad_hoisted": hoisted,
        "target_conv_one_channel": selected,
        "hlo_convs": flops.count_convs(compiled),
        "xla": flops.xla_cost(compiled),
        "xla_memory": memory.xla_memory(compiled),
        **{f"compile_{key}": v for key, v in ctimes.items()},
    }
    args = [model.params, state, keys, units, jnp.int32(0)]
    return Case(variant, layer, size, chunk, k, compiled, args, info)


def _efficiency(per_call: float, times: list[float], ceil: dict, kernels: dict) -> dict:
    """Median of per-round ratios (block FLOP/s) / (ceiling FLOP/s in the same round)."""
    eff = {}
    for name, label in (("conv_fwd", "conv"), ("matmul", "matmul")):
        rates = [kernels[name]["flops"] / t for t in ceil[name]]
        eff[f"{label}_ceiling_median"] = median(rates)
        paired = zip(times, rates, strict=True)
        eff[f"eff_vs_{label}"] = median([per_call / t / r for t, r in paired])
    return eff


def _work_efficiency(per_call: float, times: list[float], ceil: dict, kernels: dict) -> float:
    """Like ``eff_vs_conv``, for the matched work (every conv in full, ``total`` FLOPs):
    how fast the block does what a full-conv implementation must do, against the same
    round's conv ceiling. Above ``eff_vs_conv`` where the block skips work."""
    rates = [kernels["conv_fwd"]["flops"] / t for t in ceil["conv_fwd"]]
    return median([per_call / t / r for t, r in zip(times, rates, strict=True)])


def result_row(case: Case, times: list[float], ceil: dict, kernels: dict) -> dict:
    """Rates, FLOP/s, efficiencies and memory of one case's timed calls."""
    s = summary(times)
    work = case.chunk * case.k
    step = case.info["flops"]
    per_call = step["executed"] * work
    xla_flops = case.info["xla"]["flops"]
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
        "analytic_flops_per_filter_step": step["total"],
        "executed_flops_per_filter_step": step["executed"],
        "analytic_flops_per_s": step["total"] * work / s["median_s"],
        "executed_flops_per_s": per_call / s["median_s"],
        "executed_flops_per_s_best": per_call / s["best_s"],
        "xla_flops_per_s": xla_flops / s["median_s"] if xla_flops else None,
        "xla_over_executed": xla_flops / per_call if xla_flops and per_call else None,
        **_efficiency(per_call, times, ceil, kernels),
        "work_eff_vs_conv": _work_efficiency(step["total"] * work, times, ceil, kernels),
        **case.info,
        "process_memory": memory.peak_memory(),
        "load_average": list(os.getloadavg()),
    }
