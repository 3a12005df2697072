"""Appending chunks of finished filters to an atlas, crash-safely and resumably.

A chunk is committed in place (jaxvis/atlas/commit.py): its rows are written into bytes
HDF5 preallocated, fsynced and read back, and only then does the layer's commit record
count them. A filter is counted in ``filters`` in the same record as its image,
objective, history and optimization snapshots, so a kill at any moment loses at most the
chunk in flight and a resume never sees half a filter. HDF5 itself writes only in
atomic snapshots (jaxvis/atlas/snapshot.py): at creation, when a request or a chunk
needs room (a new layer, or a layer's capacity grown at least 2x), and for a new device
kind, so a run's I/O stays linear in the atlas size (docs/atlas-format.md, "Cost").
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from jaxvis.atlas import allocate, chunk_checks, groups
from jaxvis.atlas import format as fmt
from jaxvis.atlas.commit import InPlace
from jaxvis.atlas.identity import check_same_layer, check_same_run, normalized_provenance
from jaxvis.atlas.reader import check_atlas_file
from jaxvis.atlas.snapshot import (
    acquire_lock,
    fsync_dir,
    release_lock,
    remove_stale,
    snapshot,
)
from jaxvis.chunk import Chunk
from jaxvis.errors import JaxvisError


class AtlasWriter:
    """Creates or resumes an atlas and appends chunks of finished filters to it.

    Args:
      path: the ``.h5`` file.
      provenance: ``{"model": str, "weights": WeightsInfo.to_dict(), "config": dict,
        "device_kind": str}``. An existing atlas is resumed only if model, weights and
        config (less :data:`format.RUN_ONLY_CONFIG_KEYS`) match.
      overwrite: build a new atlas instead of resuming this one. It is built beside the
        old one, in ``<atlas>.new``, and replaces it only at a clean exit of the ``with``
        block (or :meth:`finish`); until then the old atlas stays whole and readable, and
        a crashed overwrite resumes its ``.new`` when run again with ``overwrite``. A file
        that is not a jaxvis atlas is never touched, overwrite or not.

    A symlink as ``path`` is resolved once: the lock, the snapshots and the rename all act
    on the real file, which stays where the link points.

    Use it as a context manager, or call :meth:`close`, to release the writer's lock.
    """

    def __init__(self, path: str | os.PathLike, *, provenance: Mapping, overwrite: bool = False):
        groups.check_target(os.fspath(path))
        self.live = os.path.realpath(os.fspath(path))
        self.path = self.live  # the file being written; <live>.new while overwriting
        self._provenance = normalized_provenance(provenance)
        self._done: dict[str, set[int]] = {}
        self._requested: dict[str, set[int]] = {}
        self._layers: dict[str, tuple[int, int, int]] = {}  # num_filters, size, steps
        self._every: dict[str, int] = {}  # snapshot_every of layers with data (0: none)
        self._wanted_every: dict[str, int] = {}  # snapshot_every a request announced
        self._num_filters: dict[str, int] = {}
        self._objectives: dict[str, str] = {}
        self._new_device = False
        self._raw = InPlace(self.path)
        self._lock = acquire_lock(self.live)
        # Released at close(), or when the writer is collected or the interpreter exits.
        self._release = weakref.finalize(self, _cleanup, self._raw, self._lock, self.live)
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, overwrite: bool) -> None:
        exists = os.path.exists(self.live)
        if exists:
            check_atlas_file(self.live)  # refuses foreign files before anything is touched
        remove_stale(self.live)
        if exists and overwrite:
            self.path = self._raw.path = self.live + fmt.NEW_SUFFIX
            remove_stale(self.path)
            if os.path.exists(self.path) and self._resumable(self.path):
                self._resume()
                return
        if not exists or overwrite:
            with snapshot(self.path, fresh=True, aligned=True) as f:
                groups.write_root(f, self._provenance)
            self._raw.attach()
        else:
            self._resume()

    def _resumable(self, path: str) -> bool:
        """Whether an interrupted overwrite at ``path`` is one of this same run."""
        try:
            check_atlas_file(path)
            with h5py.File(path, "r") as f:
                check_same_run(path, f.attrs, self._provenance)
        except JaxvisError:
            return False
        return True

    def _resume(self) -> None:
        with h5py.File(self.path, "r") as f:
            version = int(f.attrs[fmt.ATTR_VERSION])
            if version < fmt.FORMAT_VERSION:
                raise JaxvisError(
                    f"{self.path} is an atlas of format_version {version}, which this jaxvis "
                    f"reads and exports but does not resume (it writes version "
                    f"{fmt.FORMAT_VERSION}); pass --overwrite to start it over, or choose "
                    "another output file"
                )
            check_same_run(self.path, f.attrs, self._provenance)
            kinds = json.loads(f.attrs.get(fmt.ATTR_DEVICE_KINDS, "[]"))
            self._new_device = self._provenance["device_kind"] not in kinds
            for name, group in f.items():
                self._load_layer(name, group)
        self._raw.attach()

    def _load_layer(self, name: str, group: h5py.Group) -> None:
        counts = group[fmt.COMMITTED][()] if fmt.COMMITTED in group else (0, 0, 0)
        done = set()
        for key, n in ((fmt.FILTERS, counts[0]), (fmt.FAILED_FILTERS, counts[1])):
            if n:
                done.update(int(i) for i in group[key][: int(n)])
        self._done[name] = done
        if fmt.REQUESTED in group:
            self._requested[name] = {int(i) for i in group[fmt.REQUESTED][()]}
        if fmt.ATTR_OBJECTIVE in group.attrs:
            self._objectives[name] = str(group.attrs[fmt.ATTR_OBJECTIVE])
        self._num_filters[name] = int(group.attrs[fmt.ATTR_NUM_FILTERS])
        if int(counts[2]):  # a layer's geometry is fixed once it has a chunk
            self._layers[name] = (
                int(group.attrs[fmt.ATTR_NUM_FILTERS]),
                int(group.attrs[fmt.ATTR_IMAGE_SIZE]),
                int(group.attrs[fmt.ATTR_STEPS]),
            )
            self._every[name] = int(group.attrs.get(fmt.ATTR_SNAPSHOT_EVERY, 0))

    def done(self, layer: str) -> set[int]:
        """Filters of ``layer`` already in the atlas, failed ones included."""
        return set(self._done.get(layer, ()))

    def request(
        self,
        filters: Mapping[str, Sequence[int]],
        *,
        num_filters: Mapping[str, int],
        objectives: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        snapshot_every: Mapping[str, int] | None = None,
    ) -> None:
        """Records which filters a run asked for, and each layer's objective.

        Where the pictures' size and steps are known (from layers already written), the
        same snapshot gives each layer room for all its requested filters; otherwise the
        first chunk does, for every requested layer at once. Either way a run takes one
        snapshot of the file for its requests, not one per chunk.

        Args:
          filters: ``{layer: [filter, ...]}``; merged with earlier requests, so that
            ``jaxvis info`` can show done/requested.
          num_filters: ``{layer: filter count of the layer}``.
          objectives: ``{layer: objective description}``. A layer already in the atlas
            with another objective is refused before anything is written.
          outputs: ``{layer: "map" or "vector"}``, the kind of the layer's output;
            recorded with a layer's objective, when the layer is first requested.
          snapshot_every: ``{layer: K}`` (0: no snapshots) the run will write. A layer
            whose rows were written with another K is refused before anything is
            written; a layer without rows takes its K from its first chunk.
        """
        for layer, every in (snapshot_every or {}).items():
            if layer in self._every:
                check_same_layer(
                    self.path, layer, fmt.ATTR_SNAPSHOT_EVERY, self._every[layer], int(every)
                )
        objectives = dict(objectives or {})
        for layer, description in objectives.items():
            known = self._objectives.get(layer)
            if known is not None and known != description:
                raise JaxvisError(
                    f"{self.path} was made with different settings (layers.{layer}.objective:"
                    f" {known!r} in the file, {description!r} now); pass --overwrite to "
                    "start it over, or choose another output file"
                )
        self._num_filters.update({la: int(n) for la, n in num_filters.items()})
        self._wanted_every.update({la: int(k) for la, k in (snapshot_every or {}).items()})
        new = {
            layer: sorted({int(i) for i in wanted} - self._requested.get(layer, set()))
            for layer, wanted in filters.items()
        }
        new = {layer: units for layer, units in new.items() if units}
        unset = {la: d for la, d in objectives.items() if la not in self._objectives}
        if not new and not unset:
            return
        self._check_open()
        for layer, units in new.items():
            chunk_checks.check_units(layer, units, num_filters[layer])
        geometry = next(iter(self._layers.values()), None)
        room = self._room(geometry[1:] if geometry else None, extra={}, pending=new)
        with self._snapshot(room) as f:
            for layer in dict.fromkeys([*new, *unset]):  # request order, not a set's
                group = groups.layer_group(f, layer, num_filters[layer])
                if layer in unset:
                    group.attrs[fmt.ATTR_OBJECTIVE] = unset[layer]
                    if outputs and layer in outputs:
                        group.attrs[fmt.ATTR_OUTPUT] = outputs[layer]
                if layer not in new:
                    continue
                merged = np.array(sorted(self._requested.get(layer, set()).union(new[layer])))
                if fmt.REQUESTED in group:
                    del group[fmt.REQUESTED]
                group.create_dataset(fmt.REQUESTED, data=merged.astype(np.int32))
            self._allocate(f, room)
        for layer, units in new.items():
            self._requested.setdefault(layer, set()).update(units)
        self._objectives.update(unset)

    def write_chunk(self, layer: str, chunk: Chunk, *, num_filters_in_layer: int | None = None):
        """Appends one chunk atomically: all of it is in the atlas afterwards, or none.

        Args:
          layer: layer name (the chunk's own).
          chunk: a :class:`~jaxvis.chunk.Chunk`; its failed filters are recorded (so a
            resume skips them) but get no image.
          num_filters_in_layer: the layer's filter count; needed only for a layer that no
            :meth:`request` named.
        """
        self._check_open()
        if chunk.layer != layer:
            raise JaxvisError(f"a chunk of layer {chunk.layer!r} cannot be written to {layer!r}")
        num_filters = num_filters_in_layer or self._num_filters.get(layer)
        if num_filters is None:
            raise JaxvisError(f"layer {layer!r} was never requested; pass num_filters_in_layer")
        self._num_filters.setdefault(layer, int(num_filters))
        failed = dict(chunk.failed)
        filters, images, objective, history = chunk_checks.check_chunk(
            layer,
            chunk,
            num_filters,
            self._done.get(layer, set()),
            self._layers.get(layer),
        )
        snaps = chunk_checks.check_snapshots(
            layer, chunk, images, history.shape[1], self._every.get(layer)
        )
        if not len(filters) and not failed:
            return
        every = int(chunk.snapshot_every) if snaps is not None else 0
        shape = (images.shape[1], history.shape[1])
        self._make_room(layer, shape, every, len(filters), len(failed))
        parts = {fmt.IMAGES: images, fmt.FILTERS: filters, fmt.OBJECTIVE: objective}
        parts[fmt.HISTORY] = history
        if snaps is not None:
            parts[fmt.SNAPSHOTS] = snaps
        parts[fmt.FAILED_FILTERS] = np.fromiter(failed, np.int32, len(failed))
        messages = [allocate.message_bytes(m) for m in failed.values()]
        parts[fmt.FAILED_MESSAGES] = np.array(messages, f"S{fmt.MESSAGE_BYTES}")
        parts[fmt.SECONDS] = np.array([chunk.seconds + chunk.compile_seconds], np.float64)
        parts[fmt.CHUNK_SIZES] = np.array([len(filters) + len(failed)], np.int32)
        self._raw.commit(layer, parts)
        self._layers[layer] = (num_filters, *shape)
        self._every[layer] = every
        self._done.setdefault(layer, set()).update(int(i) for i in filters)
        self._done[layer].update(failed)

    def _make_room(self, layer: str, shape: tuple, every: int, rows: int, failed: int) -> None:
        """One snapshot, when the layer has no room for the chunk (or was allocated for
        pictures of another shape, before any row), or the device kind is new."""
        raw = self._raw.layers.get(layer)
        same = raw is not None and self._raw.geometry[layer] == (*shape, every)
        fits = same and allocate.fits(raw.capacity, raw.counts, rows, failed)
        if fits and not self._new_device:
            return
        counts = raw.counts if same else (0, 0, 0)
        capacity = raw.capacity if same else 0
        need = allocate.grown(
            capacity, allocate.needed(counts, rows, failed), self._num_filters[layer]
        )
        extra = {} if fits else {layer: (*shape, every, need)}
        with self._snapshot(self._room(shape, extra)) as f:
            groups.layer_group(f, layer, self._num_filters[layer])
            self._allocate(f, self._room(shape, extra))

    def _room(self, shape: tuple | None, extra: dict, pending: Mapping | None = None) -> dict:
        """``{layer: (size, steps, every, capacity)}``: the layers to create or grow, those
        in ``extra`` and, given the pictures' ``shape``, every requested layer (``pending``:
        ``{layer: units}`` being requested now) whose capacity is short of its filters."""
        room = dict(extra)
        pending = pending or {}
        for layer in dict.fromkeys([*self._requested, *pending]) if shape else ():
            units = self._requested.get(layer, set()).union(pending.get(layer, ()))
            raw = self._raw.layers.get(layer)
            capacity = raw.capacity if raw else 0
            want = len(self._done.get(layer, set()) | units)
            # A request without snapshot_every is taken as none (0); a first chunk with
            # snapshots then allocates its layer again.
            every = self._every.get(layer, self._wanted_every.get(layer, 0))
            if layer in room:  # the chunk's own layer: grown, and room for its request
                room[layer] = (*room[layer][:3], max(room[layer][3], want))
            elif want > capacity:
                room[layer] = (*shape, every, want)
        return room

    def _allocate(self, f: h5py.File, room: dict) -> None:
        for layer, (size, steps, every, capacity) in room.items():
            group = groups.layer_group(f, layer, self._num_filters[layer])
            if fmt.IMAGES in group and allocate.geometry(group) != (size, steps, every):
                groups.drop_rows(group)  # allocated for other pictures, before any row
            allocate.ensure(group, size, steps, every, capacity)

    @contextlib.contextmanager
    def _snapshot(self, room: dict):
        """A snapshot of the file (with the device kind, if new), then reattached."""
        old = {la: raw.capacity for la, raw in self._raw.layers.items()}
        grow = sum(
            (cap - old.get(la, 0)) * allocate.row_bytes(size, steps, every)
            for la, (size, steps, every, cap) in room.items()
        )
        self._raw.close()
        try:
            with snapshot(self.path, new_bytes=max(grow, 0), aligned=True) as f:
                yield f
                if self._new_device:
                    groups.add_device_kind(f, self._provenance["device_kind"])
            self._new_device = False
        finally:
            self._raw.attach()

    def _check_open(self) -> None:
        if not self._release.alive:
            raise JaxvisError(f"the AtlasWriter of {self.path} is closed; open a new one")

    def finish(self) -> None:
        """Makes an overwrite live: the new atlas replaces the old one, atomically."""
        self._check_open()
        if self.path != self.live:
            os.replace(self.path, self.live)
            fsync_dir(os.path.dirname(self.live))
            self.path = self._raw.path = self.live

    def close(self) -> None:
        """Releases the lock that keeps a second writer off this atlas. An unfinished
        overwrite stays in ``<atlas>.new``, and the old atlas stays as it was."""
        self._release()

    def __enter__(self) -> AtlasWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None and self._release.alive:
                self.finish()
        finally:
            self.close()


def _cleanup(raw: InPlace, lock, path: str) -> None:
    raw.close()
    release_lock(lock, path)
