"""The committed rows of a preallocated dataset, read lazily.

A version-3 atlas preallocates each layer's datasets to a capacity and counts the rows
written in ``committed`` (jaxvis/atlas/format.py); entries past the count hold whatever
a killed write left. :class:`CommittedRows` shows only the first ``n`` rows of an h5py
dataset and reads only what is indexed, so ``view.images[17]`` reads one picture.
"""

from __future__ import annotations

import h5py
import numpy as np


class CommittedRows:
    """Rows ``[0, n)`` of ``dataset``, indexed like an array along the first axis.

    Supports ``len``, ``.shape``, ``.dtype``, ``.ndim``, iteration, ``np.asarray`` and
    indexing by an int, a slice, or a list/array of ints or bools, optionally followed by
    indices of the other axes (applied to the rows read).
    """

    def __init__(self, dataset: h5py.Dataset, n: int):
        self._dataset = dataset
        self._n = int(n)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *self._dataset.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._dataset.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        for i in range(self._n):
            yield self[i]

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if key is Ellipsis:
            key, rest = slice(None), (Ellipsis, *rest)
        data = self._rows(key)
        if not rest:
            return data
        # Other axes (and np.newaxis) are applied by numpy, to the rows read.
        return data[rest] if isinstance(key, int | np.integer) else data[(slice(None), *rest)]

    def _rows(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._n)
            if step == 1:
                return self._dataset[start : max(start, stop)]
            return self._take(np.arange(start, stop, step))
        if isinstance(key, int | np.integer):
            i = int(key) + self._n if key < 0 else int(key)
            if not 0 <= i < self._n:
                raise IndexError(f"row {int(key)} is out of range for {self._n} rows")
            return self._dataset[i]
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return self._take(index)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.where(rows < 0, rows + self._n, rows).astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"rows out of range for {self._n} rows")
        unique, inverse = np.unique(rows, return_inverse=True)
        if not unique.size:
            return np.zeros((*rows.shape, *self._dataset.shape[1:]), self.dtype)
        return self._dataset[list(unique)][inverse.reshape(rows.shape)]

    def __repr__(self) -> str:
        return f"<committed rows {list(self.shape)} {self.dtype} of {self._dataset.name}>"
