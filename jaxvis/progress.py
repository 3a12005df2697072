"""The progress display of a run: a tqdm bar on a terminal, plain lines in logs.

One display serves the project's runs, each counted in its own units (``noun``): an
atlas's filters, layer by layer (jaxvis/scheduler.py), and attribution maps' images
(jaxvis/attribution/command.py and ``attribute(..., progress=True)``), in one stage.

On a terminal, one tqdm bar covers the whole run. Its total is the summed cost of the
units to do, not their count, so tqdm's own ETA is cost-weighted; the description in
front of it gives the current stage's (layer's) done/total, rate and ETA. tqdm redraws with ``\\r``,
which turns a log file or CI page into one unreadable line, so when the stream is not a
terminal the display writes plain lines instead, at most one per ``log_interval`` seconds
plus one at each layer's start and end. The clock is injectable, so tests are exact.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

from tqdm import tqdm

from jaxvis.errors import JaxvisError, choices

# What a run counts, plural: an atlas's filters, or the images of attribution maps.
NOUNS = ("filters", "images")
# The overall ETA is the text after the layer's; the bar comes last, so a narrow terminal
# cuts the bar rather than the numbers.
_BAR_FORMAT = "{desc}, ETA {remaining} {percentage:3.0f}%|{bar}|"


def format_duration(seconds: float) -> str:
    """``[H:]MM:SS``, rounded to the second: tqdm's format, so one line never mixes two."""
    return tqdm.format_interval(max(0, round(seconds)))


class Progress:
    """Per-layer and overall done/total, rate in units (``noun``) per second, and ETAs.

    The layer's rate and ETA come from the time since that layer started. The overall ETA
    weighs the units still to do by ``costs``: deep layers cost far more per filter
    than early ones, so a plain filter count would promise far too early a finish. A run
    with no layers (attribution maps) is one stage, named e.g. by its method.

    Args:
      layers: ``{layer: units to do in this run}``, in run order.
      stream: where to draw (stderr by default, so stdout stays clean for results).
      enabled: False draws nothing (``--no-progress``).
      clock: seconds from a monotonic clock; ``time.monotonic`` unless testing.
      costs: ``{layer: relative cost of one filter}`` (e.g. FLOPs); all 1 if omitted.
      log_interval: off a terminal, the fewest seconds between two lines within a layer.
      noun: what is counted, one of :data:`NOUNS`: ``"filters"`` (an atlas) or
        ``"images"`` (attribution maps); it names the rate and the summary.
    """

    def __init__(
        self,
        layers: Mapping[str, int],
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        costs: Mapping[str, float] | None = None,
        log_interval: float = 30.0,
        noun: str = "filters",
    ):
        if noun not in NOUNS:
            raise JaxvisError(f"unknown progress noun {noun!r}; valid: {choices(NOUNS)}")
        self.noun = noun
        self.totals = {name: int(n) for name, n in layers.items()}
        self.costs = {name: float((costs or {}).get(name, 1.0)) for name in self.totals}
        self.done = dict.fromkeys(self.totals, 0)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.log_interval = log_interval
        self._clock = clock
        self._start: float | None = None
        self._layer: str | None = None
        self._layer_start: float | None = None
        self._last_line: float | None = None
        self._bar: tqdm | None = None
        isatty = getattr(self.stream, "isatty", None)
        self._tty = bool(isatty and isatty())

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def total_done(self) -> int:
        return sum(self.done.values())

    def start_layer(self, name: str) -> None:
        """Marks ``name`` as the layer being worked on and shows it (unless it has nothing
        to do, as when a resumed atlas already holds it)."""
        self._begin(name)
        self._layer = name
        self._layer_start = self._clock()
        if self.totals[name]:
            self._show(force=True)

    def advance(self, layer: str, n: int = 1) -> None:
        """Counts ``n`` more units of ``layer`` as finished (failed ones included)."""
        self._begin(layer)
        self.done[layer] += int(n)
        self._layer = layer
        finished = self.done[layer] >= self.totals[layer]
        if self._bar is None:
            self._show(force=finished)
            return
        self._show(force=False)  # the new text, drawn by update below (or now if finished)
        if not self._bar.update(int(n) * self.costs[layer]) and finished:
            self._bar.refresh()

    def line(self) -> str:
        """The status text, e.g. ``block1_conv1 8/64, 2 filters/s, ETA 00:28 | total
        8/128, ETA 09:40``."""
        now = self._clock()
        elapsed = now - self._start if self._start is not None else 0.0
        done_cost = sum(self.done[n] * self.costs[n] for n in self.totals)
        left_cost = sum((self.totals[n] - self.done[n]) * self.costs[n] for n in self.totals)
        eta = format_duration(left_cost * elapsed / done_cost) if done_cost and elapsed else "?"
        return f"{self._counts(now)}, ETA {eta}"

    def close(self, *, stopped: bool = False) -> None:
        """Ends the display with a summary line.

        Args:
          stopped: the run ended early (an exception, Ctrl-C): the summary then says
            ``stopped``, not ``done``, so a log never claims a finished atlas it lacks.
        """
        if not self.enabled:
            return
        self.enabled = False
        if self._bar is not None:
            self._bar.close()
        elapsed = self._clock() - self._start if self._start is not None else 0.0
        word = "stopped" if stopped else "done"
        summary = f"{self.total_done}/{self.total} {self.noun} in {format_duration(elapsed)}"
        self.stream.write(f"jaxvis: {word}: {summary}\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(stopped=exc_type is not None)

    def _begin(self, layer: str) -> None:
        """Counts ``layer`` in, if the constructor did not name it, and at the first event
        starts the run's clock and, on a terminal, its bar."""
        self.totals.setdefault(layer, 0)
        self.done.setdefault(layer, 0)
        self.costs.setdefault(layer, 1.0)
        if self._start is not None:
            return
        self._start = self._clock()
        if self.enabled and self._tty:
            self._bar = _cost_bar(self, self._start)

    def _counts(self, now: float) -> str:
        """The line without its overall ETA: the layer's part, then the total count."""
        parts = []
        if self._layer is not None:
            name = self._layer
            done, total = self.done[name], self.totals[name]
            elapsed = now - self._layer_start if self._layer_start is not None else 0.0
            rate = done / elapsed if elapsed > 0 else 0.0
            text = f"{name} {done}/{total}"
            if rate > 0:
                eta = format_duration((total - done) / rate)
                text += f", {rate:.3g} {self.noun}/s, ETA {eta}"
            parts.append(text)
        parts.append(f"total {self.total_done}/{self.total}")
        return " | ".join(parts)

    def _show(self, *, force: bool) -> None:
        """Redraws the bar, or writes a log line if one is due (always when ``force``)."""
        if not self.enabled:
            return
        now = self._clock()
        if self._bar is not None:
            self._bar.set_description_str(f"jaxvis: {self._counts(now)}", refresh=force)
            return
        last = self._last_line
        if not force and last is not None and now - last < self.log_interval:
            return
        self._last_line = now
        self.stream.write(f"jaxvis: {self.line()}\n")
        self.stream.flush()


def _cost_bar(progress: Progress, start: float) -> tqdm:
    """A tqdm bar over the run's total cost, timed by the progress's clock.

    ``smoothing=0`` makes tqdm's rate the average since the start, which is what the
    cost-weighted ETA needs; a moving average would follow one layer's speed.
    ``miniters=0`` keeps tqdm from skipping updates smaller than the largest it has seen,
    which a cheap layer after a dear one would be.
    """
    total = sum(progress.totals[n] * progress.costs[n] for n in progress.totals)
    bar = tqdm(
        total=total,
        file=progress.stream,
        bar_format=_BAR_FORMAT,
        desc="jaxvis: starting",
        smoothing=0,
        miniters=0,
        dynamic_ncols=True,
        leave=False,
        delay=float("inf"),  # draw nothing until the clock below is in place
    )
    bar._time = progress._clock  # tqdm's own tests swap its clock the same way
    bar.start_t = bar.last_print_t = start
    bar.delay = 0
    return bar
