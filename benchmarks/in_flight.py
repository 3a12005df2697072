"""What a chunk in flight costs and allows (for benchmarks/overlap.py): peak memory with
overlap off and on, one fresh process each, and how deep the runtime lets the host queue.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks import env, options


def dispatch_depth(calls: int = 100) -> int | None:
    """How many executions the runtime queues before the next dispatch blocks (None: not
    within ``calls``): the index of the first of two dispatches in a row that each took
    over half a call. A launch of more pieces than this waits for the device, so overlap
    then hides the host's work only behind the last pieces of the chunk in flight."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def work(x):  # ~50 ms on the 2-core VM: far above a dispatch and a time slice
        for _ in range(40):
            x = jnp.tanh(x @ x)
        return x

    x = jnp.full((512, 512) if env.on_cpu() else (8192, 8192), 1e-3)
    for _ in range(2):  # the first compiles
        start = time.perf_counter()
        jax.block_until_ready(work(x))
        one = time.perf_counter() - start
    queued, slow = [], []
    for i in range(calls):
        start = time.perf_counter()
        queued.append(work(x))
        if time.perf_counter() - start > one / 2:
            slow.append(i)
            if len(slow) > 1 and slow[-2] == i - 1:
                break
    jax.block_until_ready(queued)
    return slow[-2] if len(slow) > 1 and slow[-1] == slow[-2] + 1 else None


def peak_memory_child(args, setting: dict, overlap: bool) -> dict:
    """In a fresh process: peak memory after one chunk alone, then after a whole atlas with
    overlap on or off, and XLA's estimate of one block's memory."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.overlap import one_call
    from jaxvis import devices, engine, inflight, keys, presets

    model = options.load_model(args.weights, args.dtype)
    layer, size, steps = setting["layer"], setting["size"], setting["steps"]
    units = np.arange(min(setting["filters"], model.num_filters(layer)))
    chunk = devices.chunk_size(model, layer, size, len(units), setting["chunk"])
    config = presets.get(setting["preset"])
    prog = engine.program(model, layer, size, config, steps=steps, snapshots=setting["snapshots"])
    keys, ids = keys.unit_keys(0, layer, units[:chunk]), jnp.asarray(units[:chunk], jnp.int32)
    state = jax.eval_shape(prog.init, keys)
    block = prog.block.lower(model.params, state, keys, ids, jnp.int32(0)).compile()
    analysis = block.memory_analysis()
    every = inflight.check_snapshots(setting["snapshots"], steps)
    inflight.run_chunk(prog, model.params, 0, layer, units[:chunk], chunk, every)
    alone = _peak_bytes()
    with tempfile.TemporaryDirectory(prefix="jaxvis-overlap-") as out_dir:
        one_call(model, setting, os.path.join(out_dir, "atlas.h5"), overlap)
    return {
        "overlap": overlap,
        "peak_after_one_chunk_bytes": alone,
        "peak_after_atlas_bytes": _peak_bytes(),
        "block_temp_bytes": int(analysis.temp_size_in_bytes),
        "block_argument_bytes": int(analysis.argument_size_in_bytes),
    }


def _peak_bytes() -> int:
    """The process's peak memory: the device's on accelerators, RSS on CPU."""
    import jax

    if not env.on_cpu():
        return int((jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_memory(args, setting: dict) -> list[dict]:
    rows = []
    for overlap in (False, True):
        argv = [sys.executable, "-m", "benchmarks.overlap", "--weights", args.weights]
        argv += ["--dtype", args.dtype, "--child", json.dumps([setting, overlap])]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        rows.append({"setting": setting["name"], **json.loads(out.splitlines()[-1])})
    return rows


def memory_row(r: dict) -> dict:
    mib = 2**20
    return {
        "setting": r["setting"],
        "overlap": "on" if r["overlap"] else "off",
        "peak, one chunk": r["peak_after_one_chunk_bytes"] / mib,
        "peak, atlas": r["peak_after_atlas_bytes"] / mib,
        "block temp": r["block_temp_bytes"] / mib,
        "block arguments": r["block_argument_bytes"] / mib,
    }
