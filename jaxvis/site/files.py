"""Writing a site's files: only inside its folder, each atomically, and only what changed.

Every path is relative to the site folder and made of checked parts (``[A-Za-z0-9_.-]``,
never ``.`` or ``..``); a folder on the way that is a symbolic link is refused, and each
file is written to a fresh temporary name and renamed over the old one (a rename replaces
a link instead of following it). So nothing is ever written outside the folder, and a
kill never leaves a half-written file.

A manifest (``.jaxvis-site.json``) records a key for every file the site holds: the
hash of the inputs it was made from. Rebuilding after the atlas grows re-encodes only
the files whose inputs changed; files of the old site that the new one lacks are
removed, and nothing else in the folder is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re

from jaxvis.errors import JaxvisError

MANIFEST = ".jaxvis-site.json"
MANIFEST_VERSION = 1
_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def digest(*parts: bytes | str) -> str:
    """A short hash of ``parts``, the key of a file made from them."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def check_rel(rel: str) -> list[str]:
    """The parts of a site-relative path; a JaxvisError unless every part is safe."""
    parts = rel.split("/")
    if not rel or any(not _PART.fullmatch(p) or p in (".", "..") for p in parts):
        raise JaxvisError(f"unsafe site path {rel!r}; parts must match [A-Za-z0-9_.-]+")
    return parts


class SiteFiles:
    """The files of one site folder, written through :meth:`write` and :meth:`fresh`."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        self._old = _open_folder(self.root)
        self._new: dict[str, str] = {}
        self.written: list[str] = []
        self.kept: list[str] = []
        self.removed: list[str] = []

    def fresh(self, rel: str, key: str) -> bool:
        """Whether ``rel`` already holds what ``key`` describes; if so it is kept."""
        check_rel(rel)
        path = os.path.join(self.root, rel)
        if self._old.get(rel) == key and os.path.isfile(path) and not os.path.islink(path):
            self._new[rel] = key
            self.kept.append(rel)
            return True
        return False

    def write(self, rel: str, data: bytes | str, key: str | None = None) -> None:
        """Writes ``data`` to ``rel`` unless it holds it already (``key`` defaults to the
        hash of ``data``, so a page that did not change is not rewritten)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        key = key or digest(data)
        if self.fresh(rel, key):
            return
        parts = check_rel(rel)
        folder = self._folder(parts[:-1])
        _atomic_write(os.path.join(folder, parts[-1]), data)
        self._new[rel] = key
        self.written.append(rel)

    def _folder(self, parts: list[str]) -> str:
        path = self.root
        for part in parts:
            path = os.path.join(path, part)
            if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
                raise JaxvisError(
                    f"{path} is a link or a file; the site writes only into plain folders "
                    "inside its own; remove it and build again"
                )
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
        return path

    def finish(self) -> None:
        """Removes the old site's files that this build did not make, then records the
        manifest (last, so an interrupted build is redone in full next time)."""
        for rel in sorted(set(self._old) - set(self._new)):
            path = os.path.join(self.root, rel)
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                self.removed.append(rel)
        manifest = {"version": MANIFEST_VERSION, "files": dict(sorted(self._new.items()))}
        _atomic_write(os.path.join(self.root, MANIFEST), json.dumps(manifest).encode())


def _open_folder(root: str) -> dict[str, str]:
    """Creates ``root`` or checks it is a site folder; returns its manifest's files."""
    if os.path.lexists(root) and not os.path.isdir(root):
        raise JaxvisError(f"{root} is not a folder; give a new or empty folder for the site")
    if not os.path.isdir(root):
        parent = os.path.dirname(root)
        if not os.path.isdir(parent):
            raise JaxvisError(f"cannot create {root}: folder {parent} does not exist")
        os.mkdir(root)
        return {}
    manifest = os.path.join(root, MANIFEST)
    if not os.path.isfile(manifest):
        if os.listdir(root):
            raise JaxvisError(
                f"{root} is not empty and holds no jaxvis site ({MANIFEST}); give a new or "
                "empty folder, or one an earlier build wrote"
            )
        return {}
    return _read_manifest(manifest)


def _read_manifest(path: str) -> dict[str, str]:
    """The manifest's ``{path: key}``; entries that are not safe paths are dropped, so
    a tampered manifest cannot make :meth:`SiteFiles.finish` delete outside the folder."""
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(files, dict):
        return {}
    safe = {}
    for rel, key in files.items():
        with contextlib.suppress(JaxvisError):
            if isinstance(rel, str) and isinstance(key, str) and check_rel(rel):
                safe[rel] = key
    return safe


def _atomic_write(path: str, data: bytes) -> None:
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):  # left by a killed build of this pid
        os.remove(tmp)
    # Mode 0o666 under the umask, as any new file; O_EXCL|O_NOFOLLOW: never through a link.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
