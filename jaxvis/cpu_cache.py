"""Small per-CPU JSON caches of measured choices (jaxvis/chunk_tune.py, jaxvis/conv_tune.py).

Each cache is one JSON object of ``{key: entry}``, where a key starts with
:func:`cpu_signature`. Files are read with ``json`` only; one that does not parse is
treated as empty and rewritten on the next store.
"""

from __future__ import annotations

import json
import os
import tempfile

_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "asimd", "sve")


def path(variable: str, name: str) -> str:
    """``$variable`` if set, else ``$XDG_CACHE_HOME/jaxvis/name`` (``~/.cache/jaxvis/name``)."""
    if os.environ.get(variable):
        return os.environ[variable]
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "jaxvis", name)


def cpu_signature(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU as far as kernel speed goes: model name, x86 family and model, vector
    flags, cores. Three CPUs of the project's VM were all named "AMD EPYC"."""
    name, flags, ident = "unknown cpu", set(), {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == "unknown cpu":
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in ("cpu family", "model") and key not in ident:
                    ident[key] = value.strip()
    except OSError:
        pass
    vector = ",".join(f for f in _FLAGS if f in flags)
    if ident:
        name += f" (family {ident.get('cpu family', '?')} model {ident.get('model', '?')})"
    return f"{name} [{vector}] x{os.cpu_count()}"


def load(file: str) -> dict:
    try:
        with open(file) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store(file: str, key: str, entry: dict) -> bool:
    """Adds ``entry`` under ``key``, atomically (a temporary file renamed over the old);
    False, and nothing left behind, where the folder cannot be written: the choice then
    holds for this run only."""
    folder = os.path.dirname(file) or "."
    data = load(file)
    data[key] = entry
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, file)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        return False
    return True
