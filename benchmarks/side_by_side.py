"""jaxvis and Lucent on the same work, interleaved in one sitting, with the conv ceiling.

The work (the issue's matched comparison): VGG16 with random weights, truncated at the
target conv, weights frozen, one call that optimizes filters 0-3 of ``block4_conv1``
(torchvision ``features_17``) for 64 steps at 128 px, FFT-decorrelated parameterization
and Lucid's transforms. Lucent runs in its own interpreter as a persistent worker
(benchmarks/lucent_worker.py); each round times one whole call of each side, one after
the other (each after a 1 s pause, so the other side's threads are idle), and one
conv-ceiling kernel, so the two sides and the ceiling see the same machine state. The
ratio is taken per round; the table gives the medians.

jaxvis's side is a whole ``jaxvis.visualize`` call with the lucid preset (the second
call and later: the first one compiles), in a persistent worker of its own
(benchmarks/jaxvis_worker.py), for each CPU device count in ``--cpu-devices`` (the
worker's ``JAX_NUM_CPU_DEVICES``; two devices run two units at once,
jaxvis/cpu_devices.py), each chunk size in ``--batches`` and each conv setting in
``--convs`` (``auto``: the formulations measured fastest per shape on this CPU,
jaxvis/conv_tune.py, measured by the first call where the cache lacks them; ``lax``:
XLA's conv everywhere). The result records the per-shape choices the cache held.

    python -m benchmarks.side_by_side --lucent-python ~/.cache/jaxvis-peers/venv-lucent/bin/python
    python -m benchmarks.side_by_side --layer block3_conv3 --size 224 --rounds 3

benchmarks/peers.md gives Lucent's install and the latest numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks import ceilings, env, flops, options
from benchmarks.report import print_table, write_results
from benchmarks.timing import median, time_calls

DEFAULT_LUCENT = os.path.join(
    os.environ.get("PEERS_ENV", os.path.expanduser("~/.cache/jaxvis-peers")),
    "venv-lucent",
    "bin",
    "python",
)

# Pause before each timed call, so that the other side's worker threads (XLA's pool,
# torch's OpenMP team) have gone idle and neither side starts on a busy machine.
SETTLE_S = 1.0


def torchvision_name(layer: str) -> str:
    """``features_<i>`` of torchvision's VGG16 for a Keras conv name: each conv is
    followed by a ReLU module, each block ends in a pool module."""
    from jaxvis.models.vgg16 import FEATURE_LAYERS

    index = 0
    for la in FEATURE_LAYERS:
        if la.name == layer:
            return f"features_{index}"
        index += 2 if la.kind == "conv" else 1
    raise SystemExit(f"side_by_side: {layer!r} is not a VGG16 conv layer")


class Worker:
    """A persistent worker process (benchmarks/lucent_worker.py or
    benchmarks/jaxvis_worker.py): one timed call per :meth:`call`."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.hello = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"side_by_side: a worker exited ({self.proc.wait()})")
        return json.loads(line)

    def call(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._reply()["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def lucent_worker(python: str, layer: str, size: int, steps: int, filters: list[int]) -> Worker:
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lucent_worker.py")
    cmd = [python, worker, "--layer", torchvision_name(layer), "--size", str(size)]
    return Worker([*cmd, "--steps", str(steps), "--filters", ",".join(map(str, filters))])


def jaxvis_worker(args, batch: str, convs: str, devices: int) -> Worker:
    """A worker for one jaxvis side, with ``devices`` CPU devices (JAX_NUM_CPU_DEVICES)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "benchmarks.jaxvis_worker", "--layer", args.layer]
    cmd += ["--size", str(args.size), "--steps", str(args.steps), "--filters", args.filters]
    cmd += ["--batch", batch, "--convs", convs, "--dtype", args.dtype]
    return Worker(cmd, env)


def main(argv=None) -> None:
    p = options.base_parser(__doc__.splitlines()[0])
    p.add_argument("--lucent-python", default=os.environ.get("LUCENT_PY", DEFAULT_LUCENT))
    p.add_argument("--layer", default="block4_conv1")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--filters", default="0,1,2,3")
    p.add_argument("--batches", default="auto", help="jaxvis chunk sizes: 'auto' or e.g. 1,4")
    p.add_argument("--convs", default="auto,lax", help="jaxvis conv settings, e.g. auto,lax")
    p.add_argument(
        "--cpu-devices",
        default="1,2",
        help="jaxvis CPU device counts (JAX_NUM_CPU_DEVICES of its workers), e.g. 1,2",
    )
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    args.weights = "random"
    from jaxvis import conv_tune, cpu_devices
    from jaxvis.errors import JaxvisError

    try:  # before any work: a bad setting is one line and exit status 2
        args.conv_settings = [conv_tune.check_setting(c) for c in args.convs.split(",")]
        for b in args.batches.split(","):
            if b != "auto" and not (b.isascii() and b.isdigit() and int(b) >= 1):
                raise JaxvisError(f"--batches takes 'auto' or whole numbers >= 1; got {b!r}")
        args.device_counts = [
            cpu_devices.count(cpu_devices.check(n), distributed=False)
            for n in args.cpu_devices.split(",")
        ]
    except JaxvisError as e:
        print(f"side_by_side: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not os.path.exists(args.lucent_python):
        raise SystemExit(
            f"side_by_side: no Lucent interpreter at {args.lucent_python}; install it as "
            "benchmarks/peers.md says, or pass --lucent-python"
        )
    run(args)


def run(args) -> None:
    from jaxvis import conv_tune, cpu_cache

    model = options.load_model("random", args.dtype)
    filters = [int(f) for f in args.filters.split(",")]
    kernels = ceilings.ceiling_kernels(options.DTYPES[args.dtype])
    work = len(filters) * args.steps
    step = flops.step_flops(model, args.layer, args.size)["total"]

    # Each worker's first call compiles (and measures the conv shapes "auto" has not seen
    # on this CPU), one worker at a time, before any timing.
    workers = {
        f"jaxvis visualize, batch {b}, convs {c}, {n} CPU device{'s' * (n > 1)}": jaxvis_worker(
            args, b, c, n
        )
        for n in args.device_counts
        for b in args.batches.split(",")
        for c in args.conv_settings
    }
    workers["Lucent render_vis"] = lucent_worker(
        args.lucent_python, args.layer, args.size, args.steps, filters
    )
    here = conv_tune.key_prefix()
    cached = cpu_cache.load(conv_tune.cache_path())
    conv_forms = {k[len(here) :]: v for k, v in cached.items() if k.startswith(here)}
    times = {name: [] for name in workers}
    conv = []
    try:
        for _ in range(args.rounds):
            conv.append(min(time_calls(kernels["conv_fwd"]["call"], 3, warmup=0)))
            for name, worker in workers.items():
                time.sleep(SETTLE_S)
                times[name].append(worker.call())
    finally:
        for worker in workers.values():
            worker.close()
    lucent = workers["Lucent render_vis"]
    ceiling = kernels["conv_fwd"]["flops"] / median(conv)
    rows = []
    for name, ts in times.items():
        ratios = [lu / t for lu, t in zip(times["Lucent render_vis"], ts, strict=True)]
        rate = work / median(ts)
        rows.append(
            {
                "side": name,
                "s/call median": median(ts),
                "s/call best": min(ts),
                "filter-steps/s": rate,
                "vs Lucent": median(ratios),
                "GFLOP/s": rate * step / 1e9,
                "eff conv": rate * step / ceiling,
            }
        )
    print(
        f"\n{args.layer}, {args.size} px, {args.steps} steps, filters {args.filters}; "
        f"{args.rounds} rounds; conv ceiling {ceiling / 1e9:.1f} GFLOP/s (median)"
    )
    print(f"device: {env.describe_device()}")
    print_table(rows)
    if not args.no_save:
        payload = {
            "work": {
                "layer": args.layer,
                "size": args.size,
                "steps": args.steps,
                "filters": filters,
                "analytic_flops_per_filter_step": step,
            },
            "lucent": lucent.hello,
            "times_s": times,
            "conv_ceiling_s": conv,
            "conv_ceiling": kernels["conv_fwd"]["what"],
            "rows": rows,
            "conv_forms_cached": conv_forms,
        }
        name = options.result_name(f"side_by_side-{args.layer}-{args.size}", args)
        print(write_results(name, payload, args.out_dir), file=sys.stderr)


if __name__ == "__main__":
    main()
