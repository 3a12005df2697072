"""Projection of a full VGG16 conv atlas (every filter of the 13 conv layers, 224 px,
512 steps) on this device, from the per-layer rates one throughput run measured.

Only a few layers are timed, so each layer borrows the rate of the nearest measured one;
three estimates bracket the answer because absolute rates on a shared machine drift.
"""

from __future__ import annotations

from benchmarks.flops import atlas_flops, step_flops
from benchmarks.report import print_table

ATLAS_SIZE, ATLAS_STEPS = 224, 512


def _nearest(conv_layers: list[str], rows: list[dict], layer: str) -> dict:
    """The measured row closest to ``layer`` in network order (largest size on ties)."""
    index = conv_layers.index(layer)

    def distance(r):
        return (
            abs(conv_layers.index(r["layer"]) - index),
            -r["size"],
            -conv_layers.index(r["layer"]),
        )

    return min(rows, key=distance)


def _layer_row(model, rows: list[dict], layer: str, idle_conv_ceiling: float) -> dict:
    """The three estimates, in seconds, for one layer (see :func:`project_atlas`)."""
    filters = model.num_filters(layer)
    src = _nearest(model.conv_layers, rows, layer)
    hoisted = bool(src["target_grad_hoisted"])
    selected = bool(src.get("target_conv_one_channel"))  # as the measured program ran
    executed = step_flops(model, layer, ATLAS_SIZE, k=src["k"], hoisted=hoisted, selected=selected)[
        "executed"
    ]
    layer_flops = filters * ATLAS_STEPS * executed
    at_224 = [r for r in rows if r["layer"] == layer and r["size"] == ATLAS_SIZE]
    measured = filters * ATLAS_STEPS / at_224[0]["filter_steps_per_s"] if at_224 else None
    return {
        "layer": layer,
        "filters": filters,
        "GFLOP/filter-step@224": step_flops(model, layer, ATLAS_SIZE)["total"] / 1e9,
        "rate from": f"{src['layer']}@{src['size']}",
        "exec GFLOP/s used": src["executed_flops_per_s"] / 1e9,
        "by_flops_s": layer_flops / src["executed_flops_per_s"],
        "measured_s": measured,
        "idle_s": layer_flops / (src["eff_vs_conv"] * idle_conv_ceiling),
    }


def project_atlas(model, rows: list[dict], idle_conv_ceiling: float) -> dict:
    """Projected wall time of the full conv atlas from the measured rows of one variant.

    Projections per layer: (a) by FLOPs: the achieved FLOP/s of the nearest measured
    layer (at its largest measured size) applied to the layer's 224 px FLOPs; (b) measured
    at 224 px: filters x steps / filter-steps/s, where that layer was timed at 224 px;
    (c) idle-machine estimate: as (a) but at ``eff_vs_conv x idle_conv_ceiling`` (the
    best conv-ceiling median seen in the run), since on a shared machine the paired
    efficiency is steadier than the absolute rate.
    """
    out, total_flops, total_best, total_idle = [], 0.0, 0.0, 0.0
    for layer in model.conv_layers:
        r = _layer_row(model, rows, layer, idle_conv_ceiling)
        by_flops, measured, idle = r.pop("by_flops_s"), r.pop("measured_s"), r.pop("idle_s")
        total_flops += by_flops
        total_best += measured if measured is not None else by_flops
        total_idle += idle
        r["hours (by FLOPs)"] = by_flops / 3600
        r["hours (measured @224)"] = None if measured is None else measured / 3600
        r["hours (idle est.)"] = idle / 3600
        out.append(r)
    atlas = atlas_flops(model, ATLAS_SIZE, ATLAS_STEPS)
    return {
        "rows": out,
        "total_hours_by_flops": total_flops / 3600,
        "total_hours_best": total_best / 3600,
        "total_hours_idle_estimate": total_idle / 3600,
        "idle_conv_ceiling": idle_conv_ceiling,
        "atlas_pflop": atlas["total"] / 1e15,
        "filters": atlas["filters"],
        "size": ATLAS_SIZE,
        "steps": ATLAS_STEPS,
    }


def print_projection(projection: dict) -> None:
    print_table(
        projection["rows"],
        title=(
            f"Projection: full VGG16 conv atlas, {projection['filters']} filters, "
            f"{ATLAS_SIZE} px, {ATLAS_STEPS} steps = {projection['atlas_pflop']:.1f} PFLOP"
        ),
    )
    print(
        f"total: {projection['total_hours_by_flops']:.1f} h by FLOPs; "
        f"{projection['total_hours_best']:.1f} h using 224 px measurements where made; "
        f"{projection['total_hours_idle_estimate']:.1f} h idle-machine estimate (paired "
        f"efficiency x best conv ceiling seen, "
        f"{projection['idle_conv_ceiling'] / 1e9:.0f} GFLOP/s)"
    )
