"""How many CPU devices ``jaxvis atlas`` asks XLA for: two where the CPU has two cores.

XLA:CPU runs one device's programs one after another, and within a program part of the
work (the FFT parameterization, the transforms, small fusions, Adam) keeps fewer threads
busy than the CPU has. With two CPU devices the engine shards each chunk's units over
both (``jaxvis/devices.py``), two programs run at once, and each fills the other's gaps.
On the AVX2-only 2-core VM that made a lucid atlas of block4_conv1 at 128 px about 1.25x
faster (benchmarks/README.md, "Two CPU devices").

The count must be set before jax starts its backends, so only the CLI, which owns its
process, sets it. A Python caller does the same with
``jax.config.update("jax_num_cpu_devices", 2)`` right after ``import jax``, or with
``JAX_NUM_CPU_DEVICES=2`` in the environment. ``JAX_NUM_CPU_DEVICES``, when set, wins.
"""

from __future__ import annotations

import os

from jaxvis.errors import JaxvisError

ENV = "JAXVIS_CPU_DEVICES"  # the CLI's default for --cpu-devices
JAX_ENV = "JAX_NUM_CPU_DEVICES"
# More than two devices are not measured; two suffice to overlap one program's serial
# parts with another's work on a 2-core CPU.
AUTO_MAX = 2


def check(value: str) -> str:
    """``value`` if it is "auto" or a positive whole number (ASCII digits), else a
    one-line JaxvisError naming what is valid."""
    if value == "auto" or (value.isascii() and value.isdigit() and int(value) >= 1):
        return value
    raise JaxvisError(f"--cpu-devices must be 'auto' or a whole number >= 1; got {value!r}")


def default() -> str:
    """The ``--cpu-devices`` default: ``$JAXVIS_CPU_DEVICES`` (checked), else "auto"."""
    value = os.environ.get(ENV)
    if value is None:
        return "auto"
    try:
        return check(value)
    except JaxvisError:
        raise JaxvisError(f"{ENV} must be 'auto' or a whole number >= 1; got {value!r}") from None


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def count(value: str, distributed: bool) -> int:
    """The CPU devices ``value`` asks for: "auto" is :data:`AUTO_MAX`, at most the cores,
    and 1 in a ``--distributed`` run (its processes share the host's cores)."""
    if value != "auto":
        return int(value)
    return 1 if distributed else max(1, min(AUTO_MAX, cores()))


def apply(value: str, distributed: bool = False) -> int | None:
    """Ask XLA for :func:`count` CPU devices, before jax starts its backends. Returns the
    count set, or None where ``JAX_NUM_CPU_DEVICES`` is set or the backends have started
    (the devices are then what they are)."""
    import jax

    n = count(check(value), distributed)
    if os.environ.get(JAX_ENV):
        return None
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # jax refuses once its backends are up
        return None
    return n
