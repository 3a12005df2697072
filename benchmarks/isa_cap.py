"""Does capping XLA:CPU at AVX2 on an AVX-512 CPU stand in for an AVX2-only CPU?

Issue 14 asks for speed on an AVX2-only CPU, and the machine at hand may have AVX-512.
``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` limits the code XLA generates itself, so it looks
like a way to measure the AVX2 case here. This benchmark times the same-run ceilings
(benchmarks/ceilings.py: a matmul, a 3x3 conv and its input gradient) in child processes
with and without the cap, alternating (ABBA), and prints each kernel's capped rate over
the uncapped one. A kernel that runs at the same rate either way ignores the cap (a library
kernel that picks its instructions from CPUID at run time), so its capped number says
nothing about an AVX2-only CPU.

Usage: ``python -m benchmarks.isa_cap [--tiny | --quick] [--rounds N]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import ceilings, env, options, report
from benchmarks.timing import median

CAP = "--xla_cpu_max_isa=AVX2"
VARIANTS = {"uncapped": "", "capped at AVX2": CAP}
# The child measures the ceilings and prints them as its last line.
CHILD = (
    "import json, sys, jax.numpy as jnp\n"
    "from benchmarks import ceilings, env\n"
    "mode, dtype = sys.argv[1], jnp.dtype(sys.argv[2])\n"
    "k = ceilings.ceiling_kernels(dtype, tiny=mode == 'tiny')\n"
    "c = ceilings.ceilings(dtype, mode, k)\n"
    "print(json.dumps({'xla_flags': env.environment()['xla_flags'], **c}))\n"
)


def measure(mode: str, dtype: str, xla_flags: str) -> dict:
    """One child's ceilings, with ``xla_flags`` added to the caller's XLA_FLAGS."""
    environ = dict(os.environ)
    environ["XLA_FLAGS"] = " ".join(f for f in (environ.get("XLA_FLAGS", ""), xla_flags) if f)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, dtype], env=environ, capture_output=True, text=True
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"isa_cap: the ceiling child failed ({done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows_of(runs: list[dict]) -> list[dict]:
    """Per kernel: each variant's median and best GFLOP/s over the rounds, and the median
    of the per-round ratios capped / uncapped."""
    rows = []
    for name in ceilings.NAMES:
        of = {v: [r[name] for r in runs if r["variant"] == v] for v in VARIANTS}
        row = {"kernel": runs[0][name]["what"]}
        for v, rates in of.items():
            row[f"{v} GFLOP/s"] = median([r["flops_per_s_median"] for r in rates]) / 1e9
            row[f"{v} best"] = max(r["flops_per_s_best"] for r in rates) / 1e9
        ratios = [
            c["flops_per_s_median"] / u["flops_per_s_median"]
            for u, c in zip(of["uncapped"], of["capped at AVX2"], strict=True)
        ]
        rows.append({**row, "capped / uncapped": median(ratios)})
    return rows


def main() -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="alternating rounds (default 4; 1 with --tiny)")
    args = p.parse_args()
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be at least 1; got {args.rounds}")
    mode = options.mode(args)
    print(f"# {env.describe_device()}")
    print(f"# CPU flags: {' '.join(env.cpu_vector_flags())}")
    runs = []
    for r in range(args.rounds or (1 if mode == "tiny" else 4)):
        order = list(VARIANTS.items())
        for variant, flags in order if r % 2 == 0 else order[::-1]:  # ABBA: no side always first
            runs.append({"round": r, "variant": variant, **measure(mode, args.dtype, flags)})
    rows = rows_of(runs)
    report.print_table(rows, f"XLA:CPU ceilings with and without {CAP} ({args.dtype})")
    if not args.no_save:
        payload = {"mode": mode, "cap": CAP, "dtype": args.dtype}
        payload.update(runs=runs, rows=rows)
        name = options.result_name("isa_cap", args)
        print(f"\nwrote {report.write_results(name, payload, args.out_dir)}")


if __name__ == "__main__":
    main()
