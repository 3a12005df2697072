"""The attribution maps file (docs/attribution-format.md): written crash-safely, read
with plain h5py, checked before use.

A maps file is created once, complete, as an atomic snapshot (jaxvis/atlas/snapshot.py):
every dataset at its final size, the maps preallocated (HDF5 early allocation, NaN until
written) and the done mask all zero. After that HDF5 never opens it for writing again: a
chunk's maps are written with ``os.pwrite`` into the bytes HDF5 allocated for them and
fsynced, and only then is the done mask rewritten in place and fsynced. HDF5's metadata
never changes, so the file always opens; maps written but not yet marked done are redone
by a resume. Atlases are committed the same way since format 3 (docs/atlas-format.md,
"Cost"); a copy per chunk would cost O(file size) each time, and 10,000 maps at 224 px
are 2 GB.

One concept per module:

* ``format``: the names and constants of the format;
* ``run``: what identifies a run (:class:`MapsRun`), and the check that a resume is the
  same run;
* ``check``: opening a file and checking it (:func:`check_maps`, its :class:`Header`);
* ``reader``: :func:`open_maps` and :class:`MapsFile`, read-only access;
* ``raw``: where the maps' and the mask's bytes lie, and writing them in place;
* ``writer``: :class:`MapsWriter`, which creates, resumes and fills a file.

Nothing here imports jax.
"""

from jaxvis.attribution.maps_file.check import Header, check_maps, is_maps_file
from jaxvis.attribution.maps_file.format import (
    FAILED,
    FINISHED,
    FORMAT_NAME,
    FORMAT_VERSION,
    TODO,
)
from jaxvis.attribution.maps_file.reader import MapsFile, open_maps
from jaxvis.attribution.maps_file.run import MapsRun
from jaxvis.attribution.maps_file.writer import MapsWriter, check_out

__all__ = [
    "FAILED",
    "FINISHED",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "TODO",
    "Header",
    "MapsFile",
    "MapsRun",
    "MapsWriter",
    "check_maps",
    "check_out",
    "is_maps_file",
    "open_maps",
]
