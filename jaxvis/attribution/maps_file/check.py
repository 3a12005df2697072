"""Opening a maps file and checking it before any use: a file may come from anyone.

:func:`check_maps` refuses, in one line with names escaped, anything but a self-contained
file (jaxvis/atlas/validate.py) whose attributes have their types, whose ``maps`` are raw
float32 with one preallocated chunk per map and no larger than the file, and whose
``done``, ``paths``, ``sha256`` and ``targets`` have N rows of the right kinds and values
(docs/attribution-format.md, "Files from elsewhere").
"""

from __future__ import annotations

import dataclasses
import json
import os

import h5py
import numpy as np

from jaxvis.atlas import format as atlas_format
from jaxvis.atlas.layout import integer
from jaxvis.atlas.names import printable, shown
from jaxvis.atlas.validate import check_self_contained
from jaxvis.attribution.maps_file import run as run_identity
from jaxvis.attribution.maps_file.format import (
    DONE,
    F4,
    FAILED,
    FINISHED,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAPS,
    MAX_SIDE,
    PATHS,
    SHA256,
    TARGETS,
    TODO,
    nbytes,
)
from jaxvis.errors import JaxvisError


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
        """The identity in the atlas's terms, as :meth:`MapsRun.provenance` gives it."""
        return run_identity.provenance(
            self.model, self.weights, self.dtype, self.description, self.image_size
        )


def open_h5(path: str) -> h5py.File:
    """The HDF5 file at ``path``, read-only and unchecked, or a one-line JaxvisError."""
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
            return text(f.attrs.get("format")) == FORMAT_NAME
    except (OSError, ValueError):
        return False


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
    kind = text(attrs.get("format"))
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
    if maps.dtype != F4 or not 3 <= len(shape) <= 4 or shape[0] < 1:
        raise _bad(path, MAPS, f"{maps.dtype} {list(shape)}", "float32 [N, H, W] or [N, H, W, C]")
    if any(not 1 <= s <= MAX_SIDE for s in shape[1:]) or maps.chunks != (1, *shape[1:]):
        raise _bad(path, MAPS, f"{list(shape)}, chunks {maps.chunks}", "one chunk per map")
    size = os.path.getsize(f.filename)  # the file open (a snapshot's copy is not at path)
    if maps.id.get_create_plist().get_nfilters() or shape[0] * nbytes(shape[1:]) > size:
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
    hashes = strings(f[SHA256])
    if not all(len(h) == 64 and set(h) <= set("0123456789abcdef") for h in hashes):
        raise _bad(path, SHA256, "other text", "64 lowercase hex digits each")


def _dataset(path: str, f: h5py.File, name: str) -> h5py.Dataset:
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise JaxvisError(f"{path}: dataset /{name} is missing; it is not a complete maps file")
    return obj


def _bad(path: str, what: str, got: str, expected: str) -> JaxvisError:
    return JaxvisError(f"{path}: {what} is {got}; expected {expected}")


def text(value) -> str | None:
    """An attribute as text (str, or UTF-8 bytes), else None."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value) if isinstance(value, str) else None


def _str_attr(path: str, attrs, key: str) -> str:
    value = text(attrs.get(key))
    if value is None:
        raise _bad(path, f"root attribute {key!r}", shown(attrs.get(key)), "a string")
    return value


def _json_attr(path: str, attrs, key: str, kind: type):
    try:
        value = json.loads(_str_attr(path, attrs, key))
    except (ValueError, RecursionError):
        raise _bad(path, f"root attribute {key!r}", "not valid JSON", "JSON") from None
    if not isinstance(value, kind):
        raise _bad(path, f"root attribute {key!r}", type(value).__name__, kind.__name__)
    return value


def strings(dset: h5py.Dataset) -> list[str]:
    """A string dataset [N] as a list of str."""
    return [str(s) for s in dset.asstr()[()]]
