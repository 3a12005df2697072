"""The jaxvis atlas format: one HDF5 file of feature visualizations, readable with h5py.

This module holds the names only (no h5py, no jax), so that the writer, the reader and
the documentation (``docs/atlas-format.md``) agree on one spelling.

Layout (version 2)::

    /                        attrs: format="jaxvis-atlas", format_version=2,
                                    jaxvis_version, created (ISO 8601, UTC), model,
                                    weights_source, weights_sha256, weights_trained,
                                    preprocessing, weights (JSON), config (JSON),
                                    device_kind, device_kinds (JSON list)
    /<layer>/                attrs: num_filters_in_layer, image_size, steps,
                                    objective (the layer's objective, described),
                                    output (the layer's output: "map" or "vector"),
                                    snapshot_every (K; only with snapshots)
        images               uint8   [N, H, W, 3]  RGB, chunked one filter per chunk
        snapshots            uint8   [N, S, H, W, 3]  optional: the picture after steps
                                                   K, 2K, ..., S*K (S = steps // K)
        filters              int32   [N]           filter index of each row
        objective            float32 [N]           final objective value
        history              float32 [N, steps]    objective at each step, before its update
        requested            int32   [R]           sorted filters ever requested
        failed_filters       int32   [F]           filters that failed (no image)
        failed_messages      str     [F]           why each failed
        seconds              float64 [C]           wall seconds of each written chunk
        chunk_sizes          int32   [C]           filters (incl. failed) per chunk

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
FORMAT_VERSION = 2

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

# Images are stored raw. On real lucid-preset pictures (ImageNet VGG16, 128 px) gzip
# saved 4% at ~4x the write and ~6x the read time, and lzf nothing; every chunk copies
# the file anyway (docs/atlas-format.md, "Compression").
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
