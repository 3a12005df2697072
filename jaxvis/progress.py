"""A small progress display for atlas runs (no tqdm dependency).

On a terminal it redraws one line with ``\\r``; in a log file or pipe it writes one plain
line per update, so logs stay readable. The clock is injectable for tests.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``M:SS`` under an hour)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Per-layer and overall done/total, rate in filters per second, and ETAs.

    The layer's rate and ETA come from the time since that layer started. The overall ETA
    weighs the filters still to do by ``costs``: deep layers cost far more per filter
    than early ones, so a plain filter count would promise far too early a finish.

    Args:
      layers: ``{layer: filters to do in this run}``, in run order.
      stream: where to draw (stderr by default, so stdout stays clean for results).
      enabled: False draws nothing (``--no-progress``).
      clock: seconds from a monotonic clock; ``time.monotonic`` unless testing.
      costs: ``{layer: relative cost of one filter}`` (e.g. FLOPs); all 1 if omitted.
    """

    def __init__(
        self,
        layers: Mapping[str, int],
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        costs: Mapping[str, float] | None = None,
    ):
        self.totals = {name: int(n) for name, n in layers.items()}
        self.costs = {name: float((costs or {}).get(name, 1.0)) for name in self.totals}
        self._layer_start: float | None = None
        self.done = dict.fromkeys(self.totals, 0)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self._clock = clock
        self._start: float | None = None
        self._layer: str | None = None
        self._width = 0
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def total_done(self) -> int:
        return sum(self.done.values())

    def start_layer(self, name: str) -> None:
        """Marks ``name`` as the layer being worked on and shows it."""
        if self._start is None:
            self._start = self._clock()
        self.totals.setdefault(name, 0)
        self.done.setdefault(name, 0)
        self.costs.setdefault(name, 1.0)
        self._layer = name
        self._layer_start = self._clock()
        self._draw()

    def advance(self, layer: str, n: int = 1) -> None:
        """Counts ``n`` more filters of ``layer`` as finished (failed ones included)."""
        if self._start is None:
            self._start = self._clock()
        self.done[layer] = self.done.get(layer, 0) + int(n)
        self._layer = layer
        self._draw()

    def line(self) -> str:
        """The status text, e.g. ``block1_conv1 8/64, 2 filters/s, ETA 0:28 | total
        8/128, ETA 9:40``."""
        now = self._clock()
        parts = []
        if self._layer is not None:
            name = self._layer
            done, total = self.done[name], self.totals[name]
            elapsed = now - self._layer_start if self._layer_start is not None else 0.0
            rate = done / elapsed if elapsed > 0 else 0.0
            text = f"{name} {done}/{total}"
            if rate > 0:
                text += f", {rate:.3g} filters/s, ETA {format_duration((total - done) / rate)}"
            parts.append(text)
        elapsed = now - self._start if self._start is not None else 0.0
        done_cost = sum(self.done[n] * self.costs[n] for n in self.totals)
        left_cost = sum((self.totals[n] - self.done[n]) * self.costs[n] for n in self.totals)
        eta = format_duration(left_cost * elapsed / done_cost) if done_cost and elapsed else "--"
        parts.append(f"total {self.total_done}/{self.total}, ETA {eta}")
        return " | ".join(parts)

    def _draw(self) -> None:
        if not self.enabled:
            return
        text = self.line()
        if self._tty:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write(f"\r{text}{pad}")
        else:
            self.stream.write(f"jaxvis: {text}\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the display with a summary line."""
        if not self.enabled:
            return
        elapsed = self._clock() - self._start if self._start is not None else 0.0
        summary = f"{self.total_done}/{self.total} filters in {format_duration(elapsed)}"
        if self._tty:
            pad = " " * max(0, self._width - len(summary) - 6)
            self.stream.write(f"\rdone: {summary}{pad}\n")
        else:
            self.stream.write(f"jaxvis: done: {summary}\n")
        self.stream.flush()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
