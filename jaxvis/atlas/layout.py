"""What a layer group of an atlas must look like before any of its data is read.

h5py reads as many entries as a dataset declares, whether or not the file holds them
(unwritten chunks read as the fill value), and a compressed chunk is inflated whole to
read one entry of it. So a layer is checked in this order, metadata first: attributes;
each dataset's kind, dtype and rank; row counts against the layer's filter count and
against each other; widths against ``image_size`` and ``steps`` (and the optional
``snapshots`` against ``snapshot_every``); declared bytes against
the bytes the file stores; and only then the filter ids, which are read to check that
they are in range and unique. In version 3 the counts in ``committed`` are checked
against the capacity of the datasets they count (which must be uncompressed), and only
the committed filter ids are read. Every rule is one the writer (jaxvis/atlas/writer.py)
keeps, so no atlas it wrote is refused.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from jaxvis.atlas import format as fmt
from jaxvis.atlas.names import printable, shown
from jaxvis.errors import JaxvisError

# The writer's chunks are one picture, 1024 entries, or about 64 KiB of history.
MAX_CHUNK_BYTES = 16 * 2**20
# A compressed dataset may declare this many times the bytes it stores, plus the slack.
MAX_INFLATION = 64
INFLATION_SLACK = 2**20

# Dataset -> (dtype, shape), in the order they are checked: the filter ids lead.
SPECS = {
    fmt.FILTERS: ("int", "[N]"),
    fmt.OBJECTIVE: ("float", "[N]"),
    fmt.HISTORY: ("float", "[N, steps]"),
    fmt.IMAGES: ("uint8", "[N, H, W, 3]"),
    fmt.FAILED_FILTERS: ("int", "[F]"),
    fmt.FAILED_MESSAGES: ("str", "[F]"),
    fmt.REQUESTED: ("int", "[R]"),
    fmt.SECONDS: ("float", "[C]"),
    fmt.CHUNK_SIZES: ("int", "[C]"),
    fmt.SNAPSHOTS: ("uint8", "[N, S, H, W, 3]"),
}
# Datasets whose rows line up: all present or none, each as long as the first.
ROWS = (fmt.FILTERS, fmt.OBJECTIVE, fmt.HISTORY, fmt.IMAGES)
FAILED = (fmt.FAILED_FILTERS, fmt.FAILED_MESSAGES)


def check_layer(path: str, name: str, group: h5py.Group, version: int = 2) -> None:
    """Raises a one-line JaxvisError naming the first thing wrong with layer ``name``
    (of an atlas of format ``version``)."""
    where = f"/{printable(name)}"
    n = _layer_int(path, where, group.attrs, fmt.ATTR_NUM_FILTERS, 1)
    dsets = {key: _dataset(path, where, group, key) for key in SPECS if key in group}
    for key, dset in dsets.items():
        if dset.shape[0] > n:
            raise JaxvisError(
                f"{path}: {where}/{key} has {dset.shape[0]} rows; a layer of {n} filters "
                f"({fmt.ATTR_NUM_FILTERS}) has at most {n}"
            )
    written = _line_up(path, where, dsets, ROWS)
    failed = _line_up(path, where, dsets, FAILED)
    if fmt.IMAGES in dsets:
        _check_widths(path, where, group.attrs, dsets)
    _check_snapshots(path, where, group.attrs, dsets)
    for key, dset in dsets.items():
        _check_stored(path, f"{where}/{key}", dset)
    counts = None
    if version >= 3 or fmt.COMMITTED in group:
        counts = _check_committed(path, where, group, dsets)
        written, failed = counts[0], counts[1]
    if written + failed > n:
        raise JaxvisError(
            f"{path}: {where} has {written} filters written and {failed} failed; a layer "
            f"of {n} filters ({fmt.ATTR_NUM_FILTERS}) has at most {n}"
        )
    _check_ids(path, where, dsets, n, counts)


def _check_committed(path: str, where: str, group: h5py.Group, dsets: dict) -> tuple:
    """A version-3 layer's ``committed`` record: int [3], each count within the capacity
    of the datasets it counts, which store their rows raw (they are written in place)."""
    at = f"{where}/{fmt.COMMITTED}"
    if (fmt.COMMITTED in group) != (fmt.IMAGES in dsets):
        has, lacks = (at, fmt.IMAGES) if fmt.COMMITTED in group else (f"{where}/images", at)
        raise JaxvisError(
            f"{path}: a version-3 atlas has {has} but no {lacks}; expected both or neither"
        )
    if fmt.COMMITTED not in group:
        return (0, 0, 0)
    record = group[fmt.COMMITTED]
    if not isinstance(record, h5py.Dataset) or record.shape != (3,) or record.dtype.kind != "i":
        got = _describe(record) if isinstance(record, h5py.Dataset) else "not a dataset"
        raise JaxvisError(f"{path}: {at} is {got}; expected int64 [3] (rows, failed, chunks)")
    counts = [int(c) for c in record[()]]
    for key, field in fmt.COUNTED_BY.items():
        if key not in dsets:
            continue
        if dsets[key].id.get_create_plist().get_nfilters():
            raise JaxvisError(
                f"{path}: {where}/{key} is compressed; a version-3 atlas stores its rows "
                "raw, so that they can be written in place"
            )
        capacity = dsets[key].shape[0]
        if not 0 <= counts[field] <= capacity:
            raise JaxvisError(
                f"{path}: {at} counts {counts[field]} {fmt.COMMITTED_FIELDS[field]}; "
                f"expected 0 to {capacity}, the rows {where}/{key} holds"
            )
    return tuple(counts)


def integer(value: object) -> int | None:
    """An integer attribute as int; None for anything else (bools, floats, strings)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        return None
    return int(value)


def _layer_int(path: str, where: str, attrs, key: str, minimum: int) -> int:
    value = integer(attrs[key]) if key in attrs else None
    if value is None or value < minimum:
        got = shown(attrs[key]) if key in attrs else "missing"
        raise JaxvisError(
            f"{path}: {where} attribute {key!r} is {got}; expected an integer >= {minimum}"
        )
    return value


def _dataset(path: str, where: str, group: h5py.Group, key: str) -> h5py.Dataset:
    kind, dims = SPECS[key]
    obj = group[key]
    if not isinstance(obj, h5py.Dataset):
        what = "a group" if isinstance(obj, h5py.Group) else "not a dataset"
        raise JaxvisError(f"{path}: {where}/{key} is {what}; expected a {kind} dataset {dims}")
    ndim = dims.count(",") + 1
    if obj.shape is None or len(obj.shape) != ndim or not _is_kind(obj.dtype, kind):
        raise JaxvisError(f"{path}: {where}/{key} is {_describe(obj)}; expected {kind} {dims}")
    return obj


def _is_kind(dtype: np.dtype, kind: str) -> bool:
    if kind == "str":
        return h5py.check_string_dtype(dtype) is not None
    if kind == "uint8":
        return dtype == np.uint8
    return dtype.kind in ("iu" if kind == "int" else "f")


def _describe(dset: h5py.Dataset) -> str:
    shape = "(no shape)" if dset.shape is None else list(dset.shape)
    return f"{dset.dtype} {shape}"


def _line_up(path: str, where: str, dsets: dict, keys: tuple[str, ...]) -> int:
    """The common row count of ``keys``, which must be all present or all missing."""
    present = [k for k in keys if k in dsets]
    if not present:
        return 0
    if len(present) < len(keys):
        missing = next(k for k in keys if k not in dsets)
        raise JaxvisError(
            f"{path}: {where} has {present[0]} but no {missing}; expected "
            f"{', '.join(keys[:-1])} and {keys[-1]} together"
        )
    lead = dsets[keys[0]].shape[0]
    for key in keys[1:]:
        if dsets[key].shape[0] != lead:
            raise JaxvisError(
                f"{path}: {where}/{key} has {dsets[key].shape[0]} rows; expected {lead}, "
                f"as {where}/{keys[0]}"
            )
    return lead


def _check_widths(path: str, where: str, attrs, dsets: dict) -> None:
    """images must be [N, image_size, image_size, 3] and history [N, steps]."""
    size = _layer_int(path, where, attrs, fmt.ATTR_IMAGE_SIZE, 1)
    steps = _layer_int(path, where, attrs, fmt.ATTR_STEPS, 0)
    n = dsets[fmt.IMAGES].shape[0]
    wanted = {
        fmt.IMAGES: ((n, size, size, 3), f"{fmt.ATTR_IMAGE_SIZE} {size}"),
        fmt.HISTORY: ((n, steps), f"{fmt.ATTR_STEPS} {steps}"),
    }
    for key, (shape, why) in wanted.items():
        if dsets[key].shape != shape:
            raise JaxvisError(
                f"{path}: {where}/{key} is {_describe(dsets[key])}; expected "
                f"{SPECS[key][0]} {list(shape)} ({why})"
            )


def _check_snapshots(path: str, where: str, attrs, dsets: dict) -> None:
    """snapshots and snapshot_every together, beside images, as [N, steps // K, H, W, 3]."""
    has_attr, has_data = fmt.ATTR_SNAPSHOT_EVERY in attrs, fmt.SNAPSHOTS in dsets
    if not has_attr and not has_data:
        return
    attr = f"attribute {fmt.ATTR_SNAPSHOT_EVERY!r}"
    lacking = None
    if not has_data:
        lacking = (attr, f"no {fmt.SNAPSHOTS}")
    elif not has_attr:
        lacking = (fmt.SNAPSHOTS, f"no {attr}")
    elif fmt.IMAGES not in dsets:
        lacking = (fmt.SNAPSHOTS, f"no {fmt.IMAGES}")
    if lacking:
        raise JaxvisError(
            f"{path}: {where} has {lacking[0]} but {lacking[1]}; expected {fmt.SNAPSHOTS}, "
            f"{attr} and {fmt.IMAGES} together, or no snapshots"
        )
    every = _layer_int(path, where, attrs, fmt.ATTR_SNAPSHOT_EVERY, 1)
    size = _layer_int(path, where, attrs, fmt.ATTR_IMAGE_SIZE, 1)
    steps = _layer_int(path, where, attrs, fmt.ATTR_STEPS, 0)
    if every > steps:
        raise JaxvisError(
            f"{path}: {where} attribute {fmt.ATTR_SNAPSHOT_EVERY!r} is {every}; expected "
            f"1 to {steps} ({fmt.ATTR_STEPS})"
        )
    shape = (dsets[fmt.IMAGES].shape[0], steps // every, size, size, 3)
    if dsets[fmt.SNAPSHOTS].shape != shape:
        raise JaxvisError(
            f"{path}: {where}/{fmt.SNAPSHOTS} is {_describe(dsets[fmt.SNAPSHOTS])}; expected "
            f"uint8 {list(shape)} ({fmt.IMAGES} rows, {fmt.ATTR_STEPS} {steps} // "
            f"{fmt.ATTR_SNAPSHOT_EVERY} {every}, {fmt.ATTR_IMAGE_SIZE} {size})"
        )


def _check_stored(path: str, at: str, dset: h5py.Dataset) -> None:
    """Refuses data that is declared but not in the file, and chunks too big to read."""
    plist = dset.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    missing = [c for c in codes if not h5py.h5z.filter_avail(c)]
    if missing:
        raise JaxvisError(
            f"{path}: {at} is compressed with HDF5 filter {missing[0]}, which this h5py "
            "cannot decode; expected uncompressed data, or gzip or lzf"
        )
    declared, stored = dset.nbytes, dset.id.get_storage_size()
    limit = stored * MAX_INFLATION + INFLATION_SLACK if codes else stored
    if declared > limit:
        expected = (
            f"expected at most {MAX_INFLATION}x that, compressed"
            if codes
            else "expected its data in the file (unwritten data reads as fill values)"
        )
        raise JaxvisError(
            f"{path}: {at} declares {_size(declared)} but stores {_size(stored)}; {expected}"
        )
    if dset.chunks:
        chunk = math.prod(dset.chunks) * dset.dtype.itemsize
        row = math.prod(dset.shape[1:]) * dset.dtype.itemsize
        if chunk > max(MAX_CHUNK_BYTES, row):
            raise JaxvisError(
                f"{path}: {at} is stored in chunks of {_size(chunk)}; expected at most "
                f"{_size(MAX_CHUNK_BYTES)} or one row"
            )


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _check_ids(path: str, where: str, dsets: dict, n: int, counts) -> None:
    """Filter ids in [0, n), each written or failed at most once (of the committed rows
    only, given the ``counts`` of a version-3 layer)."""
    ends = {fmt.FILTERS: None, fmt.FAILED_FILTERS: None, fmt.REQUESTED: None}
    if counts is not None:
        ends[fmt.FILTERS], ends[fmt.FAILED_FILTERS] = counts[0], counts[1]
    ids = {
        key: np.asarray(dsets[key][:end]).astype(np.int64) if key in dsets else np.zeros(0, int)
        for key, end in ends.items()
    }
    for key, values in ids.items():
        bad = values[(values < 0) | (values >= n)]
        if bad.size:
            raise JaxvisError(
                f"{path}: {where}/{key} holds filter {int(bad[0])}; expected filters 0 to "
                f"{n - 1} ({fmt.ATTR_NUM_FILTERS} {n})"
            )
    done = np.concatenate([ids[fmt.FILTERS], ids[fmt.FAILED_FILTERS]])
    values, counts = np.unique(done, return_counts=True)
    if (counts > 1).any():
        raise JaxvisError(
            f"{path}: {where} holds filter {int(values[counts > 1][0])} twice in "
            f"{fmt.FILTERS} and {fmt.FAILED_FILTERS}; expected each filter at most once"
        )
