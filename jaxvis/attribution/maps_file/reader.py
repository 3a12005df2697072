"""Read-only access to a checked maps file: :func:`open_maps` and :class:`MapsFile`."""

from __future__ import annotations

import os

import h5py
import numpy as np

from jaxvis.attribution.maps_file.check import Header, check_maps, open_h5, strings
from jaxvis.attribution.maps_file.format import DONE, MAPS, PATHS, SHA256, TARGETS


def open_maps(path: str | os.PathLike) -> MapsFile:
    """Opens a maps file for reading once it is checked; use it as a context manager."""
    path = os.fspath(path)
    f = open_h5(path)
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
        self.paths = strings(file[PATHS])
        self.sha256 = strings(file[SHA256])
        self.targets = strings(file[TARGETS])
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
