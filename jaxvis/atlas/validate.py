"""Checking an atlas before anything reads its data: self-contained, well formed, bounded.

An atlas is a file that may come from anyone (a download, a colleague's run), and h5py
trusts it: it follows links into other files, so a resume would write there; it reads
as many entries as a dataset declares, so a 200 KB file can ask for gigabytes; and
``jaxvis info`` would print names as they are, terminal escapes included. So
:func:`check_atlas` looks at every link, attribute, shape, dtype and declared size
first, and refuses what the writer (jaxvis/atlas/writer.py) does not write, with one
line that names the attribute or dataset and says what was expected. Only the filter
ids are read, once their counts are checked against the layer.

The reader runs it on open, and ``check_atlas_file`` (jaxvis/atlas/reader.py) runs it
for the writer before it touches an existing atlas.
"""

from __future__ import annotations

import json

import h5py

from jaxvis.atlas import format as fmt
from jaxvis.atlas.layout import check_layer, integer
from jaxvis.atlas.names import printable, shown
from jaxvis.errors import JaxvisError

SELF_CONTAINED = "jaxvis reads only self-contained atlases"


def check_atlas(path: str, f: h5py.File) -> None:
    """Raises a one-line JaxvisError unless ``f`` is an atlas this jaxvis reads safely."""
    try:
        version = check_format(path, f.attrs)
        check_self_contained(path, f)
        read_provenance(path, f.attrs)
        for name, obj in f.items():
            if isinstance(obj, h5py.Group):
                check_layer(path, name, obj, version)
    except JaxvisError:
        raise
    except (OSError, LookupError, TypeError, ValueError, RuntimeError, RecursionError) as e:
        # A file damaged in a way no check above names: still one line, no traceback.
        detail = printable(str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise JaxvisError(f"{path} is a damaged atlas ({detail}); it cannot be read") from None


def check_format(path: str, attrs) -> int:
    """The atlas's ``format_version``, or a JaxvisError if it is not an atlas we read."""
    if _text(attrs.get(fmt.ATTR_FORMAT)) != fmt.FORMAT_NAME:
        raise JaxvisError(
            f"{path} is not a jaxvis atlas (an HDF5 file without "
            f"format={fmt.FORMAT_NAME!r}); jaxvis will not read or change it"
        )
    raw = attrs.get(fmt.ATTR_VERSION)
    version = integer(raw)
    if version is None:
        raise JaxvisError(
            f"{path}: root attribute 'format_version' is {shown(raw)}; expected an "
            f"integer from 1 to {fmt.FORMAT_VERSION}"
        )
    if version > fmt.FORMAT_VERSION or version < 1:
        raise JaxvisError(
            f"{path} has atlas format_version {version}; this jaxvis reads "
            f"versions 1 to {fmt.FORMAT_VERSION}; upgrade jaxvis"
        )
    return version


def check_self_contained(path: str, f: h5py.File) -> None:
    """Refuses soft and external links, virtual datasets and external raw storage.

    Walks every group through hard links only, never following another kind, so that
    nothing jaxvis reads, and nothing the writer appends, can be in another file. Hard
    links may form cycles (a group linked into its own child); each object is seen once.
    """
    root = f["/"]
    seen = {root.id}
    todo = [(root, "")]
    while todo:
        group, where = todo.pop()
        for name in group:
            at = f"{where}/{_name(path, where, name)}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                target = f"{printable(link.filename)}:{printable(link.path)}"
                _refuse(path, f"an external link {printable(at)} -> {target}")
            if isinstance(link, h5py.SoftLink):
                _refuse(path, f"a soft link {printable(at)} -> {printable(link.path)}")
            if not isinstance(link, h5py.HardLink):
                _refuse(path, f"a link of unknown kind at {printable(at)}")
            obj = group[name]
            if isinstance(obj, h5py.Dataset):
                _check_storage_here(path, at, obj)
            if isinstance(obj, h5py.Group) and obj.id not in seen:
                seen.add(obj.id)
                todo.append((obj, at))


def _name(path: str, where: str, name) -> str:
    if isinstance(name, str):
        return name
    raise JaxvisError(
        f"{path} holds a name that is not UTF-8 in {printable(where or '/')}: "
        f"{printable(repr(name))}; jaxvis reads only atlases with UTF-8 names"
    )


def _check_storage_here(path: str, at: str, dset: h5py.Dataset) -> None:
    if dset.is_virtual:
        sources = sorted({f"{m.file_name}:{m.dset_name}" for m in dset.virtual_sources()})
        origin = f"mapped from {printable(sources[0])}" if sources else "with no sources"
        _refuse(path, f"a virtual dataset {printable(at)}, {origin}")
    if dset.external:
        files = ", ".join(sorted({printable(str(name)) for name, *_ in dset.external}))
        _refuse(path, f"a dataset {printable(at)} that stores its data in {files}")


def _refuse(path: str, what: str) -> None:
    raise JaxvisError(f"{path} holds {what}; {SELF_CONTAINED}")


def read_provenance(path: str, attrs) -> dict:
    """Format, versions, creation time, model, weights, config and device(s), checked.

    ``model``, ``weights`` and ``config`` are the run's identity (jaxvis/atlas/identity.py)
    and must be there; the rest may be missing in hand-made files and read as empty.
    """
    kinds = _json_attr(path, attrs, fmt.ATTR_DEVICE_KINDS, list, required=False)
    if not all(isinstance(k, str) for k in kinds):
        raise JaxvisError(
            f"{path}: root attribute 'device_kinds' is {shown(kinds)}; expected a JSON list "
            "of strings"
        )
    return {
        "format": fmt.FORMAT_NAME,
        "format_version": check_format(path, attrs),
        "jaxvis_version": _str_attr(path, attrs, fmt.ATTR_JAXVIS_VERSION, required=False),
        "created": _str_attr(path, attrs, fmt.ATTR_CREATED, required=False),
        "model": _str_attr(path, attrs, fmt.ATTR_MODEL, required=True),
        "weights": _json_attr(path, attrs, fmt.ATTR_WEIGHTS, dict, required=True),
        "config": _json_attr(path, attrs, fmt.ATTR_CONFIG, dict, required=True),
        "device_kind": _str_attr(path, attrs, fmt.ATTR_DEVICE_KIND, required=False),
        "device_kinds": kinds,
    }


def _text(value) -> str | None:
    """A string attribute as str (h5py gives bytes for fixed-length strings), else None."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _str_attr(path: str, attrs, key: str, *, required: bool) -> str:
    if key not in attrs:
        if required:
            raise JaxvisError(f"{path}: root attribute {key!r} is missing; expected a string")
        return ""
    value = attrs[key]
    text = _text(value)
    if text is None:
        raise JaxvisError(f"{path}: root attribute {key!r} is {shown(value)}; expected a string")
    return text


def _json_attr(path: str, attrs, key: str, kind: type, *, required: bool):
    expected = "a JSON object" if kind is dict else "a JSON list"
    if key not in attrs and not required:
        return kind()
    text = _str_attr(path, attrs, key, required=required)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise JaxvisError(
            f"{path}: root attribute {key!r} is not valid JSON ({reason}); expected {expected}"
        ) from None
    if not isinstance(value, kind):
        got = {list: "a JSON list", dict: "a JSON object"}.get(type(value), "a JSON value")
        raise JaxvisError(f"{path}: root attribute {key!r} is {got}; expected {expected}")
    return value
