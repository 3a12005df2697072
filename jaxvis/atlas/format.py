"""The jaxvis atlas format: one HDF5 file of feature visualizations, readable with h5py.

This module holds the names only (no h5py, no jax), so that the writer, the reader and
the documentation (``docs/atlas-format.md``) agree on one spelling.

Layout (version 3)::

    /                        attrs: format="jaxvis-atlas", format_version=3,
                                    jaxvis_version, created (ISO 8601, UTC), model,
                                    weights_source, weights_sha256, weights_trained,
                                    preprocessing, weights (JSON), config (JSON),
                                    device_kind, device_kinds (JSON list)
    /<layer>/                attrs: num_filters_in_layer, image_size, steps,
                                    objective (the layer's objective, described),
                                    output (the layer's output: "map" or "vector"),
                                    snapshot_every (K; only with snapshots)
        committed            int64   [3]           rows, failed, chunks committed: n, f, c
        images               uint8   [C, H, W, 3]  RGB, one filter per HDF5 chunk; rows :n
        snapshots            uint8   [C, S, H, W, 3]  optional: the picture after steps
                                                   K, 2K, ..., S*K (S = steps // K); :n
        filters              int32   [C]           filter index of each row; :n
        objective            float32 [C]           final objective value; :n
        history              float32 [C, steps]    objective at each step, before its
                                                   update; :n
        requested            int32   [R]           sorted filters ever requested (all R)
        failed_filters       int32   [C]           filters that failed (no image); :f
        failed_messages      bytes   [C]           why each failed, UTF-8, at most 200; :f
        seconds              float64 [C]           wall seconds of each chunk; :c
        chunk_sizes          int32   [C]           filters (incl. failed) per chunk; :c

C is the layer's capacity, preallocated (C <= num_filters_in_layer); entries past the
counts in ``committed`` are not data. Every dataset but ``requested`` and ``committed``
is stored raw in preallocated HDF5 chunks, which the writer fills with ``os.pwrite``
(jaxvis/atlas/commit.py). A layer without a chunk yet may have only ``requested``.
Version 2 had no ``committed``: every row of every dataset was data (N, F, C rows), and
``failed_messages`` were variable-length strings; it still reads and exports.

Version 2 (jaxvis 0.2) stores each layer's objective with that layer, and the root
``config`` holds only what all layers share (preset, steps, size, param, transforms,
optimizer with every argument, keep_best, seed, dtype). Version 1 kept the objective in
the root config with a ``{layer}`` placeholder; version-1 atlases still read and export.
The ``output`` attribute came in jaxvis 0.2 too, with users' own models; files without it
read as "".

Snapshots (jaxvis 0.2) are optional and per layer: ``snapshots`` and ``snapshot_every``
are both there or both absent, and a layer's rows all have them or none do.

Rows of ``images``, ``filters``, ``objective``, ``history`` (and ``snapshots``) line up.
They are in the order written, which is ascending within one run but need not be sorted
overall.
"""

from __future__ import annotations

FORMAT_NAME = "jaxvis-atlas"
FORMAT_VERSION = 3

# Root attributes.
ATTR_FORMAT = "format"
ATTR_VERSION = "format_version"
ATTR_JAXVIS_VERSION = "jaxvis_version"
ATTR_CREATED = "created"
ATTR_MODEL = "model"
ATTR_WEIGHTS = "weights"
ATTR_WEIGHTS_SOURCE = "weights_source"
ATTR_WEIGHTS_SHA256 = "weights_sha256"
ATTR_WEIGHTS_TRAINED = "weights_trained"
ATTR_PREPROCESSING = "preprocessing"
ATTR_CONFIG = "config"
ATTR_DEVICE_KIND = "device_kind"
ATTR_DEVICE_KINDS = "device_kinds"

# Per-layer attributes.
ATTR_NUM_FILTERS = "num_filters_in_layer"
ATTR_IMAGE_SIZE = "image_size"
ATTR_STEPS = "steps"
ATTR_OBJECTIVE = "objective"
ATTR_OUTPUT = "output"
ATTR_SNAPSHOT_EVERY = "snapshot_every"

# Per-layer datasets.
IMAGES = "images"
FILTERS = "filters"
OBJECTIVE = "objective"
HISTORY = "history"
REQUESTED = "requested"
FAILED_FILTERS = "failed_filters"
FAILED_MESSAGES = "failed_messages"
SECONDS = "seconds"
CHUNK_SIZES = "chunk_sizes"
SNAPSHOTS = "snapshots"
# Version 3: int64 [3], the rows, failed filters and chunks committed; readers take that
# many entries of each dataset and ignore the rest (preallocated capacity).
COMMITTED = "committed"
COMMITTED_FIELDS = ("rows", "failed", "chunks")
# Which entry of ``committed`` counts the rows of each dataset.
COUNTED_BY = {
    IMAGES: 0,
    SNAPSHOTS: 0,
    FILTERS: 0,
    OBJECTIVE: 0,
    HISTORY: 0,
    FAILED_FILTERS: 1,
    FAILED_MESSAGES: 1,
    SECONDS: 2,
    CHUNK_SIZES: 2,
}
# Version 3 stores failure messages as fixed-length bytes, UTF-8, cut to this many.
MESSAGE_BYTES = 200
# The commit record must lie within one such sector, so that one pwrite of it is atomic.
SECTOR_BYTES = 512

# Images are stored raw. On real lucid-preset pictures (ImageNet VGG16, 128 px) gzip
# saved 4% at ~4x the write and ~6x the read time, and lzf nothing (docs/atlas-format.md,
# "Compression"); and version 3 writes rows in place, which needs raw storage.
IMAGE_COMPRESSION: str | None = None

# Config keys that do not change any picture (a unit's key comes from (seed, layer, unit)
# alone), so a resume may differ in them.
RUN_ONLY_CONFIG_KEYS = frozenset(
    {"batch", "progress", "overwrite", "out", "layers", "filters", "devices"}
)
# Weights fields that identify the weights (the file path may move).
WEIGHTS_IDENTITY_KEYS = ("source", "sha256", "preprocessing", "trained", "seed")

# Suffixes of the snapshot being written and of the writer's lock, next to the atlas.
TMP_SUFFIX = ".tmp"
# Suffix of an atlas being rebuilt by an overwrite, beside the old one until it is done.
NEW_SUFFIX = ".new"
LOCK_SUFFIX = ".lock"
