"""The ``jaxvis`` command: argument parsing around library calls, nothing more.

Every :class:`JaxvisError`, every OSError and every bad argument becomes one line
``jaxvis: error: ...`` on stderr and exit status 2, never a traceback or a usage block
(``--help`` shows the usage). Ctrl-C (SIGINT) and SIGTERM, which job schedulers send,
print one line and exit at once with status 130 and 143 (128 + the signal number), at any
moment: atlases are only ever changed by atomic snapshots, so what was committed stays
and the same command resumes. Subcommands that need jax import it inside their
function, so ``jaxvis info`` and ``export`` stay light.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from jaxvis.errors import JaxvisError

EXIT_ERROR = 2
OVERWRITE_HELP = (
    "build a new atlas instead of resuming OUT: it is written beside it, to OUT.new, and "
    "replaces OUT only once complete, so OUT stays whole until then; re-running the same "
    "command after a crash resumes OUT.new. Never touches a file that is not a jaxvis atlas"
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``jaxvis: error: ...`` and status 2, no usage."""

    def error(self, message: str):
        command = self.prog.removeprefix("jaxvis").strip()
        sys.exit(_fail(f"{command}: {message}" if command else message))


WEIGHTS_HELP = (
    "built-in models: imagenet (default, torchvision's), random (untrained), or for vgg16 a "
    "Keras VGG16 weights .h5 path"
)
MODEL_HELP = "vgg16 (default), alexnet, or a Keras 3 model file PATH.keras (needs jaxvis[keras])"
PREPROCESS_HELP = (
    "a .keras model's input convention: caffe, torch or tf (as in Keras "
    "applications/imagenet_utils.py), or none (default: the model takes RGB in [0, 1])"
)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vgg16", help=MODEL_HELP)
    p.add_argument("--weights", default="imagenet", help=WEIGHTS_HELP)
    p.add_argument("--preprocess", default="none", help=PREPROCESS_HELP)


def _model(args: argparse.Namespace, dtype: str = "float32"):
    from jaxvis.models import catalog

    preprocess = None if args.preprocess == "none" else args.preprocess
    return catalog.load(args.model, weights=args.weights, preprocess=preprocess, dtype=dtype)


def cmd_layers(args: argparse.Namespace) -> None:
    from jaxvis.models.feature_model import PRE

    model = _model(args)
    size, shapes = _layer_shapes(model, args.size)
    width = max(len(la.name) for la in model.layers)
    print(f"{'name':<{width}}  {'kind':<7}  {'filters':>7}  output at {size} px")
    for la in model.layers:
        shape = "x".join(str(d) for d in shapes[la.name].shape[1:])
        also = f"  (also {la.name}{PRE})" if la.pre else ""
        print(f"{la.name:<{width}}  {la.kind:<7}  {la.num_filters:>7}  {shape}{also}")


def _layer_shapes(model, size: int | None):
    """``(size, shapes of every layer)`` at ``size``; by default at 224 px, or at the
    model's smallest size when it does not run at 224 (a model with a fixed input)."""
    last = model.layers[-1].name
    if size is not None:
        return size, model.shapes(last, model.check_size(size))
    try:
        return 224, model.shapes(last, 224)
    except JaxvisError:
        return model.min_size, model.shapes(last, model.min_size)


def _use_compile_cache(enabled: bool) -> None:
    """JAX's persistent compilation cache, so that a repeat or resumed run loads its
    programs instead of compiling them again. ``JAX_COMPILATION_CACHE_DIR`` wins if set;
    otherwise the cache is ``$XDG_CACHE_HOME/jaxvis/xla`` (``~/.cache/jaxvis/xla``)."""
    import jax

    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        # Every program, the small init and finish ones too: they recompile in about
        # 0.3 s each but load in milliseconds (benchmarks/README.md, same section).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(home, "jaxvis", "xla"))


def cmd_atlas(args: argparse.Namespace) -> None:
    from jaxvis import cluster, cpu_devices

    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and any(v is not None for v in explicit):
        raise JaxvisError("--coordinator, --num-processes and --process-id need --distributed")
    # Both before jax uses a device: its CPU devices, then the join.
    cpu_devices.apply(args.cpu_devices or cpu_devices.default(), args.distributed)
    joined = _join(args) if args.distributed else cluster.SINGLE
    import jax.numpy as jnp

    _use_compile_cache(not args.no_compile_cache)
    from jaxvis.filterspec import select
    from jaxvis.scheduler import generate_atlas

    model = _model(args, dtype=jnp.dtype(args.dtype).name)
    chosen = select(model, args.layers, args.filters, seed=args.seed)
    out = generate_atlas(
        model,
        args.out,
        chosen,
        preset=args.preset,
        size=args.size,
        steps=args.steps,
        seed=args.seed,
        batch=args.batch,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        snapshots=args.snapshots,
        cluster=joined,
        peer_timeout=args.peer_timeout,
        tune_chunks=not args.no_chunk_tuning,
        convs=args.convs,
    )
    if joined.is_writer or out == args.out:
        print(out)
    else:
        print(f"{out} ({joined.describe()}; process 0 merges it into {args.out})")


# jaxvis/conv_tune.py SETTINGS, spelt out so that `jaxvis --help` does not import jax.
CONVS = ["auto", "lax", "winograd", "im2col"]
# What every process of a distributed run must agree on: all that picks units or pictures.
_SHARED_SETTINGS = (
    "layers", "filters", "out", "size", "steps", "preset", "model", "weights", "preprocess",
    "seed", "dtype", "snapshots",
)  # fmt: skip


def _join(args: argparse.Namespace):
    from jaxvis import cluster

    if args.peer_timeout <= 0:
        raise JaxvisError(
            f"--peer-timeout must be a positive number of seconds; got {args.peer_timeout:g}"
        )
    digest = cluster.command_digest({k: getattr(args, k) for k in _SHARED_SETTINGS})
    return cluster.join(
        digest,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        timeout=args.peer_timeout,
    )


def _attribution_model(args: argparse.Namespace):
    _use_compile_cache(True)
    return _model(args)


def cmd_export(args: argparse.Namespace) -> None:
    from jaxvis.attribution.maps_file import is_maps_file

    if args.overlay or is_maps_file(args.atlas):
        from jaxvis.attribution.command import cmd_export_overlays

        return cmd_export_overlays(args)
    from jaxvis.export import export_atlas

    written = export_atlas(
        args.atlas,
        args.out,
        fmt=args.format,
        layers=args.layers,
        grid=args.grid,
        force=args.force,
        animate=args.animate,
    )
    print(f"wrote {len(written)} files to {args.out}")


def cmd_site(args: argparse.Namespace) -> None:
    from jaxvis.site import build_site

    summary = build_site(
        args.atlas,
        args.out,
        image_format=args.format,
        quality=args.quality,
        thumb_size=args.thumb_size,
        plots=not args.no_plots,
        workers=args.workers,
    )
    print(
        f"site of {summary.units} units in {summary.layers} layers: wrote "
        f"{len(summary.written)} files, kept {len(summary.kept)}, removed "
        f"{len(summary.removed)} in {summary.seconds:.1f} s; open {summary.index}"
    )


def cmd_info(args: argparse.Namespace) -> None:
    from jaxvis.atlas import open_atlas

    with open_atlas(args.atlas) as atlas:
        print(atlas.summary())


def cmd_weights_fetch(args: argparse.Namespace) -> None:
    from jaxvis.models.fetch import fetch

    print(fetch(args.which, cache_dir=args.cache_dir, progress=not args.no_progress))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxvis",
        description="Batched feature visualization for ConvNets, stored in HDF5 atlases.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("layers", help="list the model's layers and filter counts")
    _add_model_options(p)
    p.add_argument(
        "--size", type=int, default=None, help="image side for the output shapes (default 224)"
    )
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("atlas", help="visualize filters into an HDF5 atlas (resumable)")
    p.add_argument("--layers", required=True, help="L1,L2 or all-conv")
    p.add_argument("--filters", default="all", help="all, 0-15, 3,7,9, 0-3,9 or random:K")
    p.add_argument("--out", required=True, help="atlas file, e.g. vgg16.h5")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--steps", type=int, default=None, help="steps (default: the preset's)")
    p.add_argument("--preset", default="lucid", help="lucid (default) or keras-vis")
    p.add_argument("--batch", type=int, default=None, help="filters per chunk (default: auto)")
    _add_model_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="compute dtype of the network (bfloat16: faster on GPUs/TPUs, not on CPUs)",
    )
    p.add_argument(
        "--snapshots",
        type=int,
        default=None,
        metavar="K",
        help="also store each filter's picture every K steps (1 to steps), for export "
        "--animate; a multiple of 8 on CPU or 16 on GPU keeps the usual block size",
    )
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep compiled programs in ~/.cache/jaxvis/xla for later runs",
    )
    p.add_argument(
        "--no-chunk-tuning",
        action="store_true",
        help="on one CPU device, keep one unit per chunk instead of the chunk measured "
        "fastest per layer on this CPU (~/.cache/jaxvis/cpu-chunks.json)",
    )
    p.add_argument(
        "--convs",
        default="auto",
        choices=CONVS,
        help="how 3x3 convs run: auto (default: on CPU, per shape the formulation measured "
        "fastest on this CPU, kept in ~/.cache/jaxvis/cpu-convs.json), lax (XLA's conv "
        "everywhere), winograd or im2col (that formulation everywhere)",
    )
    p.add_argument(
        "--cpu-devices",
        default=None,
        metavar="N",
        help="CPU devices to ask XLA for: auto (default, or $JAXVIS_CPU_DEVICES: 2 where "
        "the CPU has 2 cores or more, 1 with --distributed) or a number; two run two "
        "units at once and fill each other's idle cores. JAX_NUM_CPU_DEVICES wins if set",
    )
    _add_distributed_options(p)
    p.set_defaults(func=cmd_atlas)

    from jaxvis.attribution import command as attribution

    attribution.add_parser(sub, model_options=_add_model_options, load_model=_attribution_model)

    p = sub.add_parser(
        "export", help="write an atlas's pictures, or a maps file's overlays, as jpg/png files"
    )
    p.add_argument("atlas")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="jpg", choices=["jpg", "png"])
    p.add_argument("--layers", default=None, help="L1,L2 (default: all in the atlas)")
    p.add_argument("--grid", action="store_true", help="also a labelled sheet per layer")
    p.add_argument(
        "--animate",
        action="store_true",
        help="also <layer>_<filter>.webp per filter: its snapshots, then its final picture "
        "(needs an atlas made with --snapshots K)",
    )
    p.add_argument(
        "--overlay",
        action="store_true",
        help="a maps file from jaxvis attribute: heat maps over its images, and contact "
        "sheets (the default for a maps file)",
    )
    p.add_argument(
        "--colormap", default="inferno", help="overlays: inferno, viridis, magma, plasma or cividis"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files of the same names in OUT (default: refuse, before writing anything)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("site", help="write a static, browsable site of an atlas (no server)")
    p.add_argument("atlas")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier site)")
    p.add_argument("--format", default="jpeg", choices=["jpeg", "png"], help="picture format")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-95")
    p.add_argument("--thumb-size", type=int, default=96, help="largest thumbnail side, px")
    p.add_argument(
        "--no-plots", action="store_true", help="no objective curves (they need jaxvis[site])"
    )
    p.add_argument("--workers", type=int, default=None, help="processes drawing the curves")
    p.set_defaults(func=cmd_site)

    p = sub.add_parser("info", help="show an atlas's provenance and progress")
    p.add_argument("atlas")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("weights", help="manage weights files")
    wsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = wsub.add_parser("fetch", help="download Keras's VGG16 weights into the cache")
    f.add_argument("which", nargs="?", default="notop", choices=["top", "notop"])
    f.add_argument("--cache-dir", default=None)
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_weights_fetch)
    return parser


def _add_distributed_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one of several processes (jax.distributed; found from SLURM, Open MPI or a TPU "
        "pod, or from the three options below): each computes a share of the units and "
        "process 0 writes OUT (docs/scaling-out.md)",
    )
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
    p.add_argument("--num-processes", type=int, default=None, metavar="N")
    p.add_argument("--process-id", type=int, default=None, metavar="I", help="0 to N-1")
    p.add_argument(
        "--peer-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the other processes to join, and for a silent one to beat "
        "again, before stopping with one line (default 120)",
    )


def _exit_on_signal(signum: int, frame) -> None:
    """Ends the process at once, with one line: nothing is half-written (every atlas
    change is an atomic snapshot), and tearing down XLA mid-start-up could crash."""
    name = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    sys.stdout.flush()
    sys.stderr.write(f"\njaxvis: error: {name}; re-run the same command to resume\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def entry() -> int:
    """The ``jaxvis`` executable: :func:`main`, with SIGINT and SIGTERM ending the process
    at once (see the module docstring). In-process callers of :func:`main` keep Python's
    own handlers."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_on_signal)
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return _fail("interrupted; re-run the same command to resume")
    except JaxvisError as e:
        return _fail(str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except RuntimeError as e:  # XLA's errors; only running out of memory is the user's
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
            raise
        return _fail("the device ran out of memory; use a smaller --batch or --size")
    return 0


def _fail(message: str) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"jaxvis: error: {line}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(entry())
