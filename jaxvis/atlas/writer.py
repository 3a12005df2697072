"""Appending chunks of finished filters to an atlas, crash-safely and resumably.

Every change is one atomic snapshot (:mod:`jaxvis.atlas.snapshot`): a filter enters
``filters`` in the same snapshot as its image, objective, history and optimization
snapshots, so a kill at any moment loses at most the chunk in flight and a resume never
sees half a filter.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import weakref
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

from jaxvis.atlas import chunk_checks
from jaxvis.atlas import format as fmt
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
        _check_target(os.fspath(path))
        self.live = os.path.realpath(os.fspath(path))
        self.path = self.live  # the file being written; <live>.new while overwriting
        self._provenance = normalized_provenance(provenance)
        self._done: dict[str, set[int]] = {}
        self._requested: dict[str, set[int]] = {}
        self._layers: dict[str, tuple[int, int, int]] = {}  # num_filters, size, steps
        self._every: dict[str, int] = {}  # snapshot_every of layers with data (0: none)
        self._num_filters: dict[str, int] = {}
        self._objectives: dict[str, str] = {}
        self._new_device = False
        self._lock = acquire_lock(self.live)
        # Released at close(), or when the writer is collected or the interpreter exits.
        self._release = weakref.finalize(self, release_lock, self._lock, self.live)
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
            self.path = self.live + fmt.NEW_SUFFIX
            remove_stale(self.path)
            if os.path.exists(self.path) and self._resumable(self.path):
                self._resume()
                return
        if not exists or overwrite:
            with snapshot(self.path, fresh=True) as f:
                _write_root(f, self._provenance)
            return
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

    def _load_layer(self, name: str, group: h5py.Group) -> None:
        done = set()
        for key in (fmt.FILTERS, fmt.FAILED_FILTERS):
            if key in group:
                done.update(int(i) for i in group[key][()])
        self._done[name] = done
        if fmt.REQUESTED in group:
            self._requested[name] = {int(i) for i in group[fmt.REQUESTED][()]}
        if fmt.ATTR_OBJECTIVE in group.attrs:
            self._objectives[name] = str(group.attrs[fmt.ATTR_OBJECTIVE])
        self._num_filters[name] = int(group.attrs[fmt.ATTR_NUM_FILTERS])
        if fmt.IMAGES in group:
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
        with snapshot(self.path) as f:
            for layer in new.keys() | unset.keys():
                group = _layer_group(f, layer, num_filters[layer])
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
        rows = {fmt.IMAGES: images, fmt.FILTERS: filters, fmt.OBJECTIVE: objective}
        rows[fmt.HISTORY] = history
        if snaps is not None:
            rows[fmt.SNAPSHOTS] = snaps
        size = sum(a.nbytes for a in rows.values()) + sum(len(m) + 16 for m in failed.values())
        verify = functools.partial(chunk_checks.verify_rows, layer=layer, rows=rows)
        every = int(chunk.snapshot_every) if snaps is not None else 0
        with snapshot(self.path, new_bytes=size, verify=verify) as f:
            group = _layer_group(f, layer, num_filters)
            _ensure_data(group, images.shape[1], history.shape[1], every)
            for name, data in rows.items():
                _append(group, name, data)
            _append(group, fmt.FAILED_FILTERS, np.fromiter(failed, np.int32, len(failed)))
            _append(group, fmt.FAILED_MESSAGES, np.array(list(failed.values()), dtype=object))
            seconds = chunk.seconds + chunk.compile_seconds
            _append(group, fmt.SECONDS, np.array([seconds], np.float64))
            _append(group, fmt.CHUNK_SIZES, np.array([len(filters) + len(failed)], np.int32))
            if self._new_device:
                _add_device_kind(f, self._provenance["device_kind"])
        self._new_device = False
        self._layers[layer] = (num_filters, images.shape[1], history.shape[1])
        self._every[layer] = every
        self._done.setdefault(layer, set()).update(int(i) for i in filters)
        self._done[layer].update(failed)

    def _check_open(self) -> None:
        if not self._release.alive:
            raise JaxvisError(f"the AtlasWriter of {self.path} is closed; open a new one")

    def finish(self) -> None:
        """Makes an overwrite live: the new atlas replaces the old one, atomically."""
        self._check_open()
        if self.path != self.live:
            os.replace(self.path, self.live)
            fsync_dir(os.path.dirname(self.live))
            self.path = self.live

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


def _check_target(path: str) -> None:
    if not path:
        raise JaxvisError("the atlas path is empty; give a file path like out.h5")
    if os.path.isdir(path):
        raise JaxvisError(f"{path} is a directory; the atlas must be a file path like out.h5")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise JaxvisError(f"cannot write {path}: directory {parent} does not exist")


def _write_root(f: h5py.File, prov: Mapping) -> None:
    from jaxvis import __version__

    weights = prov["weights"]
    attrs = {
        fmt.ATTR_FORMAT: fmt.FORMAT_NAME,
        fmt.ATTR_VERSION: np.int32(fmt.FORMAT_VERSION),
        fmt.ATTR_JAXVIS_VERSION: __version__,
        fmt.ATTR_CREATED: datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds"),
        fmt.ATTR_MODEL: str(prov["model"]),
        fmt.ATTR_WEIGHTS_SOURCE: str(weights.get("source", "")),
        fmt.ATTR_WEIGHTS_SHA256: str(weights.get("sha256", "")),
        fmt.ATTR_WEIGHTS_TRAINED: bool(weights.get("trained", True)),
        fmt.ATTR_PREPROCESSING: str(weights.get("preprocessing", "")),
        fmt.ATTR_WEIGHTS: json.dumps(weights, sort_keys=True),
        fmt.ATTR_CONFIG: json.dumps(prov["config"], sort_keys=True),
        fmt.ATTR_DEVICE_KIND: str(prov["device_kind"]),
        fmt.ATTR_DEVICE_KINDS: json.dumps([prov["device_kind"]]),
    }
    f.attrs.update(attrs)


def _add_device_kind(f: h5py.File, kind: str) -> None:
    kinds = json.loads(f.attrs.get(fmt.ATTR_DEVICE_KINDS, "[]"))
    f.attrs[fmt.ATTR_DEVICE_KINDS] = json.dumps([*kinds, kind])


def _layer_group(f: h5py.File, layer: str, num_filters: int) -> h5py.Group:
    if layer in f:
        return f[layer]
    group = f.create_group(layer)
    group.attrs[fmt.ATTR_NUM_FILTERS] = np.int32(num_filters)
    return group


def _ensure_data(group: h5py.Group, size: int, steps: int, every: int) -> None:
    """Creates the resizable datasets of a layer on its first chunk (``snapshots`` and
    ``snapshot_every`` only when ``every``, the chunk's K, is not 0)."""
    if fmt.IMAGES in group:
        return
    group.attrs[fmt.ATTR_IMAGE_SIZE] = np.int32(size)
    group.attrs[fmt.ATTR_STEPS] = np.int32(steps)
    pictures = {fmt.IMAGES: (size, size, 3)}
    if every:
        group.attrs[fmt.ATTR_SNAPSHOT_EVERY] = np.int32(every)
        pictures[fmt.SNAPSHOTS] = (steps // every, size, size, 3)
    for name, shape in pictures.items():  # one filter per HDF5 chunk: what readers fetch
        group.create_dataset(
            name,
            (0, *shape),
            np.uint8,
            maxshape=(None, *shape),
            chunks=(1, *shape),
            compression=fmt.IMAGE_COMPRESSION,
        )
    hist_rows = max(1, min(1024, 16384 // max(steps, 1)))
    group.create_dataset(
        fmt.HISTORY,
        (0, steps),
        np.float32,
        maxshape=(None, steps),
        chunks=(hist_rows, max(steps, 1)),
    )
    for name, dtype in [
        (fmt.FILTERS, np.int32),
        (fmt.OBJECTIVE, np.float32),
        (fmt.FAILED_FILTERS, np.int32),
        (fmt.SECONDS, np.float64),
        (fmt.CHUNK_SIZES, np.int32),
        (fmt.FAILED_MESSAGES, h5py.string_dtype()),
    ]:
        group.create_dataset(name, (0,), dtype, maxshape=(None,), chunks=(1024,))


def _append(group: h5py.Group, name: str, rows: np.ndarray) -> None:
    if not len(rows):
        return
    dset = group[name]
    start = dset.shape[0]
    dset.resize(start + len(rows), axis=0)
    dset[start:] = rows
