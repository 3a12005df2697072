"""What benchmarks/device_check.py derives from its rows and prints: the verdicts on the
chunk rule and k, the compile times, and the short table it prints last.

The device tool returns the end of a command's output, so the whole result has to fit in
one small table at the very end, one row per fact; the JSON keeps everything else.
"""

from __future__ import annotations

from benchmarks.report import print_table

DTYPES = ("float32", "bfloat16")


def verdict(rows: list[dict], key: str, chosen: int) -> dict:
    """The best measured setting and the chosen one's rate relative to it."""
    if not rows:
        return {"best": None, "chosen_over_best": None}
    best = max(rows, key=lambda r: r["filter_steps_per_s"])
    mine = next((r for r in rows if r[key] == chosen), None)
    ratio = mine["filter_steps_per_s"] / best["filter_steps_per_s"] if mine else None
    return {"best": best[key], "chosen_over_best": ratio}


def compile_times(payload: dict) -> dict:
    """Trace + lower + backend compile seconds of every block compiled, by part."""
    layers = {f"{r['layer']} {r['dtype']}": r["compile_s"] for r in payload.get("layers", [])}
    out = {"layers": layers}
    for part, key in (("chunk_sweep", "chunk"), ("block_steps", "k")):
        rows = (payload.get(part) or {}).get("rows", [])
        out[part] = {f"{key}={r[key]}": r["compile_s"] for r in rows}
    return out


def _tflops(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e12:.3g}"


def _ceiling_rows(payload: dict) -> list[dict]:
    ceil = payload.get("ceilings") or {}

    def cell(dtype, *names):
        c = ceil.get(dtype)
        if not c:
            return "-"
        return " / ".join(_tflops(c[n]["flops_per_s_median"]) for n in names)

    what = next((c["matmul"]["what"] for c in ceil.values() if c), "matmul")
    conv = next((c["conv_fwd"]["what"].removesuffix(" fwd") for c in ceil.values() if c), "conv")
    return [
        {"what": f"{what}, TFLOP/s", **{d: cell(d, "matmul") for d in DTYPES}},
        {
            "what": f"{conv}, fwd / input-grad TFLOP/s",
            **{d: cell(d, "conv_fwd", "conv_input_grad") for d in DTYPES},
        },
    ]


def _layer_cell(row: dict | None) -> str:
    if row is None:
        return "not measured"
    rate, tflops = row["filter_steps_per_s"], _tflops(row["executed_flops_per_s"])
    return f"{rate:.3g} ({tflops}), chunk {row['chunk']}, k {row['k']}, {row['compile_s']:.0f} s"


def _layer_rows(payload: dict) -> list[dict]:
    rows = payload.get("layers") or []
    by = {(r["layer"], r["dtype"]): r for r in rows}
    size = payload["size"]
    label = "@ {size} px: filter-steps/s (TFLOP/s), chunk, k, compile"
    out = [
        {
            "what": f"{layer} {label.format(size=size)}",
            **{d: _layer_cell(by.get((layer, d))) for d in DTYPES},
        }
        for layer in dict.fromkeys(r["layer"] for r in rows)  # network order, as measured
    ]
    for layer in payload.get("layer_set", []):
        if all((layer, d) not in by for d in DTYPES):
            out.append({"what": f"{layer} @ {size} px", **{d: "not measured" for d in DTYPES}})
    return out


def _sweep_row(payload: dict, part: str, key: str, chosen_key: str, label: str) -> dict:
    s = payload.get(part)
    if not s or not s["rows"]:
        cell = "not run" if not s else "nothing fitted the budget"
    else:
        measured = ", ".join(str(r[key]) for r in s["rows"])
        ratio = s["chosen_over_best"]
        ratio = "-" if ratio is None else f"{ratio:.2f}"
        cell = f"{s[chosen_key]} / best {s['best']} (rate ratio {ratio}; measured {measured})"
    dtype = s["dtype"] if s else DTYPES[0]
    return {"what": label, **{d: cell if d == dtype else "-" for d in DTYPES}}


def _memory_row(payload: dict) -> dict:
    mem = payload.get("peak_memory") or {}
    if "device_peak_bytes_in_use" in mem:
        limit = mem.get("device_bytes_limit")
        cell = f"{mem['device_peak_bytes_in_use'] / 2**30:.1f} GiB"
        cell += f" of {limit / 2**30:.1f} GiB" if limit else ""
        label = "peak device memory (peak_bytes_in_use)"
    else:
        cell = f"{mem.get('peak_rss_bytes', 0) / 2**30:.2f} GiB"
        label = "peak process memory (RSS; no device stats)"
    return {"what": label, DTYPES[0]: cell, DTYPES[1]: "(one process, both dtypes)"}


def _one_channel_row(payload: dict) -> dict:
    part = payload.get("one_channel") or {}
    ratio = part.get("one_over_all")
    cell = "not measured" if ratio is None else f"{ratio:.3g}x the full conv's filter-steps/s"
    what = f"one channel of the target conv ({part.get('layer', '-')})"
    return {"what": what, DTYPES[0]: cell, DTYPES[1]: "-"}


def _projection_row(payload: dict) -> dict:
    proj = payload.get("projection") or {}

    def cell(dtype):
        p = proj.get(dtype)
        if not p:
            return "no layer measured"
        return (
            f"{p['total_hours_best'] * 60:.3g} min (+{p['compile_hours'] * 60:.2g} min "
            f"compile; from {len(p['layers_measured'])} of {len(payload['layer_set'])} layers)"
        )

    p = next((p for p in proj.values() if p), None)
    what = "projected full VGG16 conv atlas"
    if p:
        what += f" ({p['filters']} filters, {p['size']} px, {p['steps']} steps)"
    return {"what": what, **{d: cell(d) for d in DTYPES}}


def summary_rows(payload: dict) -> list[dict]:
    """The rows of the summary table: ceilings, layers, chunk, k, memory, projection, time."""
    rows = _ceiling_rows(payload) + _layer_rows(payload)
    rows.append(_sweep_row(payload, "chunk_sweep", "chunk", "rule_chunk", "chunk: rule's pick"))
    rows.append(_sweep_row(payload, "block_steps", "k", "default_k", "k: engine's default"))
    rows.append(_one_channel_row(payload))
    rows.append(_memory_row(payload))
    rows.append(_projection_row(payload))
    time = f"{payload.get('elapsed_s', 0):.0f} s of {payload['budget_s']:.0f} s"
    stopped = payload.get("stopped")
    left_out = f"{len(payload.get('skipped', []))} items skipped, "
    left_out += f"{len(payload.get('failed', []))} failed" + (f"; {stopped}" if stopped else "")
    rows.append({"what": "time used", DTYPES[0]: time, DTYPES[1]: left_out})
    return rows


def print_layers(rows: list[dict]) -> None:
    """The layers part as a Markdown table, for benchmarks/README.md."""
    print_table(
        [
            {
                "layer": r["layer"],
                "dtype": r["dtype"],
                "px": r["size"],
                "chunk": r["chunk"],
                "k": r["k"],
                "filter-steps/s": r["filter_steps_per_s"],
                "exec TFLOP/s": r["executed_flops_per_s"] / 1e12,
                "XLA TFLOP/s": (r["xla_flops_per_s"] or 0) / 1e12,
                "eff conv": r["eff_vs_conv"],
                "eff mm": r["eff_vs_matmul"],
                "compile s": r["compile_s"],
                "XLA mem GiB": r["xla_memory"].get("peak_estimate", 0) / 2**30,
                "calls": r["timed_calls"],
            }
            for r in rows
        ],
        title="Layers (median of timed calls)",
    )


def print_summary(payload: dict, path: str) -> None:
    """Prints the summary table; nothing is printed after it."""
    env = payload.get("environment", {})
    title = (
        f"Summary: {NAME_OF.get(payload['mode'], payload['mode'])} on {env.get('device_kind')} "
        f"({env.get('platform')}), jax {env.get('jax')}, {env.get('date')}; JSON {path}"
    )
    print_table(summary_rows(payload), title=title, columns=("what", *DTYPES))


NAME_OF = {"tiny": "device_check --tiny (toy sizes: numbers mean nothing)", "full": "device_check"}
