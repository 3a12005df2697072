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
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvis.errors import JaxvisError
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


# Per-unit float32 copies of the input image the ascent holds: the parameterization's raw
# values and spectrum, the image, its transformed view, their gradients and the optimizer
# moments. A rough upper bound, like _BACKWARD_COPIES.
_IMAGE_COPIES = 12
# Share of the memory a chunk may plan to use; the rest is XLA's and the program's.
_MEMORY_SHARE = 0.8


def unit_bytes(model: FeatureModel, stop_at: str, size: int) -> int:
    """Estimated bytes of one unit's ascent step: activations, plus the image copies."""
    return activation_bytes(model, stop_at, size) + _IMAGE_COPIES * 4 * 3 * size * size


def available_memory(device: jax.Device) -> int | None:
    """Bytes a chunk may use: the accelerator's limit, or the host's available memory."""
    if device.platform != "cpu":
        return device_memory(device)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        return pages * os.sysconf("SC_PAGE_SIZE") if pages > 0 else None


def check_fits(model: FeatureModel, stop_at: str, size: int, chunk: int) -> None:
    """A one-line error, before anything is allocated or written, if a chunk of ``chunk``
    units at ``size`` px would not fit in memory; it names the estimate and the largest
    size that would fit."""
    device = jax.devices()[0]
    memory = available_memory(device)
    if not memory:
        return
    per_device = -(-chunk // jax.device_count())
    need = unit_bytes(model, stop_at, size) * per_device
    budget = memory * _MEMORY_SHARE
    if need <= budget:
        return
    largest = int(size * math.sqrt(budget / need))  # memory grows with the pixel count
    while largest > model.min_size and unit_bytes(model, stop_at, largest) * per_device > budget:
        largest -= 1
    fits = (
        f"the largest size that fits is about {largest} px"
        if largest >= model.min_size
        else ("no size fits")
    )
    raise JaxvisError(
        f"size {size} px needs about {need / 2**30:.1f} GiB for a chunk of {per_device} "
        f"unit(s) at {stop_at}, but {device.platform} has {memory / 2**30:.1f} GiB "
        f"available; {fits}" + (" (or use a smaller --batch)" if per_device > 1 else "")
    )


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
