"""Showing text read from an atlas: names and values escaped, so a file cannot drive
the terminal it is printed on.

HDF5 names and string attributes may hold any character, an ANSI escape sequence
included; ``jaxvis info`` and every error message pass them through :func:`printable`
or :func:`shown` first (jaxvis/atlas/reader.py, jaxvis/atlas/validate.py).
"""

from __future__ import annotations

import h5py
import numpy as np


def printable(text: str) -> str:
    """``text`` with each non-printable character escaped as ``repr`` does (``\\x1b``);
    anything but a str (bytes from a file, say) is shown as its repr."""
    if not isinstance(text, str):
        text = repr(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(value: object, limit: int = 40) -> str:
    """A value read from a file, for an error message: its repr, escaped and shortened."""
    if isinstance(value, h5py.Empty):
        text = "empty"
    elif isinstance(value, np.ndarray) and value.shape != ():
        text = f"an array of shape {list(value.shape)}"
    else:
        if isinstance(value, np.ndarray | np.generic):
            value = value.item()
        text = printable(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
