"""The measuring parts of benchmarks/device_check.py, each inside its time budget.

Every part times the engine's own compiled blocks (benchmarks/cases.py) against ceilings
measured in the same run (benchmarks/ceilings.py), round-robin (benchmarks/timing.py),
exactly as benchmarks/throughput.py and benchmarks/chunk_sweep.py do; what is new here is
only the planning: items in order of importance, each started only if its estimated
compile and timing fit in the part's budget (benchmarks/device_budget.py), and an
out-of-memory chunk recorded instead of crashing the run.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time

from benchmarks import ceilings, chunk_sweep, options
from benchmarks.cases import Case, prepare, result_row
from benchmarks.device_budget import PartClock
from benchmarks.flops import step_flops
from benchmarks.timing import interleaved

# Share of the conv ceiling an estimate assumes a block reaches until one is measured;
# low on purpose, so that estimated call times err long (benchmarks/README.md: 0.45-0.86
# measured on CPU).
_EFFICIENCY_GUESS = 0.25
# Margin on every estimate from a measurement: compile and call times vary between blocks.
_MARGIN = 1.25


@dataclasses.dataclass
class Run:
    """What the parts share: the settings of the mode, the models, kernels and estimates.

    Attributes:
      result_path: the JSON file the first write chose; each later part rewrites it.
      compile_per_step: measured compile seconds per unrolled step, by layer. A layer not
        yet compiled is estimated from the slowest one measured per step and conv (see
        :meth:`compile_estimate`), or from the mode's ``compile_guess_s``.
    """

    mode: dict
    preset: str
    models: dict  # {dtype name: model}
    kernels: dict = dataclasses.field(default_factory=dict)  # {dtype name: ceiling kernels}
    ceilings: dict = dataclasses.field(default_factory=dict)
    compile_per_step: dict = dataclasses.field(default_factory=dict)
    rates: dict = dataclasses.field(default_factory=dict)  # {dtype: {layer: FLOP/s}}
    result_path: str | None = None  # the JSON, once written: later parts rewrite it

    def _weight(self, layer: str) -> int:
        """Compile work of one step to ``layer``: its convs, plus two for the rest of the
        step (parameterization, transforms, optimizer); a rough proportionality."""
        model = next(iter(self.models.values()))
        return model.conv_layers.index(layer) + 1 + 2

    def compile_estimate(self, layer: str, k: int) -> float:
        """Estimated trace + compile seconds of a k-step block to ``layer``, erring long."""
        if layer in self.compile_per_step:
            return _MARGIN * self.compile_per_step[layer] * k
        per_weight = [s / self._weight(la) for la, s in self.compile_per_step.items()]
        guess = self.mode["compile_guess_s"] / self.mode["guess_k"] / self._weight("block5_conv3")
        return _MARGIN * max(per_weight, default=guess) * self._weight(layer) * k

    def call_estimate(self, dtype: str, layer: str, chunk: int, k: int) -> float:
        """Seconds of one block call: its FLOPs at the rate measured at the nearest layer
        in this dtype, or, before any, at a guessed share of the conv ceiling."""
        model = self.models[dtype]
        work = step_flops(model, layer, self.mode["size"])["total"] * chunk * k
        known = self.rates.get(dtype, {})
        if known:
            order = model.conv_layers
            near = min(known, key=lambda la: abs(order.index(la) - order.index(layer)))
            return _MARGIN * work / known[near]
        conv = self.ceilings[dtype]["conv_fwd"]["flops_per_s_median"]
        return work / (_EFFICIENCY_GUESS * conv)

    def record_rate(self, row: dict) -> None:
        """Keeps a layer's measured rate (analytic FLOP/s at the rule's chunk) for estimates."""
        self.rates.setdefault(row["dtype"], {})[row["layer"]] = row["analytic_flops_per_s"]

    def timing_estimate(self, calls: list[float]) -> float:
        """Seconds :func:`benchmarks.timing.interleaved` takes for cases of these call times."""
        per_round = sum(calls)
        rounds = min(60, max(3, self.mode["target_s"] * len(calls) / max(per_round, 1e-6)))
        return per_round * (1 + rounds) + 0.05 * rounds

    def record_compile(self, case: Case) -> None:
        """Keeps the slowest compile per step seen at the case's layer (the init program's
        compile and first call included: the estimate is of the wall time)."""
        info = case.info
        seconds = info["compile_init_s"] + info["compile_trace_lower_s"] + info["compile_compile_s"]
        known = self.compile_per_step.get(case.layer, 0.0)
        self.compile_per_step[case.layer] = max(known, seconds / case.k)


def measure_ceilings(run: Run, clock: PartClock) -> None:
    """Matmul, conv and conv-input-gradient ceilings in each dtype; never skipped, since
    every efficiency and estimate after them needs them, and they take seconds."""
    tiny = run.mode["name"] == "tiny"
    for dtype in run.models:
        kernels = ceilings.ceiling_kernels(options.DTYPES[dtype], tiny=tiny)
        run.kernels[dtype] = kernels
        run.ceilings[dtype] = ceilings.ceilings(options.DTYPES[dtype], run.mode["name"], kernels)
        ceilings.print_ceilings(run.ceilings[dtype])
    clock.done()


def program(run: Run, dtype: str, layer: str, k: int | None = None, select: bool | None = None):
    """The engine's program for ``layer`` with the mode's k (or ``k``), as an atlas runs it
    (``select``: as ``engine.program`` takes it; None is the platform's default)."""
    from jaxvis import engine, presets

    model = run.models[dtype]
    prog = engine.program(model, layer, run.mode["size"], presets.get(run.preset), select=select)
    k = k or run.mode["k"]
    return prog if k is None or k == prog.block_steps else engine.Program(prog.ascent, k)


def rule_chunk(run: Run, dtype: str, layer: str) -> int:
    """The chunk the engine picks for a whole layer here (``devices.chunk_size``)."""
    from jaxvis import devices

    model = run.models[dtype]
    stop_at = program(run, dtype, layer).ascent.stop_at
    n = model.num_filters(layer)
    return devices.chunk_size(model, stop_at, run.mode["size"], n, None)


def build(run: Run, dtype: str, prog, layer: str, chunk: int, label: str, first: bool) -> Case:
    """Compiles one block case and, if ``first``, makes its first call (where a chunk that
    does not fit in device memory fails); raises what those raise."""
    print(f"compiling {label}: {layer}, {dtype}, chunk {chunk}, k {prog.block_steps}", flush=True)
    model = run.models[dtype]
    case = prepare(model, prog, layer, run.mode["size"], chunk, label)
    case.info["dtype"] = dtype
    run.record_compile(case)
    if first:
        start = time.perf_counter()
        case.call()
        case.info["first_call_s"] = time.perf_counter() - start
    return case


def time_cases(run: Run, dtype: str, cases: list[Case]) -> list[dict]:
    """Times ``cases`` round-robin with the ceilings of ``dtype``; one result row each."""
    kernels = run.kernels[dtype]
    times, ceil = interleaved(cases, kernels, run.mode["target_s"])
    rows = []
    for case in cases:
        row = result_row(case, times[case.variant], ceil, kernels)
        row["compile_s"] = row["compile_trace_lower_s"] + row["compile_compile_s"]
        rows.append(row)
    return rows


def measure_layer(run: Run, clock: PartClock, dtype: str, layer: str):
    """One layer's row at the rule's chunk, halving the chunk after an out-of-memory.

    Returns ``(row, case)``, or ``(None, None)`` where it was skipped.
    """
    prog = program(run, dtype, layer)
    chunk = rule_chunk(run, dtype, layer)
    while chunk >= 1:
        call = run.call_estimate(dtype, layer, chunk, prog.block_steps)
        need = run.compile_estimate(layer, prog.block_steps) + call + run.timing_estimate([call])
        if not clock.allows(f"{layer} {dtype} (chunk {chunk})", need):
            return None, None
        try:  # the timing's warm-up round is the first call, where memory runs out
            case = build(run, dtype, prog, layer, chunk, f"{layer} {dtype}", first=False)
            row = time_cases(run, dtype, [case])[0]
        except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
            if not chunk_sweep.out_of_memory(e):
                clock.fail(f"{layer} {dtype} (chunk {chunk})", e)
                return None, None
            clock.note(f"{layer} {dtype}: chunk {chunk} ran out of memory; trying {chunk // 2}")
            chunk //= 2
            case = None
            gc.collect()
            continue
        row["rule_chunk"] = rule_chunk(run, dtype, layer)
        run.record_rate(row)
        return row, case
    return None, None


def measure_layers(run: Run, clock: PartClock, keep: tuple[str, str], rows: list[dict]):
    """Every (layer, dtype) of the mode in order of importance, within the budget.

    Appends each row to ``rows`` as it is measured (so a run stopped midway keeps them),
    then sorts them in network order. Returns the case of ``keep`` = (layer, dtype), or
    None: the sweeps reuse it, so their central setting is not compiled twice.
    """
    kept = None
    for layer in run.mode["layers"]:
        for dtype in run.models:
            row, case = measure_layer(run, clock, dtype, layer)
            if row is None:
                continue
            print_row(row)
            rows.append(row)
            if (layer, dtype) == keep:
                kept = case
            del case
            gc.collect()
    clock.done()
    order = run.models[next(iter(run.models))].conv_layers
    rows.sort(key=lambda r: (order.index(r["layer"]), r["dtype"]))
    return kept


def print_row(r: dict) -> None:
    print(
        f"{r['layer']} {r['dtype']} @ {r['size']} px, chunk {r['chunk']}, k {r['k']}: "
        f"{r['filter_steps_per_s']:.3g} filter-steps/s, "
        f"{r['executed_flops_per_s'] / 1e12:.3g} TFLOP/s, compile {r['compile_s']:.1f} s",
        flush=True,
    )


def nearest_first(values, centre: int) -> list[int]:
    """``values`` ordered by distance from ``centre`` in log2 (the centre first)."""
    return sorted(values, key=lambda v: (abs(math.log2(v) - math.log2(centre)), v))


def sweep(run: Run, clock: PartClock, settings: list[tuple[int, int]], reuse: Case | None):
    """Compiles (chunk, k) settings in the given order while the budget allows, then times
    all of them interleaved; a setting that does not fit in memory is noted and left out.

    Returns the rows, ascending in (chunk, k), each with the wall time of one filter and
    of a whole layer at the atlas's steps, compile included.
    """
    dtype, layer = run.mode["sweep_dtype"], run.mode["sweep_layer"]
    model = run.models[dtype]
    cases, calls, base = [], [], program(run, dtype, layer)
    for chunk, k in settings:
        label = f"chunk={chunk}, k={k}"
        call = run.call_estimate(dtype, layer, chunk, k)
        if reuse is not None and (reuse.chunk, reuse.k) == (chunk, k):
            cases.append(dataclasses.replace(reuse, variant=label))
            calls.append(call)
            continue
        need = run.compile_estimate(layer, k) + call + run.timing_estimate([*calls, call])
        if not clock.allows(label, need):
            continue
        if not chunk_sweep.fits(model, base.ascent.stop_at, run.mode["size"], chunk):
            clock.note(f"{label}: estimated activations exceed device memory")
            continue
        try:
            prog = program(run, dtype, layer, k)
            cases.append(build(run, dtype, prog, layer, chunk, label, first=True))
        except Exception as e:  # noqa: BLE001 - recorded, and the sweep goes on
            if chunk_sweep.out_of_memory(e):
                clock.note(f"{label}: out of memory")
            else:
                clock.fail(label, e)
            gc.collect()
            continue
        calls.append(call)
    try:
        rows = time_cases(run, dtype, cases) if cases else []
    except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
        clock.fail("timing " + ", ".join(c.variant for c in cases), e)
        rows = []
    for r in rows:
        rate = r["filter_steps_per_s"]
        r["one_filter_wall_s"] = r["compile_s"] + chunk_sweep.ATLAS_STEPS / rate
        r["layer_wall_s"] = (
            r["compile_s"] + model.num_filters(layer) * chunk_sweep.ATLAS_STEPS / rate
        )
    rows.sort(key=lambda r: (r["chunk"], r["k"]))
    clock.done()
    return rows


def one_channel(run: Run, clock: PartClock, reuse: Case | None) -> list[dict]:
    """The sweep layer with the target conv in full and with only the unit's channel
    (``Taps.select``; ``engine.SELECT_PLATFORMS`` turns it on by default on CPU only),
    timed interleaved at the same chunk and k. Reuses the layers part's case where it
    is the platform's default program; returns the rows, or [] if it did not fit."""
    dtype, layer = run.mode["sweep_dtype"], run.mode["sweep_layer"]
    chunk = reuse.chunk if reuse is not None else rule_chunk(run, dtype, layer)
    cases = []
    for select in (False, True):
        label = "one channel" if select else "all channels"
        prog = program(run, dtype, layer, select=select)
        if reuse is not None and program(run, dtype, layer) is prog and reuse.chunk == chunk:
            cases.append(dataclasses.replace(reuse, variant=label))
            continue
        call = run.call_estimate(dtype, layer, chunk, prog.block_steps)
        need = (
            run.compile_estimate(layer, prog.block_steps) + call + run.timing_estimate([call] * 2)
        )
        if not clock.allows(f"{layer} {dtype} {label}", need):
            clock.done()
            return []
        try:
            cases.append(build(run, dtype, prog, layer, chunk, label, first=True))
        except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
            clock.fail(f"{layer} {dtype} {label}", e)
            clock.done()
            return []
    try:
        rows = time_cases(run, dtype, cases)
    except Exception as e:  # noqa: BLE001 - recorded, and the run goes on
        clock.fail(f"{layer} {dtype} one channel vs all", e)
        rows = []
    clock.done()
    return rows
