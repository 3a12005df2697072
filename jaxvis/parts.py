"""Part files of a distributed atlas, and merging them into the atlas.

In a run of P processes (docs/scaling-out.md) process 0 writes the atlas itself; every
other process writes its share of the units to its own part file,
``<atlas>.parts/process-<i>.h5``. A part is an ordinary atlas of the same run, written
by the same crash-safe writer (jaxvis/atlas/writer.py), so a killed process loses only
its chunk in flight and resumes its own part. Process 0 merges the parts' rows into the
atlas as they are committed, between its own chunks and at the end, through the same
writer: a unit enters the atlas once, complete, and a merge that is killed resumes with
the rows it had not written. Once the atlas holds every requested unit the parts are
deleted.

The folder also holds each process's heartbeat (jaxvis/heartbeat.py). On a cluster it
must be on a filesystem that every process sees, as the atlas itself is.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re

import numpy as np

from jaxvis.atlas import AtlasWriter, open_atlas
from jaxvis.atlas import format as fmt
from jaxvis.atlas.identity import check_same_run
from jaxvis.chunk import Chunk

SUFFIX = ".parts"
# Rows merged per commit: bounds the memory a merge holds (64 pictures of 224 px: 9 MB).
MERGE_ROWS = 64
_PART = re.compile(r"process-(\d+)\.h5")


def folder(out: str) -> str:
    """``<atlas>.parts``, beside the atlas (the real file, if ``out`` is a link)."""
    return os.path.realpath(out) + SUFFIX


def part_path(out: str, process_id: int) -> str:
    return os.path.join(folder(out), f"process-{process_id}.h5")


def heartbeat_path(out: str, process_id: int) -> str:
    return os.path.join(folder(out), f"process-{process_id}.alive")


def part_files(out: str) -> list[str]:
    """The part files present, in process order."""
    found = [(p, _PART.fullmatch(os.path.basename(p))) for p in glob.glob(part_path(out, "*"))]
    return [p for p, m in sorted(found, key=lambda pm: int(pm[1].group(1)) if pm[1] else -1) if m]


def held(path: str, provenance: dict) -> dict[str, set[int]]:
    """``{layer: units}`` the atlas (or part) at ``path`` holds, done or failed, after
    checking that it is of this same run; ``{}`` if there is no file yet."""
    if not os.path.exists(path):
        return {}
    with open_atlas(path) as atlas:
        check_same(path, atlas.provenance, provenance)
        return {la: set(atlas[la].filters.tolist()) | set(atlas[la].failed) for la in atlas.layers}


def done_in_parts(out: str, provenance: dict) -> dict[str, set[int]]:
    """``{layer: units}`` that the part files hold, done or failed (see :func:`held`)."""
    done: dict[str, set[int]] = {}
    for path in part_files(out):
        for layer, units in held(path, provenance).items():
            done.setdefault(layer, set()).update(units)
    return done


def merge(out: str, writer: AtlasWriter, provenance: dict) -> int:
    """Writes into ``writer``'s atlas every row of the part files that it lacks.

    Returns:
      How many units were added.
    """
    added = 0
    for path in part_files(out):
        with open_atlas(path) as part:
            check_same(path, part.provenance, provenance)
            for name in part.layers:
                for chunk in _new_rows(part[name], writer.done(name)):
                    writer.write_chunk(
                        name, chunk, num_filters_in_layer=part[name].num_filters_in_layer
                    )
                    added += chunk.units
    return added


def _new_rows(view, done: set[int]):
    """Chunks of ``view``'s rows and failures whose units are not in ``done``."""
    rows = [i for i, f in enumerate(view.filters.tolist()) if f not in done]
    failed = {f: m for f, m in view.failed.items() if f not in done}
    total = len(view) + len(view.failed)
    per_unit = float(view.seconds.sum()) / total if total else 0.0
    for start in range(0, max(len(rows), 1), MERGE_ROWS):
        picked = rows[start : start + MERGE_ROWS]
        failures = failed if start == 0 else {}
        if not picked and not failures:
            return
        images = np.stack([view.images[i] for i in picked]) if picked else _empty(view)
        snaps = None
        if view.snapshots is not None:
            shape = (0, *view.snapshots.shape[1:])
            snaps = (
                np.stack([view.snapshots[i] for i in picked])
                if picked
                else np.zeros(shape, np.uint8)
            )
        yield Chunk(
            layer=view.name,
            filters=view.filters[picked].astype(np.int64),
            images=images,
            objective=view.objective[picked],
            history=view.history[picked],
            failed=failures,
            seconds=per_unit * (len(picked) + len(failures)),  # the part's time, pro rata
            compile_seconds=0.0,
            snapshots=snaps,
            snapshot_every=view.snapshot_every if snaps is not None else 0,
        )


def _empty(view) -> np.ndarray:
    size = view.image_size
    return np.zeros((0, size, size, 3), np.uint8)


def remove(out: str) -> None:
    """Deletes the part files and heartbeats (once the atlas holds all they held)."""
    directory = folder(out)
    for path in glob.glob(os.path.join(directory, "process-*")):
        with contextlib.suppress(OSError):
            os.remove(path)
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def check_same(path: str, theirs: dict, provenance: dict) -> None:
    attrs = {
        fmt.ATTR_MODEL: theirs["model"],
        fmt.ATTR_WEIGHTS: json.dumps(theirs["weights"]),
        fmt.ATTR_CONFIG: json.dumps(theirs["config"]),
    }
    check_same_run(path, attrs, provenance)
