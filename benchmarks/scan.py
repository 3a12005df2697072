"""``lax.scan`` over all steps against the engine's ``Program.run`` (blocks of k steps).

On XLA:CPU convolutions inside a while-loop body ran several times slower than in
straight-line code (benchmarks/README.md, "while-loop convolutions"); this re-measures
it, end to end, for the engine's own step.
"""

from __future__ import annotations

import time

import jax

from benchmarks.cases import units_and_keys
from benchmarks.flops import seen_shape, step_flops
from benchmarks.report import print_table
from benchmarks.timing import interleaved, summary

SCAN_COLUMNS = (
    "variant",
    "steps",
    "chunk",
    "median_s",
    "best_s",
    "first_call_s",
    "filter_steps_per_s",
    "gflop_per_s_total_convention",
)


class RunCase:
    """A whole run (init, all steps, finish) as one timed call: Program.run or the scan."""

    def __init__(self, variant: str, fn, args, steps: int, chunk: int):
        self.variant, self.fn, self.args = variant, fn, args
        self.steps, self.chunk = steps, chunk

    def call(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self.fn(*self.args))
        return time.perf_counter() - start


def scan_vs_blocks(model, layer, size, config, steps, chunk, kernels, target_s):
    """End-to-end steady-state: lax.scan over steps vs Program.run (blocks of k)."""
    from jaxvis import engine

    prog = engine.program(model, layer, size, config, steps=steps)
    units, keys = units_and_keys(layer, chunk)
    params = model.params
    scan = jax.jit(jax.vmap(prog.ascent.run_one, in_axes=(None, 0, 0)))
    cases, compile_s = [], {}
    for label, fn in (
        (f"Program.run (k={prog.block_steps})", prog.run),
        ("lax.scan (jit(vmap(run_one)))", scan),
    ):
        start = time.perf_counter()
        jax.block_until_ready(fn(params, keys, units))  # compiles
        compile_s[label] = time.perf_counter() - start
        cases.append(RunCase(label, fn, (params, keys, units), steps, chunk))
    times, _ = interleaved(cases, kernels, target_s)
    flops = step_flops(model, layer, *seen_shape(prog)[1:])["total"]
    rows = []
    for case in cases:
        s = summary(times[case.variant])
        rows.append(
            {
                "variant": case.variant,
                "steps": steps,
                "chunk": chunk,
                **s,
                "first_call_s": compile_s[case.variant],
                "filter_steps_per_s": steps * chunk / s["median_s"],
                "gflop_per_s_total_convention": flops * steps * chunk / s["median_s"] / 1e9,
            }
        )
    return rows


def print_scan_rows(rows: list[dict]) -> None:
    print_table(
        [{k: r[k] for k in SCAN_COLUMNS} for r in rows],
        title="lax.scan vs blocks, whole run, steady state",
    )
