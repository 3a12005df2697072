"""The timing harness: timed calls, their summary, and round-robin timing with ceilings.

On a shared machine contention drifts over seconds. Timing the compared variants
round-robin, with the conv and matmul ceilings in every round, exposes all of them to the
same drift, and per-round ratios (see ``benchmarks/cases.py``) cancel most of it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Protocol


class Timed(Protocol):
    """Anything :func:`interleaved` can time: a name and one blocking call."""

    variant: str

    def call(self) -> float:
        """Runs once, waits for the result and returns the seconds it took."""
        ...


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``fn`` must wait for its result (``jax.block_until_ready``) so that each time covers
    the work and nothing else.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: Sequence[float]) -> dict:
    """Median, best and spread of a list of timings (seconds)."""
    return {
        "median_s": statistics.median(times),
        "best_s": min(times),
        "worst_s": max(times),
        "n": len(times),
    }


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def interleaved(
    cases: Sequence[Timed],
    kernels: dict,
    target_s: float,
    min_rounds: int = 3,
    max_rounds: int = 60,
) -> tuple[dict, dict]:
    """Times the cases round-robin, with the conv and matmul ceilings in every round.

    One untimed warm-up round sets the number of rounds, so that timing takes about
    ``target_s`` per case.

    Args:
      kernels: ceiling kernels from ``benchmarks.ceilings.ceiling_kernels``.

    Returns:
      ``({variant: [seconds per round]}, {ceiling: [seconds per round]})``.
    """
    ceil_names = ("conv_fwd", "matmul")
    first = sum(c.call() for c in cases)
    rounds = int(min(max_rounds, max(min_rounds, target_s * len(cases) / max(first, 1e-6))))
    times = {c.variant: [] for c in cases}
    ceil = {n: [] for n in ceil_names}
    for _ in range(rounds):
        for n in ceil_names:  # the first call after a block runs slow: take the better of 2
            ceil[n].append(min(time_calls(kernels[n]["call"], 2, warmup=0)))
        for c in cases:
            times[c.variant].append(c.call())
    return times, ceil
