"""``jaxvis attribute`` and ``jaxvis export --overlay``: files in, files out.

``jaxvis attribute IMAGE_OR_DIR... --method M --target T --out maps.h5`` checks the
method, target and options (jaxvis/attribution/api.py), lists and hashes the images
(jaxvis/attribution/images.py), then decodes them a chunk at a time, attributes each
chunk and commits it to the maps file (jaxvis/attribution/maps_file.py) before the next,
so a kill loses at most the chunk in flight and the same command resumes. Every bad
input is refused before the maps file is created or changed.

jaxvis/cli.py registers :func:`add_parser` and turns JaxvisErrors into one line and
exit status 2. jax is imported only inside the commands.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

import numpy as np
from tqdm import tqdm

from jaxvis.atlas.names import printable
from jaxvis.errors import JaxvisError
from jaxvis.progress import format_duration

TARGET_HELP = (
    "what to explain: class:281 (a logit; needs a model with a head), "
    "channel:block5_conv3:17 (a channel's mean) or neuron:block5_conv3:17 (its centre)"
)
WEIGHTS_HELP = "imagenet (default), random (untrained), or for vgg16 a Keras VGG16 .h5 path"
OVERWRITE_HELP = (
    "start OUT over instead of resuming it: the new file is built in OUT.new and replaces "
    "OUT only once complete; never touches a file that is not a jaxvis maps file"
)
# CLI flag -> prepare() option; only the flags given are passed, so a method refuses
# options it does not take (e.g. --samples with gradcam).
OPTION_FLAGS = ("samples", "noise", "steps", "baseline", "reduce", "combine", "rule")
LOG_INTERVAL = 30.0  # s between progress lines when stderr is not a terminal


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
    p.add_argument("--samples", type=int, help="smoothgrad: noisy samples per image")
    p.add_argument("--noise", type=float, help="smoothgrad: noise std, relative to the range")
    p.add_argument("--steps", type=int, help="integrated_gradients: path steps")
    p.add_argument("--baseline", help="integrated_gradients: black, or an image file")
    p.add_argument("--reduce", help="how channels become one map: max_abs, sum_abs or sum")
    p.add_argument("--combine", help="smoothgrad: mean, abs or square")
    p.add_argument("--rule", help="integrated_gradients: right, left, midpoint, trapezoid, ...")
    p.add_argument("--seed", type=int, default=0)
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
    options = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None}
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
    overwrite: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
) -> str:
    """Writes (or resumes) the maps of every image in ``inputs`` to ``out``.

    Args:
      model: a :class:`~jaxvis.models.feature_model.FeatureModel`.
      inputs: image files and folders (jaxvis/attribution/images.py).
      method, target, layer, seed, batch, options: as for
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
        todo = writer.todo()
        with _Progress(len(todo), len(listing), stream=stream, enabled=progress) as shown:
            chunks = image_files.load_chunks(listing, todo, size=size, chunk=attributor.chunk)
            for part in chunks:
                _attribute_chunk(attributor, goal, part, writer, stream)
                shown.advance(len(part.indices) + len(part.failed))
        if not (writer.status == maps_file.FINISHED).any():
            raise JaxvisError(f"none of the {len(listing)} images could be attributed; see above")
        failed = int((writer.status == maps_file.FAILED).sum())
        if failed:
            _warn(stream, f"{failed} images failed; their maps are NaN, a re-run tries them again")
    return out


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
    stream.write(f"jaxvis: warning: {' '.join(message.split())}\n")
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


class _Progress:
    """Images done of those to do: a tqdm bar on a terminal, a line every
    :data:`LOG_INTERVAL` seconds elsewhere (a log file must not fill with ``\\r``)."""

    def __init__(self, todo: int, total: int, *, stream: TextIO, enabled: bool):
        self.todo, self.total, self.done = todo, total, 0
        self.stream, self.enabled = stream, enabled and todo > 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if enabled and todo < total:
            self._line(f"resuming: {total - todo} of {total} images are done")
        if self.enabled and getattr(stream, "isatty", lambda: False)():
            self.bar = tqdm(total=todo, unit="image", file=stream, dynamic_ncols=True, leave=False)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last >= LOG_INTERVAL):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = format_duration((self.todo - self.done) / rate) if rate else "?"
            self._line(f"{self.done}/{self.todo} images, {rate:.3g} images/s, ETA {eta}")

    def _line(self, text: str) -> None:
        self.stream.write(f"jaxvis: {text}\n")
        self.stream.flush()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            word = "stopped" if exc_type is not None else "done"
            took = format_duration(time.monotonic() - self.start)
            self._line(f"{word}: {self.done}/{self.todo} images in {took}")
