"""The evidence for jaxvis/chunk_tune.py: the best chunk on CPU differs by layer and size.

For each (layer, size) it times the engine's compiled block at chunks 1, 2 and 4 (the
candidates ``chunk_tune`` measures), interleaved with the ceilings, and prints which one
``chunk_tune.pick`` (the largest that beats every smaller one by its margin) keeps.

    python -m benchmarks.chunk_choice --tiny --out-dir /tmp
    python -m benchmarks.chunk_choice      # block5_conv3, block4_conv1 @128; block3_conv3 @224
"""

from __future__ import annotations

from benchmarks import ceilings, env, options
from benchmarks.cases import prepare, result_row
from benchmarks.report import print_table, write_results
from benchmarks.timing import interleaved

MODES = {
    "tiny": {"cases": [("block1_conv1", 32)], "target_s": 0.05},
    "quick": {"cases": [("block5_conv3", 64), ("block3_conv3", 64)], "target_s": 2.0},
    "full": {
        "cases": [("block5_conv3", 128), ("block4_conv1", 128), ("block3_conv3", 224)],
        "target_s": 5.0,
    },
}


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--preset", help="preset to time (default: keras-vis if --tiny, else lucid)")
    args = p.parse_args(argv)
    args.preset = args.preset or options.default_preset(args)
    from jaxvis import engine, presets
    from jaxvis.chunk_tune import CANDIDATES, pick

    mode = MODES[options.mode(args)]
    print(env.describe_device())
    model = options.load_model(args.weights, args.dtype)
    kernels = ceilings.ceiling_kernels(options.DTYPES[args.dtype], tiny=args.tiny)
    rows, table = [], []
    for layer, size in mode["cases"]:
        prog = engine.program(model, layer, size, presets.get(args.preset))
        cases = [prepare(model, prog, layer, size, c, f"chunk {c}") for c in CANDIDATES]
        times, ceil = interleaved(cases, kernels, mode["target_s"])
        group = [result_row(c, times[c.variant], ceil, kernels) for c in cases]
        rates = {r["chunk"]: r["filter_steps_per_s"] for r in group}
        chosen = pick(rates)
        for r in group:
            r["chosen"] = r["chunk"] == chosen
            table.append(
                {
                    "layer": layer,
                    "px": size,
                    "chunk": r["chunk"],
                    "filter-steps/s": r["filter_steps_per_s"],
                    "vs chunk 1": r["filter_steps_per_s"] / rates[1],
                    "exec GFLOP/s": r["executed_flops_per_s"] / 1e9,
                    "chosen": "yes" if r["chosen"] else "",
                }
            )
        rows += group
    print_table(table, title="Chunk per layer (median of timed calls, interleaved per layer)")
    if not args.no_save:
        payload = {"mode": options.mode(args), "preset": args.preset, "dtype": args.dtype}
        payload["rows"] = rows
        print(write_results(options.result_name("chunk_choice", args), payload, args.out_dir))


if __name__ == "__main__":
    main()
