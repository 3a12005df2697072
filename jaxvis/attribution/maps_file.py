"""The attribution maps file (docs/attribution-format.md): written crash-safely, read
with plain h5py, checked before use.

A maps file is created once, complete, as an atomic snapshot (jaxvis/atlas/snapshot.py):
every dataset at its final size, the maps preallocated (HDF5 early allocation, NaN until
written) and the done mask all zero. After that HDF5 never opens it for writing again: a
chunk's maps are written with ``os.pwrite`` into the bytes HDF5 allocated for them and
fsynced, and only then is the done mask rewritten in place and fsynced. HDF5's metadata
never changes, so the file always opens; maps written but not yet marked done are redone
by a resume. This replaces the atlases' copy per chunk, which costs O(file size) each
time (docs/atlas-format.md, "Cost"): 10,000 maps at 224 px are 2 GB.

A file is identified (a resume with anything else is refused, naming it) by the model,
its weights (jaxvis/atlas/identity.py) and dtype, the attributor's ``description``, the
image size, the images' SHA-256 in order, and each image's target. Paths may move.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import weakref

import h5py
import numpy as np

from jaxvis.atlas import format as atlas_format
from jaxvis.atlas.identity import check_same_run, normalized_provenance
from jaxvis.atlas.layout import integer
from jaxvis.atlas.names import printable, shown
from jaxvis.atlas.snapshot import acquire_lock, fsync_dir, release_lock, remove_stale, snapshot
from jaxvis.atlas.validate import check_self_contained
from jaxvis.attribution.images import ImageList
from jaxvis.errors import JaxvisError

FORMAT_NAME = "jaxvis-attribution-maps"
FORMAT_VERSION = 1
MAPS, DONE, PATHS, SHA256, TARGETS = "maps", "done", "paths", "sha256", "targets"
TODO, FINISHED, FAILED = 0, 1, 2  # values of the ``done`` mask
MAX_SIDE = 16384  # px; larger maps are refused as malformed
_AGAIN = "pass --overwrite to start it over, or choose another output file"
_F4 = np.dtype("<f4")


@dataclasses.dataclass(frozen=True)
class MapsRun:
    """Everything a maps file records about its run.

    Attributes:
      model: ``model.name``.
      weights: ``model.info.to_dict()``.
      dtype: the model's compute dtype (bf16 and fp32 maps differ).
      description: the attributor's ``description`` (method, layer, seed, every option).
      size: image side in pixels.
      images: the :class:`~jaxvis.attribution.images.ImageList`.
      targets: one target description per image, [N].
    """

    model: str
    weights: dict
    dtype: str
    description: dict
    size: int
    images: ImageList
    targets: tuple[str, ...]

    def provenance(self) -> dict:
        """The identity in the atlas's terms (jaxvis/atlas/identity.py)."""
        return _provenance(self.model, self.weights, self.dtype, self.description, self.size)


@dataclasses.dataclass(frozen=True)
class Header:
    """A checked maps file's attributes and shape."""

    n: int
    map_shape: tuple[int, ...]
    model: str
    weights: dict
    dtype: str
    method: str
    description: dict
    image_size: int
    skipped: list
    created: str

    def provenance(self) -> dict:
        return _provenance(self.model, self.weights, self.dtype, self.description, self.image_size)


def _provenance(model: str, weights: dict, dtype: str, description: dict, size: int) -> dict:
    """``{"model", "weights", "config"}``: the attributor's description, the image size and
    the dtype are the config; batch size and the like (``RUN_ONLY_CONFIG_KEYS``) are not."""
    config = {**description, "image_size": size, "dtype": dtype}
    return normalized_provenance({"model": model, "weights": weights, "config": config})


# --- reading --------------------------------------------------------------------------


def _open_h5(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise JaxvisError(f"no such maps file: {printable(path)}")
    try:
        if not h5py.is_hdf5(path):
            raise JaxvisError(f"{printable(path)} is not a jaxvis maps file (not an HDF5 file)")
        return h5py.File(path, "r", locking=False)
    except OSError as e:
        raise JaxvisError(f"cannot open {printable(path)}: {str(e).splitlines()[0]}") from None


def is_maps_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file that says it is a maps file (not yet checked)."""
    try:
        with h5py.File(os.fspath(path), "r", locking=False) as f:
            return _text(f.attrs.get("format")) == FORMAT_NAME
    except (OSError, ValueError):
        return False


def open_maps(path: str | os.PathLike) -> MapsFile:
    """Opens a maps file for reading once it is checked; use it as a context manager."""
    path = os.fspath(path)
    f = _open_h5(path)
    try:
        return MapsFile(path, f, check_maps(path, f))
    except BaseException:
        f.close()
        raise


class MapsFile:
    """A read-only maps file: ``header``, ``paths``, ``sha256``, ``targets``, ``done``,
    and :meth:`map`."""

    def __init__(self, path: str, file: h5py.File, header: Header):
        self.path, self.header, self._file = path, header, file
        self.paths = _strings(file[PATHS])
        self.sha256 = _strings(file[SHA256])
        self.targets = _strings(file[TARGETS])
        self.done = file[DONE][()]

    def map(self, i: int) -> np.ndarray:
        """float32 [H, W] (or [H, W, C]) map of image ``i``; NaN unless ``done[i] == 1``."""
        return np.asarray(self._file[MAPS][int(i)], np.float32)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MapsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_maps(path: str, f: h5py.File) -> Header:
    """The file's :class:`Header`, or a one-line JaxvisError naming what is malformed."""
    try:
        _check_format(path, f.attrs)
        check_self_contained(path, f)
        header = _header(path, f)
        _check_lists(path, f, header.n)
        return header
    except JaxvisError:
        raise
    except (OSError, LookupError, TypeError, ValueError, RuntimeError, RecursionError) as e:
        detail = printable(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise JaxvisError(f"{path} is a damaged maps file ({detail}); it cannot be read") from None


def _check_format(path: str, attrs) -> None:
    kind = _text(attrs.get("format"))
    if kind == atlas_format.FORMAT_NAME:
        raise JaxvisError(f"{path} is a jaxvis atlas, not an attribution maps file")
    if kind != FORMAT_NAME:
        raise JaxvisError(
            f"{path} is not a jaxvis maps file (an HDF5 file without format="
            f"{FORMAT_NAME!r}); jaxvis will not read or change it"
        )
    version = integer(attrs.get("format_version"))
    if version is None or not 1 <= version <= FORMAT_VERSION:
        raise JaxvisError(
            f"{path} has maps format_version {shown(attrs.get('format_version'))}; this "
            f"jaxvis reads version 1 to {FORMAT_VERSION}; upgrade jaxvis"
        )


def _header(path: str, f: h5py.File) -> Header:
    attrs = f.attrs
    maps = _dataset(path, f, MAPS)
    shape = maps.shape
    if maps.dtype != _F4 or not 3 <= len(shape) <= 4 or shape[0] < 1:
        raise _bad(path, MAPS, f"{maps.dtype} {list(shape)}", "float32 [N, H, W] or [N, H, W, C]")
    if any(not 1 <= s <= MAX_SIDE for s in shape[1:]) or maps.chunks != (1, *shape[1:]):
        raise _bad(path, MAPS, f"{list(shape)}, chunks {maps.chunks}", "one chunk per map")
    size = os.path.getsize(f.filename)  # the file open (a snapshot's copy is not at path)
    if maps.id.get_create_plist().get_nfilters() or shape[0] * _nbytes(shape[1:]) > size:
        raise _bad(path, MAPS, "compressed or larger than the file", "raw, preallocated maps")
    image_size = integer(attrs.get("image_size"))
    if image_size is None or not 1 <= image_size <= MAX_SIDE:
        raise _bad(path, "image_size", shown(attrs.get("image_size")), "a positive integer")
    return Header(
        n=int(shape[0]),
        map_shape=tuple(int(s) for s in shape[1:]),
        model=_str_attr(path, attrs, "model"),
        weights=_json_attr(path, attrs, "weights", dict),
        dtype=_str_attr(path, attrs, "model_dtype"),
        method=_str_attr(path, attrs, "method"),
        description=_json_attr(path, attrs, "description", dict),
        image_size=image_size,
        skipped=_json_attr(path, attrs, "skipped", list),
        created=_str_attr(path, attrs, "created"),
    )


def _check_lists(path: str, f: h5py.File, n: int) -> None:
    done = _dataset(path, f, DONE)
    if done.dtype != np.uint8 or done.shape != (n,) or done.id.get_storage_size() != n:
        raise _bad(path, DONE, f"{done.dtype} {list(done.shape)}", f"uint8 [{n}], stored")
    if not np.isin(done[()], (TODO, FINISHED, FAILED)).all():
        raise _bad(path, DONE, "other values", "0 (to do), 1 (done) or 2 (failed)")
    for name in (PATHS, SHA256, TARGETS):
        dset = _dataset(path, f, name)
        if h5py.check_string_dtype(dset.dtype) is None or dset.shape != (n,):
            raise _bad(path, name, f"{dset.dtype} {list(dset.shape)}", f"UTF-8 strings [{n}]")
    hashes = _strings(f[SHA256])
    if not all(len(h) == 64 and set(h) <= set("0123456789abcdef") for h in hashes):
        raise _bad(path, SHA256, "other text", "64 lowercase hex digits each")


def _dataset(path: str, f: h5py.File, name: str) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise JaxvisError(f"{path}: dataset /{name} is missing; it is not a complete maps file")
    return obj


def _bad(path: str, what: str, got: str, expected: str) -> JaxvisError:
    return JaxvisError(f"{path}: {what} is {got}; expected {expected}")


def _text(value) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value) if isinstance(value, str) else None


def _str_attr(path: str, attrs, key: str) -> str:
    text = _text(attrs.get(key))
    if text is None:
        raise _bad(path, f"root attribute {key!r}", shown(attrs.get(key)), "a string")
    return text


def _json_attr(path: str, attrs, key: str, kind: type):
    try:
        value = json.loads(_str_attr(path, attrs, key))
    except (ValueError, RecursionError):
        raise _bad(path, f"root attribute {key!r}", "not valid JSON", "JSON") from None
    if not isinstance(value, kind):
        raise _bad(path, f"root attribute {key!r}", type(value).__name__, kind.__name__)
    return value


def _strings(dset: h5py.Dataset) -> list[str]:
    return [str(s) for s in dset.asstr()[()]]


def _nbytes(map_shape) -> int:
    return int(np.prod(map_shape)) * _F4.itemsize


# --- writing ---------------------------------------------------------------------------


class MapsWriter:
    """Creates or resumes a maps file and writes chunks of maps into it.

    Args:
      path: the ``.h5`` file. An existing maps file of the same run is resumed; one of
        another run is refused, naming the difference; any other file is never touched.
      run: the :class:`MapsRun`.
      overwrite: build a new file beside the old one (``<out>.new``), which replaces it
        at a clean :meth:`finish`, as atlases do (jaxvis/atlas/writer.py).

    The file itself is created at the first :meth:`write`, when the maps' shape is known;
    a run stopped before that leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike, run: MapsRun, *, overwrite: bool = False):
        path = os.fspath(path)
        check_out(path)
        self.live = self.path = os.path.realpath(path)
        self.run = run
        self.status = np.zeros(len(run.images), np.uint8)  # the done mask
        self._prov = run.provenance()
        self._offsets: np.ndarray | None = None  # byte offset of each map, once created
        self._done_offset, self._map_shape = 0, ()
        self._fds: list[int] = []
        lock = acquire_lock(self.live)
        self._release = weakref.finalize(self, _cleanup, self._fds, lock, self.live)
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, overwrite: bool) -> None:
        exists = os.path.exists(self.live)
        if exists:
            with _open_h5(self.live) as f:
                check_maps(self.live, f)  # refuses foreign files before anything is touched
        remove_stale(self.live)
        if exists and overwrite:
            self.path = self.live + atlas_format.NEW_SUFFIX
            remove_stale(self.path)
            if os.path.exists(self.path) and self._resumable():
                self._resume()
        elif exists:
            self._resume()

    def _resumable(self) -> bool:
        try:
            with _open_h5(self.path) as f:
                self._check_same(f, check_maps(self.path, f))
        except JaxvisError:
            return False
        return True

    def _resume(self) -> None:
        with _open_h5(self.path) as f:
            header = check_maps(self.path, f)
            self._check_same(f, header)
            self.status = f[DONE][()]
        self._attach()

    def _check_same(self, f: h5py.File, header: Header) -> None:
        old = header.provenance()
        attrs = {"model": old["model"], "weights": json.dumps(old["weights"])}
        check_same_run(self.path, {**attrs, "config": json.dumps(old["config"])}, self._prov)
        images = self.run.images
        _same_list(self.path, "image", _strings(f[SHA256]), images.sha256, _strings(f[PATHS]))
        _same_list(self.path, "target", _strings(f[TARGETS]), self.run.targets)

    def todo(self) -> np.ndarray:
        """int64 [M]: images not done yet (failed ones are tried again)."""
        return np.flatnonzero(self.status != FINISHED).astype(np.int64)

    def write(self, indices: np.ndarray, maps: np.ndarray) -> None:
        """Writes maps of images ``indices`` (int [n]; float32 [n, H, W] or [n, H, W, C])
        and then marks them done; a kill in between leaves them to do."""
        self._check_open()
        indices = _check_indices(indices, len(self.status))
        maps = np.ascontiguousarray(maps, _F4)
        if maps.ndim not in (3, 4) or len(maps) != len(indices):
            raise JaxvisError(
                f"expected maps [{len(indices)}, H, W] for {len(indices)} images; got "
                f"{list(maps.shape)}"
            )
        if self._offsets is None:
            self._create(maps.shape[1:])
        if maps.shape[1:] != self._map_shape:
            raise JaxvisError(
                f"maps of shape {list(maps.shape[1:])} cannot go into {self.path}, which holds "
                f"maps of shape {list(self._map_shape)}"
            )
        fd = self._fds[0]
        for i, row in zip(indices.tolist(), maps, strict=True):
            _pwrite(fd, row.tobytes(), int(self._offsets[i]))
        os.fsync(fd)
        self._mark(indices, FINISHED)

    def fail(self, indices) -> None:
        """Marks images as failed (their maps stay NaN; a resume tries them again)."""
        self._check_open()
        indices = _check_indices(indices, len(self.status))
        if self._offsets is None:  # not created yet: recorded at creation
            self.status[indices] = FAILED
            return
        self._mark(indices, FAILED)

    def _mark(self, indices: np.ndarray, value: int) -> None:
        self.status[indices] = value
        # The whole mask, N bytes: a torn write mixes old and new values, both valid.
        _pwrite(self._fds[0], self.status.tobytes(), self._done_offset)
        os.fsync(self._fds[0])

    def _create(self, map_shape: tuple[int, ...]) -> None:
        n = len(self.status)
        verify = functools.partial(check_maps, self.path)  # the copy, before its rename
        with snapshot(self.path, fresh=True, new_bytes=n * _nbytes(map_shape), verify=verify) as f:
            _write_root(f, self.run)
            _write_lists(f, self.run, self.status)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # every map's bytes, now
            shape = (n, *map_shape)
            f.create_dataset(
                MAPS, shape, _F4, chunks=(1, *map_shape), maxshape=(None, *map_shape),
                fillvalue=np.nan, dcpl=dcpl,
            )  # fmt: skip
        self._attach()

    def _attach(self) -> None:
        """Reads where the raw bytes of the maps and the mask are, and opens the file for
        ``pwrite`` (HDF5 never opens it for writing again)."""
        with _open_h5(self.path) as f:
            self._offsets, self._done_offset = _raw_layout(self.path, f)
            self._map_shape = tuple(f[MAPS].shape[1:])
        self._fds.append(os.open(self.path, os.O_RDWR))

    def _check_open(self) -> None:
        if not self._release.alive:
            raise JaxvisError(f"the MapsWriter of {self.path} is closed; open a new one")

    def finish(self) -> None:
        """Makes an overwrite live: the new file replaces the old one, atomically."""
        self._check_open()
        if self.path != self.live and os.path.exists(self.path):
            os.replace(self.path, self.live)
            fsync_dir(os.path.dirname(self.live))
            self.path = self.live

    def close(self) -> None:
        """Releases the lock; an unfinished overwrite stays in ``<out>.new``."""
        self._release()

    def __enter__(self) -> MapsWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None and self._release.alive:
                self.finish()
        finally:
            self.close()


def _cleanup(fds: list[int], lock, path: str) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()
    release_lock(lock, path)


def check_out(path: str) -> None:
    """A one-line JaxvisError unless ``path`` can be a maps file to write (before any
    work is done)."""
    if not path or os.path.isdir(path):
        raise JaxvisError(f"{path!r} is not a file path; give the maps file like maps.h5")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise JaxvisError(f"cannot write {path}: directory {parent} does not exist")


def _check_indices(indices, n: int) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
        raise JaxvisError(f"image indices must be integers [n]; got {indices.dtype}")
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise JaxvisError(f"image indices must be in [0, {n}); got {int(indices.max())}")
    return indices


def _same_list(path: str, what: str, old, new, old_paths=None) -> None:
    if len(old) != len(new):
        raise JaxvisError(
            f"{path} was made with different settings ({len(old)} {what}s in the file, "
            f"{len(new)} now); {_AGAIN}"
        )
    i = next((i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b), None)
    if i is not None:
        where = f" ({printable(old_paths[i])})" if old_paths else ""
        raise JaxvisError(
            f"{path} was made with different settings ({what} {i}{where}: "
            f"{printable(old[i])!r} in the file, {printable(new[i])!r} now); {_AGAIN}"
        )


def _raw_layout(path: str, f: h5py.File) -> tuple[np.ndarray, int]:
    """Byte offsets of each map and of the done mask, checked to be inside the file and
    apart, so that a resume's ``pwrite`` lands only on raw data HDF5 allocated."""
    maps, done = f[MAPS], f[DONE]
    n, nbytes = maps.shape[0], _nbytes(maps.shape[1:])
    zeros = (0,) * (maps.ndim - 1)
    offsets = np.empty(n, np.int64)
    for i in range(n):
        info = maps.id.get_chunk_info_by_coord((i, *zeros))
        if info.byte_offset is None or info.size != nbytes:
            raise JaxvisError(f"{path}: map {i} is not preallocated; it is not a maps file")
        offsets[i] = info.byte_offset
    done_offset = done.id.get_offset()
    if done.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS or done_offset is None:
        raise JaxvisError(f"{path}: /{DONE} is not stored contiguously; it is not a maps file")
    starts = np.append(offsets, done_offset)
    ends = starts + np.append(np.full(n, nbytes), n)
    order = np.argsort(starts)
    if (
        starts.min() < 0
        or ends.max() > os.path.getsize(f.filename)
        or (np.any(starts[order][1:] < ends[order][:-1]))
    ):
        raise JaxvisError(f"{path}: its data overlaps or lies outside the file; it is damaged")
    return offsets, int(done_offset)


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_root(f: h5py.File, run: MapsRun) -> None:
    from jaxvis import __version__

    skipped = [list(s) for s in run.images.skipped]
    f.attrs.update(
        {
            "format": FORMAT_NAME,
            "format_version": np.int32(FORMAT_VERSION),
            "jaxvis_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds"),
            "model": run.model,
            "weights": json.dumps(run.weights, sort_keys=True),
            "model_dtype": run.dtype,
            "method": str(run.description.get("method", "")),
            "description": json.dumps(run.description, sort_keys=True, default=str),
            "image_size": np.int32(run.size),
            "skipped": json.dumps(skipped),
        }
    )


def _write_lists(f: h5py.File, run: MapsRun, status: np.ndarray) -> None:
    text = h5py.string_dtype()
    f.create_dataset(DONE, data=status.astype(np.uint8))  # contiguous: one offset
    f.create_dataset(PATHS, data=np.array(run.images.paths, dtype=object), dtype=text)
    f.create_dataset(SHA256, data=np.array(run.images.sha256, dtype=object), dtype=text)
    f.create_dataset(TARGETS, data=np.array(run.targets, dtype=object), dtype=text)
