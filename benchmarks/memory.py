"""Memory of a benchmark: XLA's per-program estimate and the process's peak.

Both are recorded because neither suffices alone: the peaks below are process-lifetime
(no reset between cases, so per-case numbers are upper bounds), while XLA's estimate is
per compiled program but static.
"""

from __future__ import annotations

import resource

import jax

_XLA_FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
)


def xla_memory(compiled) -> dict:
    """Static buffer sizes of a compiled program (bytes): arguments, outputs, temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return {}
    if m is None:
        return {}
    out = {f.removesuffix("_size_in_bytes"): int(getattr(m, f, 0) or 0) for f in _XLA_FIELDS}
    out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def peak_memory() -> dict:
    """Peak memory so far: device allocator stats on accelerators, process RSS on CPU."""
    dev = jax.devices()[0]
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    try:
        import psutil

        out["rss_bytes"] = psutil.Process().memory_info().rss
    except ImportError:
        pass
    if dev.platform != "cpu":
        try:
            stats = dev.memory_stats() or {}
        except Exception:
            stats = {}
        for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit"):
            if k in stats:
                out[f"device_{k}"] = int(stats[k])
    return out


def peak_bytes(mem: dict) -> int:
    """The one peak number to print: the device's on accelerators, RSS on CPU."""
    return mem.get("device_peak_bytes_in_use", mem.get("peak_rss_bytes", 0))
