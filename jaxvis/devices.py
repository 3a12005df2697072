"""Chunk sizes and placement across devices.

The rule for the automatic chunk size (``batch=None``):

* CPU: one unit per device. A 2-core CPU is already compute-bound at one image; vmap over
  8-32 units ran at about 75% of one-at-a-time throughput (shared/PERF-NOTES.md, fact 4;
  re-measured by benchmarks/chunk_sweep.py).
* GPU/TPU: as many units as fit in half the device memory, by a conservative estimate of
  the per-unit activation memory of a forward and backward pass, rounded down to a power
  of two and capped at 256. One image cannot fill an accelerator; a chunk can.

In both cases the chunk is a multiple of the device count, so each device gets an equal
slice of the unit axis.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvis.models.model import FeatureModel

MAX_CHUNK = 256
_ACT_COPIES = 6  # pre, post and their cotangents, plus workspace: a rough upper bound


def activation_bytes(model: FeatureModel, stop_at: str, size: int, itemsize: int = 4) -> int:
    """Estimated bytes of activations one unit keeps alive for fwd + bwd up to ``stop_at``."""
    total, side = 0, size
    for layer in model.layers:
        if layer.kind == "pool":
            side //= 2
        elif layer.kind == "conv":
            total += side * side * layer.filters
        if layer.name == stop_at:
            break
    return total * itemsize * _ACT_COPIES


def relative_cost(model: FeatureModel, stop_at: str, size: int) -> float:
    """Rough cost of one filter-step up to ``stop_at``: conv multiply-adds, plus a per-pixel
    term for the parameterization and transforms. Only ratios matter (progress ETAs).

    The per-pixel term: a lucid step at block1_conv1, 224 px, spent about 12 ms outside
    the convs on this project's CPU, about 2 G multiply-adds' worth at the measured rate
    (benchmarks/README.md), i.e. some 30,000 per pixel.
    """
    total, side, channels = 0.0, size, 3
    for layer in model.layers:
        if layer.kind == "pool":
            side //= 2
        elif layer.kind == "conv":
            total += side * side * channels * layer.filters * 9
            channels = layer.filters
        if layer.name == stop_at:
            break
    return total + 30_000.0 * size * size


def device_memory(device: jax.Device) -> int | None:
    """Bytes the device can allocate, if it says."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # CPU devices raise or return None, depending on the jax version
        return None
    return stats.get("bytes_limit")


def auto_chunk(model: FeatureModel, stop_at: str, size: int, n_units: int) -> int:
    """The chunk size ``batch=None`` picks on the default devices (see module docstring)."""
    devices = jax.devices()
    n_dev = len(devices)
    if devices[0].platform == "cpu":
        chunk = n_dev
    else:
        memory = device_memory(devices[0]) or 16 * 2**30
        per_unit = max(1, activation_bytes(model, stop_at, size))
        fit = max(1, int(memory * 0.5 // per_unit)) * n_dev
        chunk = min(MAX_CHUNK * n_dev, 1 << (fit.bit_length() - 1))
        chunk = min(chunk, round_up(n_units, n_dev))
    return round_up(max(chunk, 1), n_dev)


def chunk_size(
    model: FeatureModel, stop_at: str, size: int, n_units: int, batch: int | None
) -> int:
    """Units per compiled chunk: ``batch`` or :func:`auto_chunk`, never more than the
    units at hand (no padded work), and a multiple of the device count."""
    n_dev = jax.device_count()
    chunk = batch or auto_chunk(model, stop_at, size, n_units)
    return round_up(min(chunk, round_up(n_units, n_dev)), n_dev)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def unit_sharding() -> NamedSharding | None:
    """Sharding of the leading (unit) axis over all devices, or None with one device."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    mesh = Mesh(np.array(devices), ("units",))
    return NamedSharding(mesh, PartitionSpec("units"))


def replicated() -> NamedSharding | None:
    devices = jax.devices()
    if len(devices) == 1:
        return None
    return NamedSharding(Mesh(np.array(devices), ("units",)), PartitionSpec())
