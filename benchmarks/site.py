"""How long ``build_site`` takes, how big the site is, and how fast it opens in Chromium.

The atlas is synthetic: random pictures and random-walk curves written through
``jaxvis.atlas.AtlasWriter`` in chunks of 64, as a run would write them (no optimizer
runs). Random pixels are the worst case for JPEG, so the sizes are upper bounds.

Measured, in order: a cold build (plots on, then again without plots into another
folder, to show what the curves cost); a rebuild with nothing changed; a rebuild after
the atlas grows by one chunk of 8 units; the site's size on disk; then, in a fresh
headless Chromium, the layer page's load (load event, and every thumbnail in view
decoded), opening a unit's permalink (full picture and plot loaded), and the index.

    python -m benchmarks.site            # one layer of 512 units at 224 px, 512 steps
    python -m benchmarks.site --quick    # 128 units at 224 px
    python -m benchmarks.site --tiny     # 70 units at 32 px with snapshots (runs? seconds)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks import env, options, report
from jaxvis.atlas import AtlasWriter
from jaxvis.chunk import Chunk
from jaxvis.site import build_site
from jaxvis.site.browser import Browser, find_chromium

LAYER = "synthetic"  # one layer, with 8 filters more than the units first written
GROWTH = 8  # units added before the last rebuild
CHUNK = 64  # units per chunk written, as generate_atlas might on a GPU
# (units, size, steps, snapshot_every) per mode.
SETTINGS = {"tiny": (70, 32, 8, 2), "quick": (128, 224, 512, 0), "full": (512, 224, 512, 0)}
PROVENANCE = {
    "model": "vgg16",
    "weights": {"source": "random", "sha256": "", "preprocessing": "torchvision",
                "has_head": False, "trained": False, "path": "", "seed": 0},
    "config": {"preset": "synthetic", "note": "benchmarks/site.py: random pictures"},
    "device_kind": "cpu:benchmark x1",
}  # fmt: skip


def _chunk(rng, units, size, steps, every) -> Chunk:
    n = len(units)
    history = np.cumsum(rng.normal(size=(n, steps)), axis=1).astype(np.float32)
    extra = {}
    if every and "snapshots" in Chunk.__dataclass_fields__:  # the snapshots contract
        frames = rng.integers(0, 256, (n, steps // every, size, size, 3), dtype=np.uint8)
        extra = {"snapshots": frames, "snapshot_every": every}
    return Chunk(
        layer=LAYER, filters=np.asarray(units),
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        objective=history[:, -1], history=history, failed={}, seconds=1.0,
        compile_seconds=0.0, **extra,
    )  # fmt: skip


def synthesize(path: str, units: range, shape: tuple[int, int, int, int], seed=0) -> None:
    """Appends ``units`` of :data:`LAYER` to the atlas at ``path``, a chunk at a time.

    Args:
      shape: ``(filters in the layer, size, steps, snapshot_every)``.
    """
    layer_filters, size, steps, every = shape
    rng = np.random.default_rng(seed)
    with AtlasWriter(path, provenance=PROVENANCE) as writer:
        for start in range(0, len(units), CHUNK):
            chunk = _chunk(rng, units[start : start + CHUNK], size, steps, every)
            writer.write_chunk(LAYER, chunk, num_filters_in_layer=layer_filters)


def disk_bytes(folder: str) -> tuple[int, int]:
    """(bytes, files) under ``folder``."""
    total = count = 0
    for root, _, files in os.walk(folder):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
            count += 1
    return total, count


def timed_build(atlas: str, out: str, **kwargs) -> dict:
    summary = build_site(atlas, out, **kwargs)
    return {"seconds": summary.seconds, "written": len(summary.written), "kept": len(summary.kept)}


def builds(atlas: str, work: str, units: int, shape: tuple[int, int, int, int]) -> list[dict]:
    """The four builds, as table rows; the atlas grows by :data:`GROWTH` before the last."""
    site = os.path.join(work, "site")
    rows = [{"build": "cold", **timed_build(atlas, site)}]
    rows.append({"build": "cold, no plots", **timed_build(atlas, site + "-noplots", plots=False)})
    rows.append({"build": "rebuild, unchanged", **timed_build(atlas, site)})
    synthesize(atlas, range(units, units + GROWTH), shape, seed=1)
    rows.append({"build": f"rebuild, +{GROWTH} units", **timed_build(atlas, site)})
    return rows


def page_loads(site: str) -> list[dict]:
    """Seconds to open the layer page, a unit's permalink and the index, in a fresh
    headless Chromium (1280 x 900); and how many files each asked for."""
    here = "file://" + os.path.abspath(site)
    rows = []
    with Browser(width=1280, height=900, timeout=120) as browser:
        for page, what in (
            (f"{LAYER}.html", "layer page: thumbnails on screen loaded"),
            (f"{LAYER}.html#unit-17", "unit permalink: full picture and plot"),
            ("index.html", "index: provenance and strip"),
        ):
            browser.goto("about:blank")
            browser.requests.clear()
            start = time.perf_counter()
            browser.goto(f"{here}/{page}")
            load = time.perf_counter() - start
            browser.wait_for_images(in_view=True, timeout=120)
            ready = time.perf_counter() - start
            rows.append({"page": what, "load_event_s": load, "ready_s": ready,
                         "requests": len(browser.requests)})  # fmt: skip
        if browser.errors:
            raise RuntimeError(f"the site logged errors: {browser.errors[:3]}")
    return rows


def measure(work: str, mode: str) -> dict:
    """Synthesizes the atlas, builds its site four ways, opens it; returns the payload."""
    units, size, steps, every = SETTINGS[mode]
    atlas = os.path.join(work, "atlas.h5")
    start = time.perf_counter()
    shape = (units + GROWTH, size, steps, every)
    synthesize(atlas, range(units), shape)
    made = time.perf_counter() - start
    mib = os.path.getsize(atlas) / 2**20
    print(f"synthetic atlas: {units} units, {size} px, {steps} steps, {mib:.1f} MiB, {made:.1f} s")
    rows = builds(atlas, work, units, shape)
    site_bytes, files = disk_bytes(os.path.join(work, "site"))
    report.print_table(rows, f"build_site: {units} units at {size} px (+{GROWTH} for the rebuild)")
    print(f"\nsite on disk: {site_bytes / 2**20:.1f} MiB in {files} files (atlas {mib:.1f} MiB)")
    loads = page_loads(os.path.join(work, "site")) if find_chromium() else []
    if loads:
        report.print_table(loads, "headless Chromium, from file://")
    else:
        print("\nWARNING: no Chromium found; page loads NOT measured")
    return {
        "mode": mode, "units": units, "size": size, "steps": steps, "snapshot_every": every,
        "atlas_bytes": os.path.getsize(atlas), "site_bytes": site_bytes, "site_files": files,
        "builds": rows, "page_loads": loads,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }  # fmt: skip


def main() -> None:
    args = options.base_parser(__doc__.splitlines()[0]).parse_args()
    print(env.describe_device())
    work = tempfile.mkdtemp(prefix="jaxvis-site-bench-")
    try:
        payload = measure(work, options.mode(args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_save:
        name = options.result_name("site", args)
        print(f"\nwrote {report.write_results(name, payload, args.out_dir)}")


if __name__ == "__main__":
    main()
