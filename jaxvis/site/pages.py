"""The site's HTML pages, as strings: pure functions of the atlas's data.

Every name and value from the atlas goes through :func:`jaxvis.site.names.text` (HTML)
or :func:`jaxvis.site.names.json_script` (the data the page's script reads); links and
image sources are built from safe file stems only (jaxvis/site/layout.py).
"""

from __future__ import annotations

import json
import math

import numpy as np

from jaxvis.site import layout, plots, sprites
from jaxvis.site.layout import SiteOptions
from jaxvis.site.names import json_script, text
from jaxvis.site.source import LayerData

STRIP = 8  # thumbnails per layer on the index page
STRIP_SIDE = 48  # px, each


def page(title: str, body: str, kind: str, data: dict | None = None) -> str:
    """A whole page: ``body`` (already escaped), and ``data`` for the page's script."""
    script = ""
    if data is not None:
        script = (
            f'<script id="site-data" type="application/json">{json_script(data)}</script>\n'
            '<script src="assets/site.js"></script>\n'
        )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{text(title)}</title>\n"
        '<link rel="icon" href="data:,">\n<link rel="stylesheet" href="assets/site.css">\n'
        f'</head>\n<body class="{kind}">\n{body}\n{script}</body>\n</html>\n'
    )


def number(value: float) -> str:
    """An objective as shown: 4 significant digits; ``nan``/``inf`` as such."""
    return f"{value:.4g}"


def _finite(value: float) -> float | None:
    return float(f"{value:.6g}") if math.isfinite(value) else None


def sorted_units(layer: LayerData) -> list[tuple[int, int | None]]:
    """``(unit, row)`` for every written and failed unit, by unit; row None if failed."""
    units = [(int(f), row) for row, f in enumerate(layer.filters.tolist())]
    units += [(int(f), None) for f in layer.failed]
    return sorted(units)


def _thumb_side(layer: LayerData, opts: SiteOptions) -> tuple[int, int]:
    """(side in the sheets, side shown) of the layer's thumbnails, px."""
    side = sprites.thumb_size(layer.image_size, opts.thumb_size)
    return side, side * sprites.zoom(side, opts.thumb_display) if side else opts.thumb_display


def thumb(layer: LayerData, row: int, opts: SiteOptions, label: str, shown: int = 0) -> str:
    """A window onto row ``row``'s cell of its thumbnail sheet, ``shown`` px wide (by
    default the thumbnail's own size, enlarged to ``opts.thumb_display``)."""
    side, default = _thumb_side(layer, opts)
    shown = shown or default
    block, col, r = layout.cell(row)
    src = layout.path(layer.stem, opts.ext, "thumbs", k=block)
    pixelated = " pixelated" if shown > side else ""
    return (
        f'<span class="sprite{pixelated}" style="width:{shown}px;height:{shown}px">'
        f'<img src="{src}" loading="lazy" decoding="async" alt="{text(label)}" '
        f'style="width:{shown * sprites.COLUMNS}px;left:-{col * shown}px;top:-{r * shown}px">'
        "</span>"
    )


def _unit_cell(layer: LayerData, unit: int, row: int | None, opts: SiteOptions) -> str:
    if row is None:
        message = layer.failed[unit]
        shown = _thumb_side(layer, opts)[1]
        picture = (
            f'<span class="sprite missing" style="width:{shown}px;height:{shown}px" '
            f'title="{text(message)}">failed</span>'
        )
        value, data = "failed", ' data-failed="1"'
    else:
        objective = float(layer.objective[row])
        picture = thumb(layer, row, opts, f"unit {unit}")
        value, finite = number(objective), _finite(objective)
        data = f' data-objective="{"" if finite is None else finite}"'
    return (
        f'<a class="unit" id="cell-{unit}" href="#unit-{unit}" data-unit="{unit}"{data}>'
        f'{picture}<span class="label"><b>{unit}</b> {text(value)}</span></a>'
    )


def layer_data_json(layer: LayerData, opts: SiteOptions) -> dict:
    """What the layer page's script reads: the layout and ``[unit, objective, row,
    message]`` per unit (objective None when failed or not finite)."""
    units = []
    for unit, row in sorted_units(layer):
        if row is None:
            units.append([unit, None, None, layer.failed[unit]])
        else:
            units.append([unit, _finite(float(layer.objective[row])), row, None])
    side = sprites.thumb_size(layer.image_size, opts.thumb_size)
    return {
        "layer": layer.name,
        "size": layer.image_size,
        "zoom": sprites.zoom(max(layer.image_size, 1), opts.full_display),
        "thumb": side,
        "columns": sprites.COLUMNS,
        "block": sprites.BLOCK,
        "per_unit": layer.images_per_unit,
        "steps": layer.steps,
        "snapshot_every": layer.snapshot_every,
        "snapshots": layer.num_snapshots,
        "plots": opts.plots,
        "plot_box": list(plots.AXES_BOX),
        "paths": layout.templates(layer.stem, opts.ext),
        "units": units,
    }


def layer_page(layer: LayerData, opts: SiteOptions) -> str:
    """The grid of every unit of ``layer``, with sorting, a failed-only filter and the
    unit view (filled in by jaxvis/site/script.py from the page's data)."""
    cells = "\n".join(_unit_cell(layer, u, row, opts) for u, row in sorted_units(layer))
    snapshots = (
        f", {layer.num_snapshots} snapshots (every {layer.snapshot_every} steps)"
        if layer.num_snapshots
        else ""
    )
    body = (
        '<nav><a href="index.html">&larr; all layers</a></nav>\n'
        f'<h1 id="layer-name">{text(layer.name)}</h1>\n'
        f'<p class="meta">{text(layer.objective_description or "objective not recorded")} '
        f"&middot; {len(layer.filters)} done, {len(layer.failed)} failed of "
        f"{layer.num_requested} requested ({layer.num_filters} in the layer) &middot; "
        f"{layer.image_size} px, {layer.steps} steps{text(snapshots)}</p>\n"
        '<form class="controls"><label>sort by <select id="sort">'
        '<option value="unit">filter number</option>'
        '<option value="objective">objective, highest first</option></select></label> '
        '<label><input type="checkbox" id="failed-only"> failed units only</label> '
        '<span id="shown"></span></form>\n'
        f'<div id="grid" class="grid">\n{cells}\n</div>\n'
        '<section id="unit-view" hidden></section>'
    )
    return page(f"{layer.name} · jaxvis atlas", body, "layer", layer_data_json(layer, opts))


def _layer_row(layer: LayerData, opts: SiteOptions) -> str:
    href = f"{layer.stem}.html"
    strip = "".join(
        f'<a href="{href}#unit-{unit}">{thumb(layer, row, opts, f"unit {unit}", STRIP_SIDE)}</a>'
        for unit, row in [u for u in sorted_units(layer) if u[1] is not None][:STRIP]
    )
    cells = [
        f'<a class="layer-link" href="{href}">{text(layer.name)}</a>',
        text(layer.objective_description or "-"),
        f"{len(layer.filters)}",
        f"{len(layer.failed)}",
        f"{layer.num_requested}",
        f"{layer.num_filters}",
        f"{layer.image_size or '-'}",
        f"{layer.seconds:.1f}",
        f'<span class="strip">{strip}</span>',
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _provenance(prov: dict, seconds: float) -> str:
    w, config = prov["weights"], prov["config"]
    trained = "trained" if w.get("trained", True) else "UNTRAINED (random weights)"
    rows = [
        ("model", prov["model"]),
        ("weights", f"{w.get('source', '?')}, {trained}"),
        ("weights sha256", w.get("sha256") or "-"),
        ("preprocessing", w.get("preprocessing", "?")),
        ("device", ", ".join(prov["device_kinds"]) or prov["device_kind"]),
        ("time taken", f"{seconds:.1f} s over all chunks (compile time included)"),
        ("created", f"{prov['created']} with jaxvis {prov['jaxvis_version']}"),
    ]
    rows += [(f"config {k}", _flat(v)) for k, v in sorted(config.items())]
    return "\n".join(f"<tr><th>{text(k)}</th><td>{text(v)}</td></tr>" for k, v in rows)


def _flat(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def index_page(prov: dict, layers: list[LayerData], opts: SiteOptions) -> str:
    """The atlas: its provenance, and one row per layer with a strip of thumbnails."""
    seconds = float(np.sum([la.seconds for la in layers])) if layers else 0.0
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "layer",
            "objective",
            "done",
            "failed",
            "requested",
            "in layer",
            "px",
            "seconds",
            "first units",
        )
    )
    rows = "\n".join(_layer_row(la, opts) for la in layers) or (
        '<tr><td colspan="9">no layers yet</td></tr>'
    )
    body = (
        f"<h1>jaxvis atlas: {text(prov['model'])}</h1>\n"
        f'<table class="layers">\n<tr>{head}</tr>\n{rows}\n</table>\n'
        f'<h2>How it was made</h2>\n<table class="provenance">\n{_provenance(prov, seconds)}\n'
        "</table>"
    )
    return page(f"{prov['model']} · jaxvis atlas", body, "index")
