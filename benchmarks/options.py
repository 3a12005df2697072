"""What every benchmark takes on its command line, and the model it loads.

Three sizes of run share one set of options: ``--tiny`` checks that a benchmark works
(seconds, used by tests/test_benchmarks.py), ``--quick`` gives rough numbers in 1-2
minutes on a 2-core CPU, and the default gives the numbers quoted in benchmarks/README.md.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODES = ("tiny", "quick", "full")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, few steps and filters: about 1-2 min on a 2-core CPU",
    )
    size.add_argument(
        "--tiny",
        action="store_true",
        help="32 px, 2 steps, tiny ceilings: checks that the benchmark runs (seconds)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="compute dtype of the model (and of the ceilings)",
    )
    p.add_argument(
        "--weights", default="imagenet", help="'imagenet' (embedded, offline) or 'random'"
    )
    p.add_argument("--no-save", action="store_true", help="do not write the JSON result")
    p.add_argument("--out-dir", help="directory for the JSON result (default benchmarks/results)")
    return p


def mode(args) -> str:
    """``tiny``, ``quick`` or ``full``: which of a benchmark's settings to run."""
    return "tiny" if args.tiny else "quick" if args.quick else "full"


def default_preset(args) -> str:
    """``lucid``, except ``keras-vis`` for ``--tiny``: its one roll compiles several times
    faster than Lucid's five transforms, and a tiny run is mostly compiling."""
    return "keras-vis" if args.tiny else "lucid"


def result_name(benchmark: str, args) -> str:
    """The JSON's base name: the benchmark, then ``-tiny``/``-quick`` and a non-fp32 dtype."""
    m = mode(args)
    suffix = "" if m == "full" else f"-{m}"
    dtype = f"-{args.dtype}" if args.dtype != "float32" else ""
    return benchmark + suffix + dtype


def load_model(weights: str, dtype_name: str):
    import jaxvis

    return jaxvis.vgg16(None if weights == "random" else weights, dtype=DTYPES[dtype_name])
