"""Time budgets for benchmarks/device_check.py: a global deadline and a cap per part.

A lent accelerator is held for minutes, not hours, so the check plans its time up front:
each part (ceilings, layers, chunk sweep, block-steps sweep) gets a cap, and all of them
share one deadline. Before each compiled item a part asks whether the item's estimated
cost still fits; if not, the item is skipped and the skip is recorded with its reason, so
a run that ran out of time says what it left out instead of overrunning the lease.
"""

from __future__ import annotations

import time
import traceback


class Budget:
    """The run's deadline, and a :class:`PartClock` for each part in turn.

    Args:
      total_s: seconds from ``start`` until the deadline.
      parts: ``{part: cap in seconds}``; a part ends at its cap or the deadline,
        whichever comes first.
      start: ``time.monotonic()`` when the run began (default: now), so that starting
        the device counts against the budget too.
    """

    def __init__(self, total_s: float, parts: dict[str, float], start: float | None = None):
        self.start = time.monotonic() if start is None else start
        self.total_s = float(total_s)
        self.deadline = self.start + self.total_s
        self.caps = dict(parts)
        self.clocks: dict[str, PartClock] = {}

    def part(self, name: str) -> PartClock:
        """Starts the clock of part ``name`` (one of the ``parts`` given at creation)."""
        end = min(time.monotonic() + self.caps[name], self.deadline)
        clock = PartClock(name, self.caps[name], end)
        self.clocks[name] = clock
        return clock

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def report(self) -> dict:
        """``{part: {"budget_s", "used_s", "skipped", "failed"}}`` for the JSON."""
        return {name: clock.report() for name, clock in self.clocks.items()}

    def skipped(self) -> list[str]:
        return [s for clock in self.clocks.values() for s in clock.skipped]

    def failed(self) -> list[str]:
        return [s for clock in self.clocks.values() for s in clock.failed]


class PartClock:
    """The time left to one part, what it skipped for lack of it, and what failed."""

    def __init__(self, name: str, cap_s: float, end: float):
        self.name, self.cap_s, self.end = name, cap_s, end
        self.begin = time.monotonic()
        self.stopped: float | None = None
        self.skipped: list[str] = []
        self.failed: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, what: str, estimate_s: float) -> bool:
        """True if ``estimate_s`` fits in what is left; else records ``what`` as skipped."""
        left = self.left()
        if estimate_s <= left:
            return True
        self.skipped.append(
            f"{self.name}: {what} skipped (needs about {estimate_s:.0f} s, "
            f"{max(left, 0.0):.0f} s left of this part's {self.cap_s:.0f} s)"
        )
        print(self.skipped[-1], flush=True)
        return False

    def note(self, what: str) -> None:
        """Records an item left out for another reason (memory), in the same list."""
        self.skipped.append(f"{self.name}: {what}")
        print(self.skipped[-1], flush=True)

    def fail(self, what: str, error: Exception) -> None:
        """Records an item that raised, with its traceback on stderr, so that one broken
        item does not cost the rest of a lease; the run then exits non-zero."""
        traceback.print_exc()
        first = (str(error).splitlines() or [""])[0]
        self.failed.append(f"{self.name}: {what} failed: {type(error).__name__}: {first}")
        print(self.failed[-1], flush=True)

    def done(self) -> None:
        self.stopped = time.monotonic()

    def report(self) -> dict:
        used = (self.stopped or time.monotonic()) - self.begin
        return {
            "budget_s": self.cap_s,
            "used_s": used,
            "skipped": list(self.skipped),
            "failed": list(self.failed),
        }
