"""Chunks in flight: launching a chunk of units, fetching it, and the chunk loop.

A layer's units run through a compiled :class:`~jaxvis.engine.Program` one chunk at a
time. :func:`launch_chunk` dispatches a chunk (asynchronously: the device arrays come
back at once), :func:`fetch_chunk` waits for it, brings it to the host and checks each
unit, and :func:`chunks` keeps one chunk in flight ahead of the one it hands out, so that
the caller's work on chunk i (the scheduler writes it to the atlas) overlaps the
device's work on chunk i+1 (benchmarks/README.md, "Overlapping compute and writing").
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis import devices
from jaxvis._types import Params
from jaxvis.chunk import Chunk
from jaxvis.compile_time import compile_seconds_so_far
from jaxvis.errors import JaxvisError
from jaxvis.keys import unit_keys
from jaxvis.models.feature_model import FeatureModel

if TYPE_CHECKING:
    from jaxvis.engine import Program


def check_snapshots(every, steps: int) -> int:
    """Snapshot spacing K as int (0 for ``None``: no snapshots), or a one-line error.

    Valid K: an integer from 1 to ``steps``; the run then stores ``steps // K`` snapshots.
    """
    if every is None:
        return 0
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise JaxvisError(
            f"snapshots must be a positive integer K (a picture every K steps), from 1 to "
            f"steps ({steps}); got {every!r}"
        )
    if every > steps:
        raise JaxvisError(
            f"snapshots every {every} steps would store none in a run of {steps} steps; "
            f"valid: 1 to {steps}"
        )
    return int(every)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def failure(history: np.ndarray, final: float, image: np.ndarray) -> str | None:
    """Why a unit failed (a non-finite objective or image), or None if it did not."""
    bad = np.flatnonzero(~np.isfinite(history))
    if bad.size:
        return f"objective became non-finite at step {int(bad[0])}"
    if not np.isfinite(final):
        return "final objective is non-finite"
    if not np.isfinite(image).all():
        return "image has non-finite pixels"
    return None


class Launch:
    """One chunk in flight: the device arrays :meth:`Program.run` returned, and when the
    device finished them.

    Dispatch is asynchronous, so the host gets the arrays at once and is free to write the
    previous chunk meanwhile. A watcher thread waits on the arrays (``block_until_ready``
    releases the GIL) and timestamps the moment they are ready, so a chunk's time is known
    even when the host fetches it later than that.

    Attributes:
      prog, layer, units, every: what :func:`launch_chunk` was given.
      outputs: ``(images, final, history, snapshots)`` on the device (``Program.run``);
        None once fetched.
      dispatched: ``time.perf_counter()`` when the launch began.
      compile_seconds: tracing and compiling done by this launch (it happens at dispatch).
      ready: ``time.perf_counter()`` when the outputs were ready; NaN until then.
    """

    def __init__(self, prog, layer, units, every, outputs, dispatched, compile_seconds):
        self.prog, self.layer, self.units, self.every = prog, layer, units, every
        self.outputs = outputs
        self.dispatched, self.compile_seconds = dispatched, compile_seconds
        self.ready = math.nan
        # Not a daemon: the interpreter joins it before it finalizes. A daemon thread
        # still inside block_until_ready when the program exits (an error while the next
        # chunk is in flight) is torn down by a forced unwind through jaxlib's C++ frames,
        # and the process aborts ("FATAL: exception not rethrown") instead of exiting
        # with its status. Joining costs at most the chunk in flight.
        self._watcher = threading.Thread(target=self._watch, name="jaxvis-ready")
        self._watcher.start()

    def _watch(self) -> None:
        with contextlib.suppress(Exception):  # the fetch raises it, to the caller
            jax.block_until_ready(self.outputs)
        self.ready = time.perf_counter()

    def wait(self) -> float:
        """Blocks until the outputs are ready; returns when they became so."""
        self._watcher.join()
        return self.ready


def launch_chunk(
    prog: Program,
    params: Params,
    seed: int,
    layer: str,
    units: np.ndarray,
    chunk: int,
    every: int = 0,
) -> Launch:
    """Dispatches one chunk of ``units`` (padded to ``chunk`` units and masked), with a
    snapshot every ``every`` steps (0: none), and returns without waiting for the device.

    Tracing and compiling (first use of ``prog``) happen here, on the host, before the
    pieces are queued. Nothing else waits, unless the runtime's queue is full: XLA:CPU
    queues 32 executions, and the next dispatch waits for the oldest to finish
    (benchmarks/README.md, "Overlapping compute and writing").
    """
    dispatched, compiling = time.perf_counter(), compile_seconds_so_far()
    n = len(units)
    padded = np.concatenate([units, np.full(chunk - n, units[-1])]).astype(np.int32)
    keys = unit_keys(seed, layer, padded)
    ids = jnp.asarray(padded)
    sharding = devices.unit_sharding()
    if sharding is not None:
        keys, ids = jax.device_put((keys, ids), sharding)
        params = jax.device_put(params, devices.replicated())
    outputs = prog.run(params, keys, ids, every)
    compiled = compile_seconds_so_far() - compiling
    return Launch(prog, layer, units, every, outputs, dispatched, compiled)


def fetch_chunk(launch: Launch, previous_ready: float = -math.inf) -> Chunk:
    """Waits for a launched chunk, fetches it to the host and checks each unit.

    Args:
      previous_ready: when the chunk launched before this one was ready (``-inf``: none
        was, or it finished before this one was launched).

    Returns:
      The :class:`~jaxvis.chunk.Chunk`. Its ``seconds`` is the device time attributable
      to it: from when the device could start it (its launch plus its compile, or the
      previous chunk's ready time if later: the device runs chunks in order) to when its
      outputs were ready. Without overlap that is the chunk's wall time less compile, as
      before; with overlap the chunks' seconds add up to the device's busy time, and
      neither includes the host's fetch and write. ``compile_seconds`` is the tracing and
      compiling its launch did.
    """
    images, final, history, shots = jax.device_get(launch.outputs)
    start = max(launch.dispatched + launch.compile_seconds, previous_ready)
    seconds = max(0.0, launch.wait() - start)
    launch.outputs = None  # the device's copies can go; the timestamps stay
    units, layer, every = launch.units, launch.layer, launch.every
    ok, failed = [], {}
    for i, unit in enumerate(units.tolist()):
        why = failure(history[i], final[i], images[i])
        if why is None:
            ok.append(i)
        else:
            failed[unit] = f"filter {unit} of {layer} failed: {why}"
    imgs = to_uint8(images[ok])
    snaps = _snapshots([s[ok] for s in shots], imgs, launch.prog.ascent.recipe.steps, every)
    if imgs.shape[1] == 1:  # [N, B, H, W, 3] -> [N, H, W, 3], and [N, S, B, ...] alike
        imgs, snaps = imgs[:, 0], None if snaps is None else snaps[:, :, 0]
    return Chunk(
        layer=layer,
        filters=units[ok],
        images=imgs,
        objective=final[ok],
        history=history[ok],
        failed=failed,
        seconds=seconds,
        compile_seconds=launch.compile_seconds,
        snapshots=snaps,
        snapshot_every=every,
    )


def run_chunk(
    prog: Program,
    params: Params,
    seed: int,
    layer: str,
    units: np.ndarray,
    chunk: int,
    every: int = 0,
) -> Chunk:
    """Runs one chunk of ``units`` and fetches it: :func:`launch_chunk`, then
    :func:`fetch_chunk`, with nothing in between."""
    return fetch_chunk(launch_chunk(prog, params, seed, layer, units, chunk, every))


def _snapshots(shots: list, images: np.ndarray, steps: int, every: int) -> np.ndarray | None:
    """uint8 [n, S, B, H, W, 3] from the snapshots ``shots`` (each [n, B, H, W, 3]) and the
    final ``images`` [n, B, H, W, 3]; None without snapshots.

    The final pictures are the snapshot at the last step when ``every`` divides
    ``steps`` (``Program.run`` takes none there), so that one equals ``images`` exactly.
    """
    if not every:
        return None
    frames = list(shots)
    if steps % every == 0:
        frames.append(images)
    return np.stack(frames, axis=1)


def chunks(
    model: FeatureModel,
    prog: Program,
    layer: str,
    units: np.ndarray,
    *,
    size: int,
    seed: int = 0,
    batch: int | None = None,
    snapshots: int | None = None,
    overlap: bool = True,
) -> Iterator[Chunk]:
    """Runs ``units`` of ``layer`` through ``prog``, one chunk at a time: the one chunk loop.

    The chunk size is ``batch``, or chosen for the devices (see :mod:`jaxvis.devices`).
    ``snapshots=K`` needs a ``prog`` from :func:`program` with the same ``snapshots``.

    With ``overlap`` (the default), chunk i+1 is launched before chunk i is fetched and
    yielded, so whatever the caller does with chunk i (the scheduler writes it to the
    atlas) runs while the device computes chunk i+1. Exactly one chunk is in flight
    while the caller holds one, and a caller that stops (a crash, Ctrl-C) loses only the
    one in flight, which a resume redoes. Device memory is not doubled: the device runs
    the two chunks one after the other (it executes what it is given in order), so
    while chunk i+1 runs, only chunk i's outputs (pictures, objectives, histories) are
    still held of chunk i, not its optimizer state or activations. On CPU the chunks'
    ready times come one chunk's time apart and the peak RSS does not grow
    (benchmarks/README.md, "Overlapping compute and writing"). Where a chunk has more
    pieces than the runtime queues (32 on XLA:CPU), launching i+1 returns only once chunk
    i is done and about 32 pieces of i+1 remain: the caller's work hides behind those.
    ``overlap=False`` fetches each chunk before launching the next; the results are
    bit-identical.
    """
    every = check_snapshots(snapshots, prog.ascent.recipe.steps)
    chunk = devices.chunk_size(model, prog.ascent.stop_at, size, len(units), batch)
    launches = (
        launch_chunk(prog, model.params, seed, layer, units[i : i + chunk], chunk, every)
        for i in range(0, len(units), chunk)
    )
    ready = -math.inf
    for launch in _ahead(launches, 1 if overlap else 0):
        yield fetch_chunk(launch, ready)
        ready = launch.ready


def _ahead(items: Iterator, n: int) -> Iterator:
    """``items`` in order, each given out only once the next ``n`` have been taken, so
    that a lazy ``items`` (launches) runs ``n`` ahead of the consumer (fetches)."""
    queue: collections.deque = collections.deque()
    for item in items:
        queue.append(item)
        if len(queue) > n:
            yield queue.popleft()
    yield from queue
