"""Chunk sizes and placement across devices.

The rule for the automatic chunk size (``batch=None``):

* CPU: one unit per device. A 2-core CPU is already compute-bound at one image; vmap over
  8-32 units ran at about 75% of one-at-a-time throughput (benchmarks/README.md, "vmap on
  CPU"; measured by benchmarks/chunk_sweep.py).
* GPU/TPU: as many units as fit in half the device memory, by a conservative estimate of
  the per-unit activation memory of a forward and backward pass, rounded down to a power
  of two and capped at 256. One image cannot fill an accelerator; a chunk can. The
  activation shapes come from ``jax.eval_shape`` of the model, so any architecture
  (strides, 1x1 convs, residual blocks) is counted as it is.

In both cases the chunk is a multiple of the device count, so each device gets an equal
slice of the unit axis.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvis.models.feature_model import FeatureModel

MAX_CHUNK = 256
# The activations a forward pass returns (pre- and post-activation of each layer), times
# this for their cotangents and XLA's workspace in the backward pass: a rough upper bound.
_BACKWARD_COPIES = 3


def activation_bytes(model: FeatureModel, stop_at: str, size: int) -> int:
    """Estimated bytes one unit keeps alive for forward + backward up to ``stop_at``, from
    the shapes and dtypes that ``jax.eval_shape`` gives for the model's activations."""
    shapes = model.shapes(stop_at, size)
    total = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in shapes.values())
    return int(total) * _BACKWARD_COPIES


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
        return n_dev
    memory = device_memory(devices[0]) or 16 * 2**30
    per_unit = activation_bytes(model, stop_at, size)
    return min(accelerator_chunk(per_unit, memory, n_dev), round_up(n_units, n_dev))


def accelerator_chunk(per_unit_bytes: int, memory_bytes: int, n_dev: int) -> int:
    """Units per chunk on accelerators: as many as fit in half of one device's memory, per
    device, rounded down to a power of two, capped at :data:`MAX_CHUNK` per device."""
    per_device = max(1, int(memory_bytes * 0.5 // max(1, per_unit_bytes)))
    per_device = min(MAX_CHUNK, 1 << (per_device.bit_length() - 1))
    return per_device * n_dev


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
