"""Reading atlases with h5py and numpy only: no jax is imported here.

Analysis code and ``jaxvis info``/``export`` read atlases on machines without an
accelerator; importing jax there would cost seconds and a device probe for nothing.

An atlas is checked before any of its data is read (jaxvis/atlas/validate.py): a file
with links out of itself, or with shapes, dtypes or sizes the writer never writes, is
refused in one line, so a hostile or damaged file cannot redirect a write, exhaust memory
or raise a traceback. Names are printed escaped (jaxvis/atlas/names.py).

Example::

    from jaxvis.atlas import open_atlas

    with open_atlas("vgg16.h5") as atlas:
        view = atlas["block3_conv1"]
        picture = view.image(17)            # uint8 [H, W, 3]
        best = view.filters[view.objective.argmax()]
        if view.snapshots is not None:      # written with snapshots (jaxvis atlas --snapshots K)
            frames = view.snapshots[view.index(17)]  # uint8 [steps // K, H, W, 3]
"""

from __future__ import annotations

import functools
import json
import os

import h5py
import numpy as np

from jaxvis.atlas import format as fmt
from jaxvis.atlas.names import printable
from jaxvis.atlas.rows import CommittedRows
from jaxvis.atlas.validate import check_atlas, read_provenance
from jaxvis.errors import JaxvisError, choices


def _open_h5(path: str) -> h5py.File:
    """Opens ``path`` read-only, turning every failure into a one-line JaxvisError."""
    if not os.path.exists(path):
        raise JaxvisError(f"no such atlas file: {path}")
    if os.path.isdir(path):
        raise JaxvisError(f"{path} is a directory, not an atlas file")
    try:
        is_h5 = h5py.is_hdf5(path)
    except OSError as e:
        raise JaxvisError(f"cannot read {path}: {e.strerror or e}") from None
    if not is_h5:
        raise JaxvisError(f"{path} is not a jaxvis atlas (not an HDF5 file)")
    try:  # rows are committed after they are written, so readers need no lock
        # No chunk cache: a chunk read before a commit would hide the rows it adds.
        return h5py.File(path, "r", locking=False, rdcc_nbytes=0)
    except OSError as e:
        raise JaxvisError(f"cannot open {path} as HDF5: {str(e).splitlines()[0]}") from None


def check_atlas_file(path: str | os.PathLike) -> None:
    """Raises a one-line JaxvisError unless ``path`` is an atlas this version reads safely
    (jaxvis/atlas/validate.py): the writer calls it before it touches an existing file."""
    path = os.fspath(path)
    with _open_h5(path) as f:
        check_atlas(path, f)


def open_atlas(path: str | os.PathLike) -> Atlas:
    """Opens an atlas for reading, once it is checked (jaxvis/atlas/validate.py); use it
    as a context manager to close the file."""
    path = os.fspath(path)
    f = _open_h5(path)
    try:
        check_atlas(path, f)
    except BaseException:
        f.close()
        raise
    return Atlas(path, f)


class Atlas:
    """A read-only atlas: ``atlas.layers``, ``atlas[layer]``, ``atlas.provenance``."""

    def __init__(self, path: str, file: h5py.File):
        self.path = path
        self._file = file
        self.layers: list[str] = [k for k, v in file.items() if isinstance(v, h5py.Group)]

    @functools.cached_property
    def provenance(self) -> dict:
        """Format, versions, creation time, model, weights, config and device(s)."""
        return read_provenance(self.path, self._file.attrs)

    @property
    def config(self) -> dict:
        """The run config, parsed from the ``config`` JSON attribute."""
        return self.provenance["config"]

    def __getitem__(self, layer: str) -> LayerView:
        if layer not in self.layers:
            shown = [printable(name) for name in self.layers]
            raise JaxvisError(
                f"layer {layer!r} is not in {self.path}; layers in it: "
                f"{choices(shown) or '(none yet)'}"
            )
        return LayerView(layer, self._file[layer])

    def __contains__(self, layer: object) -> bool:
        return layer in self.layers

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def summary(self) -> str:
        """Provenance and per-layer progress as text (what ``jaxvis info`` prints), with
        every character that is not printable escaped (jaxvis/atlas/names.py)."""
        p = self.provenance
        w, c = p["weights"], p["config"]
        trained = "trained" if w.get("trained", True) else "UNTRAINED"
        lines = [
            f"atlas    {self.path} ({p['format']} v{p['format_version']}, "
            f"jaxvis {p['jaxvis_version']}, created {p['created']})",
            f"model    {p['model']}",
            f"weights  {w.get('source', '?')} ({trained}), preprocessing "
            f"{w.get('preprocessing', '?')}, sha256 {w.get('sha256') or '-'}",
            "config   "
            + " ".join(f"{k}={_flat(v)}" for k, v in sorted(c.items()) if len(_flat(v)) <= 24),
            *(f"         {k}: {_flat(v)}" for k, v in sorted(c.items()) if len(_flat(v)) > 24),
            f"device   {', '.join(p['device_kinds']) or p['device_kind']}",
        ]
        if not self.layers:
            return "\n".join(printable(line) for line in [*lines, "layers   (none yet)"])
        width = max(12, *(len(printable(name)) for name in self.layers))
        lines.append(
            f"{'layer':<{width}}  {'done':>9}  {'failed':>6}  {'in layer':>8}  "
            f"{'size':>4}  {'seconds':>8}"
        )
        for name in self.layers:
            v = self[name]
            lines.append(
                f"{printable(name):<{width}}  {f'{len(v) + len(v.failed)}/{v.num_requested}':>9}  "
                f"{len(v.failed):>6}  {v.num_filters_in_layer:>8}  "
                f"{v.image_size or '-':>4}  {v.seconds.sum():>8.1f}"
            )
        lines += [
            f"snapshots {name}: every {v.snapshot_every} steps, {v.snapshots.shape[1]} a filter"
            for name in self.layers
            if (v := self[name]).snapshots is not None
        ]
        return "\n".join(printable(line) for line in lines)


def committed_counts(group: h5py.Group) -> tuple[int, int, int]:
    """``(rows, failed, chunks)`` committed in a layer: its ``committed`` record (version
    3, checked by jaxvis/atlas/layout.py), or the datasets' lengths before version 3."""
    if fmt.COMMITTED in group:
        return tuple(int(c) for c in group[fmt.COMMITTED][()])
    lengths = [0, 0, 0]
    for key, field in fmt.COUNTED_BY.items():
        if key in group:
            lengths[field] = max(lengths[field], int(group[key].shape[0]))
    return tuple(lengths)


def _flat(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class LayerView:
    """One layer of an atlas. ``images`` and ``snapshots`` are lazy (slicing reads only
    what it needs); the rest are arrays. Only committed rows are shown: in a version-3
    atlas those ``committed`` counts, in older ones every row."""

    def __init__(self, name: str, group: h5py.Group):
        self.name = name
        self._group = group
        self._counts = committed_counts(group)

    def _array(self, key: str, dtype, width: tuple = ()) -> np.ndarray:
        if key in self._group:
            field = fmt.COUNTED_BY.get(key)
            return self._group[key][: None if field is None else self._counts[field]]
        return np.zeros((0, *width), dtype)

    @property
    def images(self) -> CommittedRows | np.ndarray:
        """uint8 [N, H, W, 3], the committed rows, read lazily (slicing reads only what it
        needs)."""
        if fmt.IMAGES in self._group:
            return CommittedRows(self._group[fmt.IMAGES], self._counts[0])
        return np.zeros((0, 0, 0, 3), np.uint8)

    @property
    def snapshots(self) -> CommittedRows | None:
        """uint8 [N, S, H, W, 3], rows as ``images``: snapshot s of a row is its picture
        after step ``(s + 1) * snapshot_every``; read lazily, or None for a layer written
        without snapshots."""
        if fmt.SNAPSHOTS not in self._group:
            return None
        return CommittedRows(self._group[fmt.SNAPSHOTS], self._counts[0])

    @property
    def snapshot_every(self) -> int:
        """K, the steps between snapshots; 0 for a layer without snapshots."""
        return int(self._group.attrs.get(fmt.ATTR_SNAPSHOT_EVERY, 0))

    @functools.cached_property
    def filters(self) -> np.ndarray:
        """int32 [N], the filter of each row of ``images``, ``objective``, ``history``."""
        return self._array(fmt.FILTERS, np.int32)

    @functools.cached_property
    def objective(self) -> np.ndarray:
        """float32 [N], final objective values."""
        return self._array(fmt.OBJECTIVE, np.float32)

    @functools.cached_property
    def history(self) -> np.ndarray:
        """float32 [N, steps], objective at each step, before its update."""
        return self._array(fmt.HISTORY, np.float32, (self.steps,))

    @functools.cached_property
    def failed(self) -> dict[int, str]:
        """``{filter: message}`` for filters that failed and have no image. Bytes that are
        not UTF-8 read as backslash escapes rather than failing the whole layer."""
        keys = self._array(fmt.FAILED_FILTERS, np.int32)
        msgs = self._array(fmt.FAILED_MESSAGES, object).tolist()
        return {
            int(k): m.decode("utf-8", "backslashreplace") if isinstance(m, bytes) else str(m)
            for k, m in zip(keys, msgs, strict=True)
        }

    @functools.cached_property
    def requested(self) -> np.ndarray:
        """int32 [R], sorted filters ever requested for this layer (may be empty)."""
        return self._array(fmt.REQUESTED, np.int32)

    @property
    def num_requested(self) -> int:
        """Filters requested, counting written ones that predate any request record."""
        return len(set(self.requested.tolist()) | set(self.filters.tolist()) | set(self.failed))

    @functools.cached_property
    def seconds(self) -> np.ndarray:
        """float64 [C], wall seconds of each chunk written."""
        return self._array(fmt.SECONDS, np.float64)

    @property
    def num_filters_in_layer(self) -> int:
        return int(self._group.attrs.get(fmt.ATTR_NUM_FILTERS, 0))

    @property
    def image_size(self) -> int:
        return int(self._group.attrs.get(fmt.ATTR_IMAGE_SIZE, 0))

    @property
    def steps(self) -> int:
        return int(self._group.attrs.get(fmt.ATTR_STEPS, 0))

    @property
    def objective_description(self) -> str:
        """The objective this layer's units maximized, e.g. ``"channel(block1_conv1:pre)"``
        ("" in a format-1 atlas, which kept it in the root config)."""
        return str(self._group.attrs.get(fmt.ATTR_OBJECTIVE, ""))

    @property
    def output_kind(self) -> str:
        """``"map"`` or ``"vector"``: the layer's output ("" in atlases before jaxvis 0.2)."""
        return str(self._group.attrs.get(fmt.ATTR_OUTPUT, ""))

    def __len__(self) -> int:
        return len(self.filters)

    def index(self, filter: int) -> int:
        """Row of ``filter`` in the arrays, or a one-line JaxvisError saying why not."""
        rows = np.flatnonzero(self.filters == filter)
        if len(rows):
            return int(rows[0])
        name = printable(self.name)
        if filter in self.failed:
            raise JaxvisError(f"filter {filter} of {name} failed: {printable(self.failed[filter])}")
        raise JaxvisError(
            f"filter {filter} of {name} is not in the atlas; it holds "
            f"{len(self)} filters: {choices(sorted(self.filters.tolist()), 20)}"
        )

    def image(self, filter: int) -> np.ndarray:
        """uint8 [H, W, 3] picture of ``filter``."""
        return self.images[self.index(filter)]
