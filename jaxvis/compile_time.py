"""Time this process spends tracing, lowering and compiling with jax.

jax reports each phase through :mod:`jax.monitoring`; the listener here adds them up, so
a chunk can tell its compile time from its run time (jaxvis/inflight.py) and benchmarks
can leave compiling out of a rate.
"""

from __future__ import annotations

import jax

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_duration(event: str, seconds: float, **_) -> None:
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds_so_far() -> float:
    """Seconds this process has spent tracing, lowering and compiling with jax."""
    return _compile_seconds[0]
