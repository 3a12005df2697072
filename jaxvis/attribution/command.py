"""``jaxvis attribute`` and ``jaxvis export --overlay``: files in, files out.

``jaxvis attribute IMAGE_OR_DIR... --method M --target T --out maps.h5`` checks the
method, target and options (jaxvis/attribution/api.py), lists and hashes the images
(jaxvis/attribution/images.py), then decodes them a chunk at a time, attributes each
chunk and commits it to the maps file (jaxvis/attribution/maps_file/) before the next,
so a kill loses at most the chunk in flight and the same command resumes. Every bad
input is refused before the maps file is created or changed.

jaxvis/cli.py registers :func:`add_parser` and turns JaxvisErrors into one line and
exit status 2. jax is imported only inside the commands.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

import numpy as np

from jaxvis.atlas.names import printable
from jaxvis.attribution.flags import add_option_flags, given_options
from jaxvis.errors import JaxvisError
from jaxvis.progress import Progress

TARGET_HELP = (
    "what to explain: class:281 (a logit; needs a model with a head), "
    "channel:block5_conv3:17 (a channel's mean) or neuron:block5_conv3:17 (its centre)"
)
WEIGHTS_HELP = "imagenet (default), random (untrained), or for vgg16 a Keras VGG16 .h5 path"
OVERWRITE_HELP = (
    "start OUT over instead of resuming it: the new file is built in OUT.new and replaces "
    "OUT only once complete; never touches a file that is not a jaxvis maps file"
)


def add_parser(
    subparsers,
    *,
    model_options: Callable[[argparse.ArgumentParser], None] | None = None,
    load_model: Callable[[argparse.Namespace], object] | None = None,
) -> argparse.ArgumentParser:
    """Adds ``attribute`` to the CLI's subparsers; returns its parser.

    Args:
      subparsers: what ``ArgumentParser.add_subparsers`` returned.
      model_options: adds the model flags (jaxvis/cli.py's ``--model``, ``--weights``,
        ``--preprocess``); by default this module adds the same three.
      load_model: ``args -> FeatureModel``; by default
        :func:`jaxvis.models.catalog.load` of those flags.
    """
    p = subparsers.add_parser(
        "attribute", help="attribution maps of images into an HDF5 maps file (resumable)"
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--method", required=True, help="gradcam, gradient, smoothgrad, ...")
    p.add_argument("--target", required=True, help=TARGET_HELP)
    p.add_argument("--out", required=True, help="maps file, e.g. maps.h5")
    (model_options or _model_options)(p)
    p.add_argument("--layer", default=None, help="layer of CAM methods (default: the last map)")
    p.add_argument("--size", type=int, default=224, help="images are resized to SIZE x SIZE")
    add_option_flags(p)
    p.add_argument(
        "--keepdims",
        action="store_true",
        help="keep the channel axis: maps [N, H, W, 3] for gradient methods, [N, H, W, 1] "
        "for CAMs (the overlay sums magnitudes over it)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of smoothgrad's noise")
    p.add_argument("--batch", type=int, default=None, help="images per chunk (default: auto)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=functools.partial(cmd_attribute, load_model=load_model or _load_model))
    return p


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vgg16", help="vgg16 (default), alexnet or PATH.keras")
    p.add_argument("--weights", default="imagenet", help=WEIGHTS_HELP)
    p.add_argument("--preprocess", default="none", help="a .keras model's input convention")


def _load_model(args: argparse.Namespace):
    from jaxvis.models import catalog

    preprocess = None if args.preprocess == "none" else args.preprocess
    return catalog.load(args.model, weights=args.weights, preprocess=preprocess)


def cmd_attribute(args: argparse.Namespace, model=None, load_model=None) -> None:
    """Runs ``jaxvis attribute``: ``model`` if given, else ``load_model(args)``."""
    model = model if model is not None else (load_model or _load_model)(args)
    options = given_options(args)
    if isinstance(options.get("baseline"), str) and options["baseline"] != "black":
        options["baseline"] = _baseline_image(options["baseline"], args.size)
    out = attribute_files(
        model,
        args.images,
        method=args.method,
        target=args.target,
        out=args.out,
        layer=args.layer,
        size=args.size,
        seed=args.seed,
        batch=args.batch,
        options=options,
        keepdims=args.keepdims,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(out)


def attribute_files(
    model,
    inputs: Sequence[str],
    *,
    method: str,
    target,
    out: str,
    layer: str | None = None,
    size: int = 224,
    seed: int = 0,
    batch: int | None = None,
    options: Mapping[str, object] | None = None,
    keepdims: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
) -> str:
    """Writes (or resumes) the maps of every image in ``inputs`` to ``out``.

    Args:
      model: a :class:`~jaxvis.models.feature_model.FeatureModel`.
      inputs: image files and folders (jaxvis/attribution/images.py).
      method, target, layer, seed, batch, options, keepdims: as for
        :func:`jaxvis.attribution.prepare` and :func:`jaxvis.attribution.parse_target`.
      out: the maps file; resumed if it holds the same run, refused if another.
      size: image side; every image is resized to ``size`` x ``size``.
      overwrite: start ``out`` over (built in ``out.new`` until complete).
      progress: show progress and warnings on ``stream`` (stderr by default).

    Returns:
      ``out``.
    """
    from jaxvis.attribution import images as image_files
    from jaxvis.attribution import maps_file
    from jaxvis.attribution.api import parse_target, prepare

    stream = sys.stderr if stream is None else stream
    size = model.check_size(size)
    maps_file.check_out(out)
    goal = parse_target(target, model)
    attributor = prepare(
        model,
        method=method,
        layer=layer,
        keepdims=keepdims,
        batch=batch,
        seed=seed,
        size=size,
        target=goal,
        **(options or {}),
    )
    listing = image_files.list_images(inputs, warn=lambda m: _warn(stream, m))
    run = maps_file.MapsRun(
        model=model.name,
        weights=model.info.to_dict() if model.info else {},
        dtype=str(model.dtype),
        description=dict(attributor.description),
        size=size,
        images=listing,
        targets=(goal.description,) * len(listing),  # one --target for all images
    )
    with maps_file.MapsWriter(out, run, overwrite=overwrite) as writer:
        _attribute_all(attributor, goal, writer, size=size, stream=stream, progress=progress)
        if not (writer.status == maps_file.FINISHED).any():
            raise JaxvisError(f"none of the {len(listing)} images could be attributed; see above")
        failed = int((writer.status == maps_file.FAILED).sum())
        if failed:
            _warn(stream, f"{failed} images failed; their maps are NaN, a re-run tries them again")
    return out


def _attribute_all(attributor, goal, writer, *, size: int, stream: TextIO, progress: bool) -> None:
    """Decodes, attributes and commits the images not done yet, a chunk at a time, with
    the project's progress display (jaxvis/progress.py) counting images."""
    from jaxvis.attribution import images as image_files

    todo, listing = writer.todo(), writer.run.images
    if progress and len(todo) < len(listing):
        _note(stream, f"resuming: {len(listing) - len(todo)} of {len(listing)} images are done")
    stage, enabled = attributor.method, progress and len(todo) > 0
    with Progress({stage: len(todo)}, stream=stream, enabled=enabled, noun="images") as shown:
        shown.start_layer(stage)
        for part in image_files.load_chunks(listing, todo, size=size, chunk=attributor.chunk):
            _attribute_chunk(attributor, goal, part, writer, stream)
            shown.advance(stage, len(part.indices) + len(part.failed))


def _attribute_chunk(attributor, goal, part, writer, stream: TextIO) -> None:
    """Attributes one decoded chunk and commits it; failed images are marked failed."""
    for i, why in part.failed.items():
        _warn(stream, f"image {i} ({printable(writer.run.images.paths[i])}) failed: {why}")
    if part.failed:
        writer.fail(np.array(sorted(part.failed), np.int64))
    if not len(part.indices):
        return
    maps = np.asarray(attributor(part.images, [goal] * len(part.indices), part.indices))
    finite = np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
    for i in part.indices[~finite].tolist():
        where = printable(writer.run.images.paths[i])
        _warn(stream, f"image {i} ({where}) failed: its map is not finite")
    if (~finite).any():
        writer.fail(part.indices[~finite])
    if finite.any():
        writer.write(part.indices[finite], maps[finite])


def _baseline_image(path: str, size: int) -> np.ndarray:
    from jaxvis.attribution import images as image_files

    try:
        return image_files.load_image(path, size)
    except image_files.Unreadable as e:
        raise JaxvisError(f"cannot read the baseline {path}: {e}") from None


def _warn(stream: TextIO, message: str) -> None:
    _note(stream, f"warning: {message}")


def _note(stream: TextIO, message: str) -> None:
    stream.write(f"jaxvis: {' '.join(message.split())}\n")
    stream.flush()


def cmd_export_overlays(args: argparse.Namespace) -> None:
    """``jaxvis export maps.h5 --out DIR --overlay [--format F] [--force]``."""
    from jaxvis.attribution.overlay import export_overlays

    if getattr(args, "layers", None):
        raise JaxvisError("--layers applies to atlases; a maps file exports all its maps")
    written = export_overlays(
        args.atlas,
        args.out,
        fmt=args.format,
        colormap=getattr(args, "colormap", None) or "inferno",
        force=args.force,
        warn=lambda m: _warn(sys.stderr, m),
    )
    print(f"wrote {len(written)} files to {args.out}")
