"""Objective curves as small PNG files, drawn by matplotlib at build time.

matplotlib (the ``jaxvis[site]`` extra) draws real axes, ticks and labels; its Agg
renderer draws the same file for the same curve in any process, so a pool changes
nothing. One figure is made per process and reused. Only the y axis and the curve change
between the units of a layer, so the rest is drawn once and its pixels restored for each
unit (blitting). Still, the curves are most of a cold build: 5.5 s of 6.2 s for a
512-unit layer on the idle 2-core VM, about 14 ms a curve on one core
(benchmarks/site.py). So large layers are drawn by a pool of processes, and a rebuild
draws only the curves that changed (jaxvis/site/files.py).

The axes span fixed fractions of the picture (:data:`AXES_BOX`) and the x axis runs
exactly from step 1 to the last, so the page's snapshot player can put a marker at a
given step over the picture (jaxvis/site/script.py).
"""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import os

import numpy as np
from PIL import Image

from jaxvis.errors import JaxvisError

WIDTH, HEIGHT, DPI = 400, 220, 100  # px, px, dots per inch
AXES_BOX = (0.17, 0.2, 0.97, 0.95)  # left, bottom, right, top, as figure fractions
LINE_COLOR = "#1f5fa8"
STYLE = "curve-1"  # part of each curve file's key: change it when the drawing changes
BATCH = 32  # curves per task handed to a worker
POOL_MIN = 128  # fewer curves are drawn in this process: a pool would cost more
PER_WORKER = 64  # curves per worker at least
_FIGURE = None  # this process's (figure, axes, line, final-value marker)
_BACKGROUND = None  # (steps, the pixels of everything that does not change with a unit)


def check_available() -> None:
    """A one-line JaxvisError, before anything is written, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise JaxvisError(
            "the site's objective plots need matplotlib; install it with "
            "pip install 'jaxvis[site]', or build with plots=False"
        ) from None


def curve_png(history: np.ndarray) -> bytes:
    """The objective over the steps as a PNG.

    Args:
      history: float [steps], the objective at each step (before its update).

    Returns:
      PNG bytes, ``WIDTH`` x ``HEIGHT`` px: step on x (1 to steps), objective
      on y, the last value marked. Non-finite values leave gaps.
    """
    fig, ax, line, last = _figure()
    steps = np.arange(1, len(history) + 1)
    values = np.where(np.isfinite(history), history, np.nan).astype(np.float64)
    line.set_data(steps, values)
    finite = np.flatnonzero(np.isfinite(values))
    end = finite[-1] if len(finite) else None
    last.set_data([steps[end]] if end is not None else [], [values[end]] if end is not None else [])
    low, high = (np.nanmin(values), np.nanmax(values)) if len(finite) else (0.0, 1.0)
    pad = (high - low) * 0.06 or max(abs(high) * 0.06, 1e-3)
    # Blit: everything but the y axis and the curve is the same for every unit of a
    # layer (same steps), so it is drawn once and restored; that halves the cost.
    fig.canvas.restore_region(_background(len(history)))
    ax.set_ylim(low - pad, high + pad)
    for artist in (ax.yaxis, line, last):
        ax.draw_artist(artist)
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _background(steps: int):
    """The figure drawn without its y axis and curve, for ``steps`` on x (cached)."""
    global _BACKGROUND
    if _BACKGROUND is None or _BACKGROUND[0] != steps:
        fig, ax, line, last = _figure()
        ax.set_xlim(1, max(2, steps))
        hidden = (ax.yaxis, line, last)
        for artist in hidden:
            artist.set_visible(False)
        fig.canvas.draw()
        for artist in hidden:
            artist.set_visible(True)
        _BACKGROUND = steps, fig.canvas.copy_from_bbox(fig.bbox)
    return _BACKGROUND[1]


def _figure():
    global _FIGURE
    if _FIGURE is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
        FigureCanvasAgg(fig)
        left, bottom, right, top = AXES_BOX
        ax = fig.add_axes((left, bottom, right - left, top - bottom))
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel("objective", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.grid(alpha=0.3)
        (line,) = ax.plot([], [], color=LINE_COLOR, linewidth=1.2)
        (last,) = ax.plot([], [], "o", color="#c0392b", markersize=4, clip_on=False)
        _FIGURE = fig, ax, line, last
    return _FIGURE


def _batch(histories: np.ndarray) -> list[bytes]:
    return [curve_png(h) for h in histories]


def curve_pngs(histories: np.ndarray, workers: int | None = None) -> list[bytes]:
    """:func:`curve_png` of each row of float [n, steps], in order.

    Args:
      histories: float [n, steps].
      workers: processes to draw with (default: the CPUs this process may use). Each
        costs a process start and a matplotlib import, so a pool is used only for
        :data:`POOL_MIN` curves or more, with at most one worker per :data:`PER_WORKER`.
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    workers = min(workers, len(histories) // PER_WORKER)
    if workers <= 1 or len(histories) < POOL_MIN:
        return [curve_png(h) for h in histories]
    batches = [histories[i : i + BATCH] for i in range(0, len(histories), BATCH)]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_context()) as pool:
        return [png for pngs in pool.map(_batch, batches) for png in pngs]


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (workers fork from a process that has imported
    matplotlib once), else spawn; never a bare fork of the builder, which holds an open
    HDF5 file and may have threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "matplotlib.backends.backend_agg"])
    return context
