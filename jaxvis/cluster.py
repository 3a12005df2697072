"""Joining a multi-process run: who this process is, and the check that all run the same.

A distributed atlas (``jaxvis atlas --distributed``; docs/scaling-out.md) starts with
JAX's own multi-controller runtime, :func:`jax.distributed.initialize`, which finds the
cluster (SLURM, Open MPI, TPU pods, or an explicit coordinator) and gives each process
its index. :func:`join` then has every process publish a digest of its command in the
runtime's key-value store and compares them, so that processes that were started with
different layers, filters or settings stop before any work, instead of splitting
different unit lists and losing or duplicating units.

Then the runtime is shut down, before any device is used. Each process runs its share
of the units (:func:`share`) on its own local devices and writes its own part file
(jaxvis/parts.py): no collective runs during the work. The reason is measured
(benchmarks/README.md, "Scaling out"): while the runtime is up, a process that dies
makes jax abort every other process with a C++ check failure (at once if it was process
0, after the heartbeat timeout otherwise), and a collective with a dead peer waits for
that abort. With the runtime shut down, a death costs only the dead process's chunk in
flight, and the survivors finish what they hold.

Every wait here is bounded: a watchdog ends the process with one line if joining takes
longer than ``timeout`` seconds, before jax's own, later, timeouts would abort it with a
stack trace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading

from jaxvis.errors import JaxvisError

EXIT_ERROR = 2
# jax's own timeouts are set this much later than the watchdog, so that it is always
# the watchdog's one line that ends a join that takes too long.
_JAX_GRACE_SECONDS = 30
_KEY = "jaxvis/command/"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a run.

    Attributes:
      process_id: this process, from 0.
      num_processes: processes in the run; process 0 writes the atlas.
    """

    process_id: int = 0
    num_processes: int = 1

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the atlas itself (and merges the others' parts)."""
        return self.process_id == 0

    def describe(self) -> str:
        return f"process {self.process_id} of {self.num_processes}"


SINGLE = Cluster()


def share(units, cluster: Cluster) -> list[int]:
    """This process's units: every ``num_processes``-th of the requested ``units``.

    It depends on the request alone, never on what is done, so a share is the same in
    every run of the same command, and a resume redoes exactly what was lost. Taking
    every P-th unit, rather than a block, balances the layers' costs across processes.
    """
    units = [int(u) for u in units]
    return units[cluster.process_id :: cluster.num_processes]


def command_digest(settings: dict) -> str:
    """A short digest of what every process of a run must agree on."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def join(
    digest: str,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout: float = 300.0,
) -> Cluster:
    """Joins the run through :func:`jax.distributed.initialize`, checks that every process
    runs the same command (``digest``, from :func:`command_digest`), and shuts the
    runtime down again, all before jax touches a device.

    Args:
      digest: this process's command digest.
      coordinator: ``HOST:PORT`` of process 0; with ``num_processes`` and ``process_id``.
        ``None`` for all three: jax finds the cluster itself (SLURM, Open MPI, TPU pods).
      timeout: seconds to wait for every process to join; then one line and exit 2.

    Returns:
      This process's :class:`Cluster`.
    """
    _check_arguments(coordinator, num_processes, process_id)
    _check_backend_unused()
    where = coordinator or "the coordinator jax found"
    import jax

    with _watchdog(timeout, f"the other processes did not join at {where} within {timeout:g} s"):
        try:
            cluster = _initialize(coordinator, num_processes, process_id, timeout)
            _agree(cluster, digest, timeout)
        finally:  # also after a refusal: the others are refused too and meet here
            jax.distributed.shutdown()
    _forget_cluster()
    return cluster


def _forget_cluster() -> None:
    """Makes this process an ordinary single-process JAX program again. jax keeps the
    process index after ``shutdown`` and would number this process's devices from
    ``1024 * index``; compiled programs would then differ by process and miss the
    persistent compilation cache that other processes filled."""
    from jax._src import distributed

    distributed.global_state.process_id = 0
    distributed.global_state.num_processes = 1


def _check_arguments(coordinator, num_processes, process_id) -> None:
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise JaxvisError(
            "give all of --coordinator HOST:PORT, --num-processes N and --process-id I, "
            "or none of them (jax then finds the cluster: SLURM, Open MPI, TPU pods)"
        )
    if num_processes is not None and num_processes < 1:
        raise JaxvisError(f"--num-processes must be at least 1; got {num_processes}")
    if process_id is not None and not 0 <= process_id < num_processes:
        raise JaxvisError(
            f"--process-id must be from 0 to {num_processes - 1} (--num-processes "
            f"{num_processes}); got {process_id}"
        )
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise JaxvisError(
                f"--coordinator must be HOST:PORT, e.g. node01:61234; got {coordinator!r}"
            )


def _check_backend_unused() -> None:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise JaxvisError(
            "a distributed run must join its cluster before jax uses any device; call "
            "jaxvis.cluster.join first"
        )


def _initialize(coordinator, num_processes, process_id, timeout: float) -> Cluster:
    import jax

    limit = int(timeout) + _JAX_GRACE_SECONDS
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            initialization_timeout=limit,
            heartbeat_timeout_seconds=limit,
            shutdown_timeout_seconds=limit,
        )
    except (ValueError, RuntimeError) as e:
        detail = " ".join(str(e).split())
        raise JaxvisError(
            f"--distributed could not join a cluster ({detail}); outside SLURM, Open MPI or "
            "a TPU pod give --coordinator HOST:PORT --num-processes N --process-id I"
        ) from None
    from jax._src import distributed

    state = distributed.global_state
    return Cluster(int(state.process_id), int(state.num_processes))


def _agree(cluster: Cluster, digest: str, timeout: float) -> None:
    """Every process publishes its digest and reads all the others'."""
    from jax._src import distributed

    client = distributed.global_state.client
    client.key_value_set(f"{_KEY}{cluster.process_id}", digest)
    for other in range(cluster.num_processes):
        theirs = client.blocking_key_value_get(f"{_KEY}{other}", int(timeout * 1000))
        if theirs != digest:
            raise JaxvisError(
                f"process {other} of {cluster.num_processes} was started with other "
                f"settings than {cluster.describe()} (command digest {theirs} vs {digest}); "
                "start every process with the same layers, filters, model, size, steps, "
                "preset, seed, dtype, snapshots and --out"
            )


class _watchdog:
    """Ends the process with one line and exit status 2 if the block outlasts
    ``seconds``; jax's waits inside it would otherwise abort with a stack trace."""

    def __init__(self, seconds: float, message: str):
        self._timer = threading.Timer(seconds, _die, args=(message,))
        self._timer.daemon = True

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _die(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"jaxvis: error: {message}; start the same command on every process\n")
    sys.stderr.flush()
    os._exit(EXIT_ERROR)
