"""The machine a benchmark ran on: device, software, CPU model and flags, and load.

Printed first and recorded in every result, because a rate means little without the
machine: on CPU, XLA picks its kernels by the vector extensions present (AVX-512 or only
AVX2 + FMA), and a shared host's load moves absolute rates by up to 2x.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import sys

import jax

# The CPU flags that decide XLA:CPU's fastest conv and matmul kernels.
SPEED_FLAGS = ("avx2", "fma", "avx512f")
_VECTOR_PREFIXES = ("avx512", "amx", "avx2", "fma")


def platform_name() -> str:
    """``cpu``, ``gpu`` or ``tpu`` of the default device."""
    return jax.devices()[0].platform


def on_cpu() -> bool:
    return platform_name() == "cpu"


def _cpuinfo(field: str) -> str | None:
    """The first /proc/cpuinfo value of ``field`` (None where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The host CPU's model name as /proc/cpuinfo gives it (or ``platform.processor()``)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_id() -> str | None:
    """x86 family, model and stepping ("family 25 model 17 stepping 1"), None elsewhere.

    The project's VM has been three different CPUs whose model name is just "AMD EPYC";
    only these numbers (and the flags) tell them apart (benchmarks/README.md, "Machines").
    """
    family, model, stepping = (_cpuinfo(f) for f in ("cpu family", "model", "stepping"))
    if family is None or model is None:
        return None
    return f"family {family} model {model} stepping {stepping}"


def cpu_vector_flags() -> list[str]:
    """The host's AVX2 / FMA / AVX-512 / AMX feature flags, sorted."""
    flags = (_cpuinfo("flags") or "").split()
    return sorted(f for f in flags if f.startswith(_VECTOR_PREFIXES))


def cpu_speed_flags() -> dict[str, bool]:
    """Whether each of :data:`SPEED_FLAGS` is present (all False off Linux)."""
    flags = set((_cpuinfo("flags") or "").split())
    return {f: f in flags for f in SPEED_FLAGS}


def cpu_pressure() -> str | None:
    """Linux PSI line for CPU ("some avg10=... avg60=..."): how contended the host is."""
    try:
        with open("/proc/pressure/cpu") as f:
            return f.readline().strip()
    except OSError:
        return None


def environment() -> dict:
    """Device, software and host facts recorded with every result."""
    import jaxlib

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_count": os.cpu_count(),
        "cpu_speed_flags": cpu_speed_flags(),
        "cpu_flags": cpu_vector_flags(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_pressure": cpu_pressure(),
        "argv": sys.argv[1:],
    }


def device_slug() -> str:
    """A file-name-safe device name: ``cpu-2core``, ``nvidia-h100-80gb-hbm3``, ..."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu-{os.cpu_count()}core"
    name = re.sub(r"[^a-z0-9]+", "-", dev.device_kind.lower()).strip("-")
    count = jax.device_count()
    return f"{name}-x{count}" if count > 1 else name


def describe_device() -> str:
    """One line for the top of a benchmark's output: what ran it, and how loaded it was."""
    env = environment()
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in env["cpu_speed_flags"].items())
    ident = f" ({env['cpu_id']})" if env["cpu_id"] else ""
    cpu = f"{env['cpu_model']}{ident}, {env['cpu_count']} cores, {flags}"
    where = cpu if env["platform"] == "cpu" else f"{env['device_kind']}; host {cpu}"
    return (
        f"{env['platform']} ({where}) x{env['device_count']}; jax {env['jax']}, "
        f"date {env['date']}, load avg {env['load_average']}; cpu pressure "
        f"{env['cpu_pressure']}"
    )
