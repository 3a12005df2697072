"""``build_site``: an atlas as a static web site that opens from ``file://``.

No server, no network, nothing from a CDN: pages, sprite sheets, plots and one script
and stylesheet, all in the output folder (layout: jaxvis/site/layout.py). Everything
is checked before the folder is touched: the atlas (jaxvis/atlas/validate.py), the
options, matplotlib when plots are wanted, and the folder itself (jaxvis/site/files.py).

Cost is linear in the atlas: each block of 64 units is read once and encoded into two
sheets, and each unit gets one plot (and one snapshot strip). A rebuild re-encodes only
the files whose inputs changed, so after an atlas grows only the last block of a layer
and the new units cost anything (measured by benchmarks/site.py).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from jaxvis.atlas.reader import open_atlas
from jaxvis.errors import JaxvisError, choices
from jaxvis.site import layout, pages, plots, sprites
from jaxvis.site.files import SiteFiles, digest
from jaxvis.site.layout import SiteOptions
from jaxvis.site.names import layer_stems
from jaxvis.site.script import JS
from jaxvis.site.source import LayerData, layer_data
from jaxvis.site.style import CSS

# Part of every picture's key: bump it when the sheets' layout or encoding changes.
SPRITES_VERSION = "sprites-1"


@dataclasses.dataclass(frozen=True)
class SiteSummary:
    """What a build did: ``index`` is the page to open; file lists are site-relative."""

    index: str
    layers: int
    units: int
    written: list[str]
    kept: list[str]
    removed: list[str]
    seconds: float


def build_site(
    atlas_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: SiteOptions | None = None,
    **kwargs,
) -> SiteSummary:
    """Writes the site of the atlas at ``atlas_path`` into ``out_dir``.

    Args:
      atlas_path: the ``.h5`` atlas.
      out_dir: a new or empty folder, or one that an earlier build wrote (then only
        what changed is rewritten); nothing is written outside it.
      options: a :class:`SiteOptions`; or give its fields as keyword arguments.

    Returns:
      A :class:`SiteSummary`; open ``summary.index`` in a browser.
    """
    start = time.perf_counter()
    options = _options(options, kwargs)
    if options.plots:
        plots.check_available()
    with open_atlas(atlas_path) as atlas:
        stems = layer_stems(atlas.layers)
        layers = [layer_data(atlas[name], stems[name]) for name in atlas.layers]
        files = SiteFiles(out_dir)
        files.write("assets/site.css", CSS)
        files.write("assets/site.js", JS)
        for layer in layers:
            _write_layer(files, layer, options)
        files.write("index.html", pages.index_page(atlas.provenance, layers, options))
        files.finish()
    return SiteSummary(
        index=os.path.join(files.root, "index.html"),
        layers=len(layers),
        units=sum(len(la.filters) + len(la.failed) for la in layers),
        written=files.written,
        kept=files.kept,
        removed=files.removed,
        seconds=time.perf_counter() - start,
    )


def _options(options: SiteOptions | None, kwargs: dict) -> SiteOptions:
    fields = [f.name for f in dataclasses.fields(SiteOptions)]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown or (options is not None and kwargs):
        raise JaxvisError(
            f"unknown site options {unknown}; valid: {choices(fields)}"
            if unknown
            else "give either a SiteOptions or its fields as keywords, not both"
        )
    return options or SiteOptions(**kwargs)


def _write_layer(files: SiteFiles, layer: LayerData, opts: SiteOptions) -> None:
    for block in range(-(-len(layer.filters) // sprites.BLOCK)):
        _write_sheets(files, layer, block, opts)
    if opts.plots and layer.steps:
        _write_plots(files, layer, opts)
    for row in range(len(layer.filters)) if layer.num_snapshots else ():
        _write_snapshots(files, layer, row, opts)
    files.write(f"{layer.stem}.html", pages.layer_page(layer, opts))


def _write_sheets(files: SiteFiles, layer: LayerData, block: int, opts: SiteOptions) -> None:
    """Block ``block``'s thumbnail sheet and full-size sheet, unless they are current."""
    rows = slice(block * sprites.BLOCK, (block + 1) * sprites.BLOCK)
    images = sprites.per_unit(np.asarray(layer.images[rows]))
    key = digest(SPRITES_VERSION, opts.image_format, str(opts.quality), images.tobytes())
    thumbs_rel = layout.path(layer.stem, opts.ext, "thumbs", k=block)
    full_rel = layout.path(layer.stem, opts.ext, "full", k=block)
    side = sprites.thumb_size(layer.image_size, opts.thumb_size)
    thumbs_key = f"{key}-{side}"
    if not files.fresh(thumbs_rel, thumbs_key):
        small = sprites.sheet(sprites.thumbnails(images[:, 0], side), sprites.COLUMNS)
        files.write(thumbs_rel, sprites.encode(small, opts.image_format, opts.quality), thumbs_key)
    if not files.fresh(full_rel, key):
        cells = images.reshape(-1, *images.shape[2:])
        full = sprites.sheet(cells, sprites.COLUMNS * images.shape[1])
        files.write(full_rel, sprites.encode(full, opts.image_format, opts.quality), key)


def _write_plots(files: SiteFiles, layer: LayerData, opts: SiteOptions) -> None:
    """One curve per unit; only the ones whose history changed are drawn."""
    todo = []
    for row, unit in enumerate(layer.filters.tolist()):
        rel = layout.path(layer.stem, opts.ext, "plot", unit=unit)
        key = digest(plots.STYLE, layer.history[row].tobytes())
        if not files.fresh(rel, key):
            todo.append((rel, key, row))
    if not todo:
        return
    pngs = plots.curve_pngs(layer.history[[row for _, _, row in todo]], opts.workers)
    for (rel, key, _), png in zip(todo, pngs, strict=True):
        files.write(rel, png, key)


def _write_snapshots(files: SiteFiles, layer: LayerData, row: int, opts: SiteOptions) -> None:
    """Row ``row``'s snapshots side by side in one picture, the player's frames."""
    frames = np.asarray(layer.snapshots[row])
    unit = int(layer.filters[row])
    rel = layout.path(layer.stem, opts.ext, "snapshots", unit=unit)
    key = digest(SPRITES_VERSION, opts.image_format, str(opts.quality), frames.tobytes())
    if not files.fresh(rel, key):
        strip = sprites.sheet(frames, len(frames))
        files.write(rel, sprites.encode(strip, opts.image_format, opts.quality), key)
