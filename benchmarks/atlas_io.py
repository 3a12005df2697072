"""Atlas writes: what one chunk's commit costs, and the bytes a whole run writes.

Builds synthetic atlases with the real :class:`jaxvis.atlas.AtlasWriter` from chunks of
realistic shape (64 units of 224x224x3 uint8 random pictures and float32 histories of 512
steps; one request for every layer, as ``generate_atlas`` makes) and reports, at each
atlas size: the median commit seconds of the commits near that size, the bytes written
over the whole run (``/proc/self/io`` ``write_bytes`` less ``cancelled_write_bytes``, and
the arithmetic sum), and the fraction of a chunk's compute those commits would be on an
accelerator (:data:`FLOP_PER_FILTER_STEP`, :data:`ACCEL_FLOPS`).

The writer measured is the one installed: format_version 2 is the copy-per-commit writer
(jaxvis/atlas/snapshot.py at git 42ecf76), 3 the in-place one. A copy writer is run whole
only up to :data:`COPY_FULL_GB`; above it, a run would copy about a terabyte, so the file
is built once with h5py in the same layout and a handful of commits are timed at that
size, and the run's total is given as the arithmetic sum only.

Usage: ``python -m benchmarks.atlas_io [--tiny | --quick] [--work-dir DIR]``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time

import h5py
import numpy as np

from benchmarks import env, options, report
from jaxvis.atlas import AtlasWriter
from jaxvis.atlas import format as fmt
from jaxvis.chunk import Chunk

# XLA-counted FLOPs of one filter-step of VGG16 block4_conv1 at 224 px, a mid layer:
# 358 XLA GFLOP/s at 9.20 filter-steps/s (benchmarks/README.md, "Throughput", 2026-11-25).
FLOP_PER_FILTER_STEP = 358e9 / 9.20
# 40% of an H100's dense bf16 rate, as the atlas I/O budget assumes (issue 12).
ACCEL_FLOPS = 320e12
# The share of compute a commit may cost.
BUDGET = 0.05
COPY_FULL_GB = 0.6
HANDFUL = 5
NEAR = 5  # commits before a size checkpoint that its median takes
# mode -> (units per chunk, image px, steps, units per layer, checkpoints in GB)
SETTINGS = {
    "full": (64, 224, 512, 512, (0.6, 2.0, 5.0)),
    "quick": (64, 224, 512, 512, (0.1, 0.3)),
    "tiny": (8, 32, 16, 32, (0.001, 0.004)),
}
PROV = {"model": "bench", "weights": {}, "config": {"steps": 0}, "device_kind": "cpu"}


def writer_kind() -> str:
    return "copy" if fmt.FORMAT_VERSION < 3 else "inplace"


def io_written() -> int:
    """Bytes this process has sent to storage so far (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
    except OSError:
        return 0
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


def git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "jaxvis/atlas"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (jaxvis/atlas modified)" if dirty else "")


class Synthetic:
    """Random chunks of one shape; the bytes are drawn once and reused (no compression
    anywhere, so the disk sees the same work)."""

    def __init__(self, units: int, size: int, steps: int):
        rng = np.random.default_rng(0)
        self.units, self.steps = units, steps
        self.images = rng.integers(0, 256, (units, size, size, 3), dtype=np.uint8)
        self.history = rng.normal(size=(units, steps)).astype(np.float32)
        self.nbytes = self.images.nbytes + self.history.nbytes + units * 8

    def chunk(self, layer: str, first: int) -> Chunk:
        filters = np.arange(first, first + self.units)
        return Chunk(layer, filters, self.images, self.history[:, -1], self.history, {}, 1.0, 0.0)


def layer_name(i: int) -> str:
    return f"l{i:03d}"


def chunk_compute_seconds(units: int, steps: int) -> float:
    return FLOP_PER_FILTER_STEP * steps * units / ACCEL_FLOPS


def full_run(path: str, data: Synthetic, per_layer: int, checkpoints: list[float]) -> list:
    """One run: requests every layer, then writes chunks until the last checkpoint (GB);
    one row per checkpoint."""
    chunks_per_layer = per_layer // data.units
    total = int(np.ceil(checkpoints[-1] * 1e9 / data.nbytes))
    layers = -(-total // chunks_per_layer)
    io0, t0 = io_written(), time.perf_counter()
    seconds, rows, todo = [], [], list(checkpoints)
    with AtlasWriter(path, provenance=PROV) as w:
        names = [layer_name(i) for i in range(layers)]
        w.request({n: range(per_layer) for n in names}, num_filters=dict.fromkeys(names, per_layer))
        for k in range(total):
            chunk = data.chunk(names[k // chunks_per_layer], (k % chunks_per_layer) * data.units)
            start = time.perf_counter()
            w.write_chunk(chunk.layer, chunk)
            seconds.append(time.perf_counter() - start)
            if todo and (k + 1) * data.nbytes >= todo[0] * 1e9:
                rows.append(_row(todo.pop(0), path, seconds[-NEAR:], k + 1, data, io0, t0))
    return rows


def _row(gb, path, near, commits, data, io0, t0, measured=True):
    return {
        "target GB": gb,
        "file GB": os.path.getsize(path) / 1e9,
        "commits": commits,
        "commit s (median)": statistics.median(near),
        "commits timed": len(near),
        "run s": time.perf_counter() - t0 if measured else None,
        "written GB (/proc)": (io_written() - io0) / 1e9 if measured else None,
        "written GB (sum)": arithmetic_sum(commits, data.nbytes, os.path.getsize(path)) / 1e9,
        "total measured": measured,
    }


def arithmetic_sum(commits: int, chunk_bytes: int, final_bytes: int) -> float:
    """Bytes a run of ``commits`` chunks writes: the copy writer copies the file at each
    commit (k chunks' worth before the k-th, a chunk's worth being the final file size
    over the commits, metadata included) and writes the chunk; the in-place writer writes
    each chunk once (its one allocation copies the file while it holds no rows yet, and
    ``posix_fallocate`` reserves blocks without writing them)."""
    if writer_kind() == "copy":
        return final_bytes / commits * commits * (commits + 1) / 2
    return chunk_bytes * commits


def prefilled(path: str, data: Synthetic, per_layer: int, gb: float) -> int:
    """A copy-writer (format 2) atlas of about ``gb`` GB built with h5py; its chunk count."""
    total = int(np.ceil(gb * 1e9 / data.nbytes))
    chunks_per_layer = per_layer // data.units
    with AtlasWriter(path, provenance=PROV) as w:
        w.write_chunk(layer_name(0), data.chunk(layer_name(0), 0), num_filters_in_layer=per_layer)
    with h5py.File(path, "r+") as f:
        for i in range(-(-total // chunks_per_layer)):
            name, n = layer_name(i), min(chunks_per_layer, total - i * chunks_per_layer)
            if name not in f:
                f.copy(f[layer_name(0)], name)
            g, rows = f[name], n * data.units
            for key in (fmt.IMAGES, fmt.FILTERS, fmt.OBJECTIVE, fmt.HISTORY):
                g[key].resize(rows, axis=0)
            for key in (fmt.SECONDS, fmt.CHUNK_SIZES):
                g[key].resize(n, axis=0)
                g[key][:] = data.units
            for c in range(n):
                part = slice(c * data.units, (c + 1) * data.units)
                g[fmt.IMAGES][part] = data.images
                g[fmt.HISTORY][part] = data.history
            g[fmt.FILTERS][:] = np.arange(rows)
            g[fmt.OBJECTIVE][:] = 0.0
    return total


def handful_at(path: str, data: Synthetic, per_layer: int, gb: float) -> dict:
    """Times :data:`HANDFUL` commits of the copy writer on an atlas of about ``gb`` GB."""
    t0, io0 = time.perf_counter(), io_written()
    total = prefilled(path, data, per_layer, gb)
    name = "extra"
    seconds = []
    with AtlasWriter(path, provenance=PROV) as w:
        w.request({name: range(per_layer)}, num_filters={name: per_layer})
        for k in range(HANDFUL):
            chunk = data.chunk(name, k * data.units)
            start = time.perf_counter()
            w.write_chunk(name, chunk)
            seconds.append(time.perf_counter() - start)
    row = _row(gb, path, seconds, total + HANDFUL, data, io0, t0, measured=False)
    return row


def main(argv=None) -> int:
    p = options.base_parser("Atlas commit cost and total I/O: copy or in-place writer")
    p.add_argument("--work-dir", default="/tmp/atlas_io", help="where the atlases are built")
    args = p.parse_args(argv)
    units, size, steps, per_layer, checkpoints = SETTINGS[options.mode(args)]
    kind, commit = writer_kind(), git_commit()  # the code imported, before the run
    print(env.describe_device())
    print(f"writer: {kind} (format_version {fmt.FORMAT_VERSION}), git {commit}")
    data = Synthetic(units, size, steps)
    compute = chunk_compute_seconds(units, steps)
    os.makedirs(args.work_dir, exist_ok=True)
    path = os.path.join(args.work_dir, f"atlas-{kind}.h5")
    try:
        rows = []
        for gb in checkpoints:  # one run (one atlas, one request) per size
            if os.path.exists(path):
                os.remove(path)
            if kind == "inplace" or gb <= COPY_FULL_GB + 1e-9:
                rows += full_run(path, data, per_layer, [gb])
            else:
                rows.append(handful_at(path, data, per_layer, gb))
    finally:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    for row in rows:
        row["share of compute"] = row["commit s (median)"] / compute
        row["within 5%"] = row["share of compute"] <= BUDGET
    print(
        f"chunk: {units} units, {size} px, {steps} steps, {data.nbytes / 1e6:.2f} MB; "
        f"compute {compute:.2f} s at {ACCEL_FLOPS / 1e12:.0f} TFLOP/s "
        f"({FLOP_PER_FILTER_STEP / 1e9:.1f} GFLOP per filter-step, VGG16 block4_conv1 224 px, "
        "XLA-counted, benchmarks/README.md)"
    )
    report.print_table(rows, title=f"Atlas commits, {kind} writer")
    if any(not r["total measured"] for r in rows):
        print(
            "Rows with total measured False: the file was built once with h5py and only "
            f"{HANDFUL} commits were timed; 'written GB (sum)' is the arithmetic sum."
        )
    payload = {
        "mode": options.mode(args),
        "writer": kind,
        "format_version": fmt.FORMAT_VERSION,
        "git": commit,
        "chunk": {"units": units, "size": size, "steps": steps, "bytes": data.nbytes},
        "chunk_compute_s": compute,
        "flop_per_filter_step": FLOP_PER_FILTER_STEP,
        "accel_flops": ACCEL_FLOPS,
        "rows": rows,
    }
    if not args.no_save:
        name = options.result_name(f"atlas_io-{kind}", args)
        print("wrote", report.write_results(name, payload, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
