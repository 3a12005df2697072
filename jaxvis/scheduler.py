"""Whole-layer atlases: the stateful edge around the engine.

One straight path from a request to an atlas: check everything the caller gave (before
any file is touched), build each layer's program, open the atlas and skip what it holds,
then run the rest through :func:`jaxvis.inflight.chunks` and commit each chunk while the
next one computes, so that a crash loses at most what is in flight. With several
processes (:mod:`jaxvis.cluster`) each computes its share, and process 0 merges the
others' part files (:mod:`jaxvis.parts`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from tqdm import tqdm

from jaxvis import chunk_tune, conv_tune, devices, engine, inflight, parts, presets
from jaxvis.atlas import AtlasWriter
from jaxvis.cluster import SINGLE, Cluster, share
from jaxvis.errors import JaxvisError
from jaxvis.heartbeat import BEAT_SECONDS, Heartbeat, Watch
from jaxvis.models.feature_model import FeatureModel
from jaxvis.progress import Progress

_POLL_SECONDS = 0.5


def run_identity(model: FeatureModel, recipe: presets.Recipe, *, seed: int) -> dict[str, object]:
    """What identifies an atlas apart from its layers: the model, its weights and the
    layer-independent run config (each layer's objective is stored with the layer).

    Batch size is not part of it: results do not depend on chunk size. The compute dtype
    is: bf16 and fp32 pictures differ.
    """
    return {
        "model": model.name,
        "weights": model.info.to_dict() if model.info else {},
        "config": {**recipe.run_description, "seed": seed, "dtype": model.dtype},
    }


def generate_atlas(
    model: FeatureModel,
    out: str,
    layers: Mapping[str, Sequence[int]],
    *,
    preset: str | presets.Config = "lucid",
    size: int = 224,
    steps: int | None = None,
    seed: int = 0,
    batch: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    snapshots: int | None = None,
    cluster: Cluster = SINGLE,
    peer_timeout: float = 120.0,
    tune_chunks: bool = False,
    convs: str = "auto",
) -> str:
    """Writes (or resumes) an atlas of ``{layer: filters}`` to ``out``.

    Every layer and filter is checked before the file is touched. Re-running the same
    call after a crash finishes the atlas; a run whose settings differ in any way that
    changes a picture is refused, naming the setting, unless ``overwrite``.

    ``snapshots=K`` also stores each unit's picture after every K steps (1 to steps),
    per layer (docs/atlas-format.md, "Snapshots"); a layer whose rows were written with
    another K, or without snapshots, is refused.

    In a run of several processes (``cluster`` from :func:`jaxvis.cluster.join`; see
    docs/scaling-out.md) each process computes its share of the units
    (:func:`jaxvis.cluster.share`). Process 0 writes ``out`` and merges the others' part
    files into it (jaxvis/parts.py); it stops with one line if a process whose share is
    unfinished shows no heartbeat for ``peer_timeout`` seconds. Left-over parts of an
    earlier run are merged by any run of process 0, a single-process run included.

    ``tune_chunks`` (the CLI's default) lets a single CPU device use the chunk measured
    fastest for each layer on this CPU (jaxvis/chunk_tune.py): read from its cache, or
    measured just before the layer's first chunk, if the units still to do repay it. It
    applies where ``batch`` is None, in single-process runs.

    ``convs`` says how 3x3 convs are computed, as in :func:`jaxvis.visualize`: by
    default, on a single CPU device, each by the formulation measured fastest for its
    shape on this CPU (jaxvis/conv_tune.py; measured before the first layer runs where
    the job repays it).

    Returns:
      The file this process wrote: ``out``, or its part file.
    """
    config = presets.get(preset)
    size = model.check_size(size)
    batch = engine.check_batch(batch)
    wanted = {layer: _check_layer_filters(model, layer, f) for layer, f in layers.items()}
    if not wanted:
        raise JaxvisError("no layers given; name at least one layer")
    if overwrite and cluster.num_processes > 1:
        raise JaxvisError(
            "--overwrite cannot be combined with --distributed; delete the atlas and its "
            ".parts folder, or choose another --out"
        )
    conv_tune.check_setting(convs)
    note = (lambda line: tqdm.write(line, file=sys.stderr)) if progress else None
    programs = {}
    for layer, units in wanted.items():
        model.check_runs(layer, size)
        chunk = devices.chunk_size(model, layer, size, len(units), batch)
        devices.check_fits(model, layer, size, chunk)
        prog = engine.program(model, layer, size, config, steps=steps, snapshots=snapshots)
        table = conv_tune.forms_for(prog, model.params, convs, size, len(units), note)
        if table:
            prog = engine.program(
                model, layer, size, config, steps=steps, snapshots=snapshots, convs=table
            )
        programs[layer] = prog
    tune = tune_chunks and batch is None and cluster.num_processes == 1
    first = next(iter(programs.values())).ascent.recipe
    every = inflight.check_snapshots(snapshots, first.steps)
    provenance = {**run_identity(model, first, seed=seed), "device_kind": _device_kind(cluster)}
    run = _Run(
        model, programs, wanted, size, seed, batch, snapshots, every, progress, cluster, tune
    )
    if not cluster.is_writer:
        return _write_part(run, out, provenance, peer_timeout)
    with AtlasWriter(out, provenance=provenance, overwrite=overwrite) as writer:
        run.request(writer)
        parts.merge(out, writer, provenance)  # what earlier runs' processes left
        if cluster.num_processes == 1:
            run.compute(writer, {la: writer.done(la) for la in wanted})
            if parts.part_files(out):
                parts.remove(out)
            return out
        os.makedirs(parts.folder(out), exist_ok=True)
        with Heartbeat(parts.heartbeat_path(out, 0)):
            merge = functools.partial(parts.merge, out, writer, provenance)
            run.compute(writer, {la: writer.done(la) for la in wanted}, after_chunk=merge)
            _wait_for_parts(run, out, writer, merge, peer_timeout)
    parts.remove(out)
    return out


@dataclasses.dataclass
class _Run:
    """What one process computes: the checked request, its programs and settings."""

    model: FeatureModel
    programs: dict
    wanted: dict
    size: int
    seed: int
    batch: int | None
    snapshots: int | None
    every: int
    progress: bool
    cluster: Cluster
    tune: bool = False  # the per-CPU chunk choice (jaxvis/chunk_tune.py) where batch is None

    def request(self, writer: AtlasWriter, units: Mapping | None = None) -> None:
        """Records the request (``units``, by default all wanted) and each layer's
        objective, output kind and snapshot spacing in ``writer``'s file."""
        writer.request(
            units or self.wanted,
            num_filters={la: self.model.num_filters(la) for la in self.wanted},
            objectives={
                la: p.ascent.recipe.objective.description for la, p in self.programs.items()
            },
            outputs={la: self.model.output_kind(la, self.size) for la in self.wanted},
            snapshot_every={la: self.every for la in self.wanted},
        )

    def _batch(self, layer: str, n_units: int) -> int | None:
        """The chunk for the ``n_units`` of ``layer`` still to do: ``batch``, or the one
        measured fastest on this CPU (measured now, before the layer's first chunk, if
        it is unknown and the work repays it), or None for the device rule."""
        if not self.tune:
            return self.batch
        note = (lambda line: tqdm.write(line, file=sys.stderr)) if self.progress else None
        return chunk_tune.choose(self.model, self.programs[layer], layer, self.size, n_units, note)

    def shares(self) -> dict[str, list[int]]:
        return {la: share(units, self.cluster) for la, units in self.wanted.items()}

    def compute(self, writer: AtlasWriter, done: Mapping, after_chunk=None) -> None:
        """Runs this process's units not in ``done`` and writes each chunk to ``writer``
        as it comes; ``after_chunk()`` runs after each write."""
        todo = {
            la: _not_done(np.array(units), done.get(la, set()))
            for la, units in self.shares().items()
        }
        # ETA weights: one lowering per layer (no compile), so only when progress is shown.
        shown = [la for la, units in todo.items() if len(units)] if self.progress else []
        costs = {la: self.programs[la].step_flops(self.model.params) for la in shown}
        sizes = {la: len(u) for la, u in todo.items()}
        with Progress(sizes, enabled=self.progress, costs=costs) as bar:
            for layer, units in todo.items():
                bar.start_layer(layer)
                if not len(units):
                    continue
                for chunk in inflight.chunks(
                    self.model,
                    self.programs[layer],
                    layer,
                    units,
                    size=self.size,
                    seed=self.seed,
                    batch=self._batch(layer, len(units)),
                    snapshots=self.snapshots,
                ):
                    writer.write_chunk(layer, chunk)
                    bar.advance(layer, chunk.units)
                    if after_chunk is not None:
                        after_chunk()


def _write_part(run: _Run, out: str, provenance: dict, peer_timeout: float) -> str:
    """A process other than 0: its share into its part file, then a check that process 0
    is still there to merge it."""
    pid = run.cluster.process_id
    path = parts.part_path(out, pid)
    done = parts.held(out, provenance)
    if _holds(done, run.shares()):  # process 0 may be removing the parts folder now
        return out
    os.makedirs(parts.folder(out), exist_ok=True)
    for layer, units in parts.done_in_parts(out, provenance).items():
        done.setdefault(layer, set()).update(units)
    watch = Watch({0: parts.heartbeat_path(out, 0)}, peer_timeout)
    with (
        Heartbeat(parts.heartbeat_path(out, pid)),
        AtlasWriter(path, provenance=provenance) as part,
    ):
        run.request(part, run.shares())
        run.compute(part, done, after_chunk=lambda: _check_peers(watch, [0], run.cluster, out))
    _check_writer_alive(run, out, provenance, peer_timeout)
    return path


def _wait_for_parts(run: _Run, out: str, writer: AtlasWriter, merge, peer_timeout: float) -> None:
    """Process 0, its own share done: merges the others' parts until the atlas holds every
    requested unit, or stops with one line if an unfinished process has stopped."""
    others = range(1, run.cluster.num_processes)
    watch = Watch({p: parts.heartbeat_path(out, p) for p in others}, peer_timeout)
    owners = {la: dict(_owners(units, run.cluster)) for la, units in run.wanted.items()}
    while True:
        merge()
        done = {la: writer.done(la) for la in run.wanted}  # one copy per layer, not per unit
        missing = {
            owners[la][u] for la, units in run.wanted.items() for u in units.tolist()
            if u not in done[la]
        }  # fmt: skip
        if not missing:
            return
        _check_peers(watch, sorted(missing), run.cluster, out)
        time.sleep(_POLL_SECONDS)


def _owners(units: np.ndarray, cluster: Cluster):
    """(unit, the process whose share it is) for each unit."""
    for p in range(cluster.num_processes):
        for u in share(units, Cluster(p, cluster.num_processes)):
            yield u, p


def _check_peers(watch: Watch, processes, cluster: Cluster, out: str) -> None:
    stopped = watch.stopped(processes)
    if stopped:
        names = ", ".join(str(p) for p in stopped)
        raise JaxvisError(
            f"process {names} of {cluster.num_processes} stopped (no heartbeat in "
            f"{parts.folder(out)} for {watch.timeout:g} s) before finishing its share; what "
            "every process committed is kept: run the same command on every process again "
            "to resume"
        )


def _holds(done: Mapping, units: Mapping) -> bool:
    """Whether ``done`` (``{layer: set}``) has every unit of ``units``."""
    return all(set(u) <= done.get(la, set()) for la, u in units.items())


def _check_writer_alive(run: _Run, out: str, provenance: dict, peer_timeout: float) -> None:
    """Returns once process 0 shows a heartbeat (it will merge this process's part) or the
    atlas already holds this process's whole share; stops with one line if neither
    happens within ``peer_timeout`` seconds."""
    watch = Watch({0: parts.heartbeat_path(out, 0)}, peer_timeout)
    while not watch.changed(0):
        if _holds(parts.held(out, provenance), run.shares()):
            return
        if watch.stopped([0]):
            raise JaxvisError(
                f"{run.cluster.describe()} finished its share, in "
                f"{parts.part_path(out, run.cluster.process_id)}, but process 0, which merges "
                f"it into {out}, showed no heartbeat for {peer_timeout:g} s; run the same "
                "command on every process again to finish the atlas"
            )
        time.sleep(BEAT_SECONDS / 4)


def _check_layer_filters(model: FeatureModel, layer: str, filters) -> np.ndarray:
    units = model.check_filters(layer, filters)
    if len(np.unique(units)) != len(units):
        values, counts = np.unique(units, return_counts=True)
        raise JaxvisError(
            f"filter {int(values[counts > 1][0])} of {layer} is given twice; give each filter once"
        )
    return units


def _not_done(units: np.ndarray, done: set[int]) -> np.ndarray:
    return np.array([u for u in units.tolist() if u not in done], np.int64)


def _device_kind(cluster: Cluster) -> str:
    """``platform:kind xN`` (N devices), with ``, P processes`` in a distributed run."""
    device = jax.devices()[0]
    kind = f"{device.platform}:{device.device_kind} x{jax.device_count()}"
    return kind if cluster.num_processes == 1 else f"{kind}, {cluster.num_processes} processes"
