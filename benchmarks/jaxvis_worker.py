"""jaxvis's side of benchmarks/side_by_side.py: timed ``jaxvis.visualize`` calls on request.

Each jaxvis side of the comparison runs in its own process, so that sides with different
CPU device counts (``JAX_NUM_CPU_DEVICES``, which jax reads once, at start) can be timed
in the same rounds. The worker builds the random-weight VGG16, makes one untimed call
(it compiles, and measures the conv shapes ``convs="auto"`` has not seen on this CPU),
prints one JSON line saying it is ready, then answers each line ``run`` on stdin with
one JSON line: the wall seconds of one whole ``visualize`` call.

    JAX_NUM_CPU_DEVICES=2 python -m benchmarks.jaxvis_worker --layer block4_conv1 \
        --size 128 --steps 64 --filters 0,1,2,3 --batch auto --convs auto
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layer", default="block4_conv1")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--filters", default="0,1,2,3", help="comma-separated channels")
    p.add_argument("--batch", default="auto", help="units per chunk: 'auto' or a number")
    p.add_argument("--convs", default="auto")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()

    import jax

    import jaxvis
    from benchmarks import options

    model = options.load_model("random", args.dtype)
    filters = [int(f) for f in args.filters.split(",")]
    batch = None if args.batch == "auto" else int(args.batch)

    def call() -> float:
        start = time.perf_counter()
        jaxvis.visualize(
            model,
            args.layer,
            filters,
            size=args.size,
            steps=args.steps,
            batch=batch,
            convs=args.convs,
        )
        return time.perf_counter() - start

    first = call()
    hello = {
        "ready": True,
        "devices": jax.device_count(),
        "first_call_s": first,
        "pid": os.getpid(),
    }
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps({"seconds": call()}), flush=True)


if __name__ == "__main__":
    main()
