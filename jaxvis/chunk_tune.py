"""The chunk size on CPU, measured once per CPU and layer and kept on disk.

On CPU the default is one unit per device (jaxvis/devices.py), but the best chunk depends
on the layer's shape and on the CPU. On the 2-core AVX-512 VM, block5_conv3 at 128 px
(8x8 maps) ran 10-25 % faster with 2 or 4 units per chunk, block4_conv1 at 128 px was
within noise at 1 and 2, and block3_conv3 at 224 px was fastest at 1, by 13 % or more. On
an AVX2 CPU, 4 units were 10 % faster at block4_conv1 (benchmarks/README.md, "Chunk size
per CPU and layer"). So a constant cannot be right everywhere. :func:`choose` measures
the candidates on first use, where the layer's job is big enough to repay it, and keeps
the winner in a small JSON file keyed by the CPU (model name, x86 family and model, vector
flags, cores), the jax version, the model, layer, size, dtype and recipe; later runs read
it.

The cache file is ``$JAXVIS_CHUNK_CACHE``, else ``$XDG_CACHE_HOME/jaxvis/cpu-chunks.json``
(``~/.cache/jaxvis/cpu-chunks.json``). It holds only numbers, read with ``json``; a file
that does not parse is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis import cpu_cache
from jaxvis.keys import unit_keys

CANDIDATES = (1, 2, 4)
# Tune only a layer whose job (units x steps) is at least this: tuning compiles a program
# per candidate and times a block of each, about half a minute at 128 px, which a job of
# 64 units x 512 steps (tens of minutes on CPU) repays many times over.
MIN_WORK = 64 * 256
# A larger chunk must beat the smaller by this much to be chosen: a smaller chunk commits
# results to the atlas more often, and the timing of a shared machine is noisy.
MARGIN = 1.03


def cache_path() -> str:
    return cpu_cache.path("JAXVIS_CHUNK_CACHE", "cpu-chunks.json")


cpu_signature = cpu_cache.cpu_signature


def key(model, layer: str, size: int, recipe) -> str:
    """The cache key of one layer's chunk choice on this CPU and jax version."""
    what = json.dumps(recipe.run_description, sort_keys=True, default=str)
    digest = hashlib.sha256(what.encode()).hexdigest()[:12]
    where = f"{model.name} {model.dtype}|{layer}|{size}|{digest}"
    return f"{cpu_signature()}|jax {jax.__version__}|{where}"


def load() -> dict:
    return cpu_cache.load(cache_path())


def tuned(model, layer: str, size: int, recipe) -> int | None:
    """The chunk measured best here before, or None."""
    entry = load().get(key(model, layer, size, recipe))
    chunk = entry.get("chunk") if isinstance(entry, dict) else None
    return chunk if isinstance(chunk, int) and chunk >= 1 else None


def _store(k: str, entry: dict) -> bool:
    return cpu_cache.store(cache_path(), k, entry)


def rate(prog, params, layer: str, chunk: int, repeats: int = 2) -> float:
    """Filter-steps/s of one compiled block of ``prog`` for ``chunk`` units: compiled and
    called once untimed, then the best of ``repeats`` timed calls."""
    units = np.arange(chunk, dtype=np.int32)
    keys, ids = unit_keys(0, layer, units), jnp.asarray(units)
    state = prog.init(keys)
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        state, values = prog.block(params, state, keys, ids, jnp.int32(0))
        jax.block_until_ready((state, values))
        if i:
            best = min(best, time.perf_counter() - start)
    return chunk * prog.block_steps / best


def pick(rates: dict[int, float]) -> int:
    """The chunk to keep for measured filter-steps/s by chunk: the largest that beats
    every smaller one kept so far by :data:`MARGIN`."""
    best = min(rates)
    for c in sorted(rates):
        if rates[c] > MARGIN * rates[best]:
            best = c
    return best


def choose(model, prog, layer: str, size: int, n_units: int, note=None) -> int | None:
    """The chunk for ``layer`` on this CPU: the cached choice, else, for a big enough job,
    the fastest of :data:`CANDIDATES` (measured now and cached), else None (the default
    rule). Only on a single CPU device; accelerators and several devices keep their rule.
    ``note(line)``, if given, is told when a measurement starts and what it chose."""
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return None
    recipe = prog.ascent.recipe
    known = tuned(model, layer, size, recipe)
    if known is not None:
        return min(known, n_units)
    if n_units * recipe.steps < MIN_WORK:
        return None
    if note:
        note(f"measuring the chunk size for {layer} on this CPU (once; kept in {cache_path()})")
    rates = {c: rate(prog, model.params, layer, c) for c in CANDIDATES if c <= n_units}
    best = pick(rates)
    if note:
        shown = ", ".join(f"{c}: {r:.3g}" for c, r in rates.items())
        note(f"{layer}: chunk {best} (filter-steps/s by chunk: {shown})")
    entry = {"chunk": best, "filter_steps_per_s": {str(c): r for c, r in rates.items()}}
    kept = _store(key(model, layer, size, recipe), {**entry, "date": time.strftime("%Y-%m-%d")})
    if note and not kept:
        note(f"could not write {cache_path()}; the choice holds for this run only")
    return best
