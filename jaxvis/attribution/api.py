"""Batched attribution maps: :func:`attribute`, and :func:`prepare` for callers that
feed images chunk by chunk (the ``jaxvis attribute`` command, maps files).

``prepare`` checks the method, its options and the layer once, and returns an
:class:`Attributor` whose description identifies the maps it makes. Calling it runs the
images through cached compiled programs (``jaxvis/attribution/program.py``), one per
target kind, in chunks sized from the device memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxvis import devices
from jaxvis.attribution import fits, inputs, layers, program, specs
from jaxvis.attribution.methods import Scorer
from jaxvis.attribution.specs import METHODS
from jaxvis.attribution.targets import Target, parse_target, per_image
from jaxvis.errors import JaxvisError, choices
from jaxvis.models.feature_model import FeatureModel

__all__ = ["METHODS", "Attributor", "Target", "attribute", "parse_target", "prepare"]

# The size prepare plans for when it is given none: the ImageNet models' input size.
DEFAULT_SIZE = 224


class Attributor:
    """Maps of one method with fixed options, for any images and targets.

    Attributes:
      method: canonical method name, one of :data:`METHODS`.
      layer: the CAM layer (given, or the default at the prepared size), else None.
      description: JSON-able ``method``, ``layer``, ``keepdims``, ``seed`` and every
        option with its default filled in; it identifies a maps file.
      chunk: images per compiled call at the prepared size.
      size: the prepared ``(H, W)``.
    """

    def __init__(self, model, spec, layer, keepdims: bool, batch, seed: int, hw, targets):
        self.model, self.spec, self.keepdims = model, spec, keepdims
        self.batch, self.seed, self.size = batch, seed, hw
        self.method = spec.method
        self.layer = self._layer(layer, hw, targets) if spec.cam else None
        self.chunk = program.plan(model, spec, hw, batch).chunk
        self.description = {
            "method": self.method,
            "layer": self.layer,
            "keepdims": keepdims,
            "seed": seed,
            **spec.described(),
        }

    def _layer(self, layer, hw, targets: Sequence[Target] | None) -> str:
        """The given layer, checked at ``hw``, or the default: the last map before the
        shallowest layer the targets read (the deepest layer computed, if none given)."""
        deepest, shapes = layers.deepest_shapes(self.model, hw)
        if layer is not None:
            return layers.check_layer(self.model, layer, shapes, hw)
        order = {info.name: i for i, info in enumerate(self.model.layers)}
        reads = [self.model.deepest(t.layers) for t in targets or ()] or [deepest]
        return layers.default_layer(self.model, shapes, hw, min(reads, key=order.__getitem__))

    def _baseline(self, hw) -> np.ndarray:
        b = self.spec.options.get("baseline")
        if not isinstance(b, np.ndarray):
            return np.zeros((*hw, 3), np.float32)
        if b.shape[:2] != hw:
            raise JaxvisError(f"baseline is {list(b.shape)} but the images are {list(hw)} px")
        return b

    def __call__(
        self,
        images: np.ndarray,
        targets: Sequence[Target],
        indices: np.ndarray,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Maps of ``images`` for ``targets`` (one per image).

        Args:
          images: float32 [N, H, W, 3] RGB in [0, 1].
          targets: N :class:`Target` s (or anything :func:`parse_target` takes).
          indices: int [N], each image's global index; its noise depends on it alone.
          progress: called with the number of images each finished chunk adds.

        Returns:
          float32 [N, H, W] ([N, H, W, C] with keepdims; [N, h, w] for CAMs with
          ``resize=False``). Results do not depend on chunking.
        """
        images, targets, indices = self._checked(images, targets, indices)
        out = None
        for members, prog, chunk in self._programs(images, targets):
            units = np.array([targets[i].unit for i in members], np.int64)
            for start, part in program.run_chunks(
                prog,
                self.model.params,
                images[members],
                units,
                indices[members],
                seed=self.seed,
                baseline=self._baseline(tuple(images.shape[1:3])),
                chunk=chunk,
            ):
                out = np.empty((len(images), *part.shape[1:]), np.float32) if out is None else out
                out[members[start : start + len(part)]] = part
                if progress is not None:
                    progress(len(part))
        return out

    def lower(self, images: np.ndarray, target) -> jax.stages.Lowered:
        """The lowered program of one chunk of ``images`` (one target for all), e.g. for
        XLA's cost analysis; nothing runs."""
        images, targets, _ = self._checked(images, [target] * len(images), np.arange(len(images)))
        ((members, prog, chunk),) = self._programs(images, targets)
        pick = np.minimum(np.arange(chunk), len(images) - 1)
        units = np.full(chunk, targets[0].unit, np.int32)
        baseline = self._baseline(tuple(images.shape[1:3]))
        args = (images[pick], units, pick.astype(np.uint32), np.uint32(self.seed), baseline)
        return prog.run.lower(self.model.params, *args)

    def _checked(self, images, targets, indices):
        images = inputs.check_images(images, self.model)
        n = len(images)
        if len(targets) != n:
            raise JaxvisError(f"got {len(targets)} targets for {n} images; give one per image")
        targets = [parse_target(t, self.model) for t in targets]
        return images, targets, inputs.check_indices(indices, n)

    def _programs(self, images, targets):
        """``[(positions, program, chunk)]``, one per target kind (one compiled program)."""
        model, hw = self.model, tuple(images.shape[1:3])
        layer = self._layer(self.layer, hw, None) if self.spec.cam else None
        plan = program.plan(model, self.spec, hw, self.batch)
        chunk = min(plan.chunk, devices.round_up(len(images), jax.device_count()))
        out = []
        for members in _groups(targets):
            target = targets[members[0]]
            if layer:
                layers.check_order(model, layer, target.layers, target.reads)
            stop_at = model.deepest(target.layers + ((layer,) if layer else ()))
            fits.check_fits(model, self.spec, stop_at, max(hw), chunk, plan.group)
            scorer = Scorer(model.apply, stop_at, target.objective)
            shape = tuple(layers.deepest_shapes(model, hw)[1][layer].shape) if layer else None
            key = (self.spec, scorer, layer, shape, self.keepdims, hw, plan.group)
            out.append((members, program.program(model, *key), chunk))
        return out


def _groups(targets: Sequence[Target]) -> list[np.ndarray]:
    """Image positions grouped by target objective (one compiled program each), in order
    of first appearance."""
    by: dict = {}
    for i, t in enumerate(targets):
        by.setdefault(t.objective, []).append(i)
    return [np.array(v, np.int64) for v in by.values()]


def prepare(
    model: FeatureModel,
    *,
    method: str,
    layer: str | None = None,
    keepdims: bool = False,
    batch: int | None = None,
    seed: int = 0,
    size: int | tuple[int, int] | None = None,
    target=None,
    **options,
) -> Attributor:
    """Checks a method, its options and its layer once; returns an :class:`Attributor`.

    Args:
      model: any :class:`~jaxvis.FeatureModel`.
      method: one of :data:`METHODS` (aliases such as ``"grad-cam"`` accepted).
      layer: the CAM methods' layer; ``None`` picks the last layer whose output is a
        spatial map larger than 1x1 at ``size`` and that comes before the layer the
        target reads (before the deepest layer, when ``target`` is not given). Other
        methods take none.
      keepdims: keep the channel axis: the raw per-channel gradient [N, H, W, 3] for
        gradient methods, [N, H, W, 1] for CAMs.
      batch: images per compiled call; ``None`` chooses from the device memory.
      seed: the seed of SmoothGrad's noise.
      size: the images' size, an int or (H, W), for the default layer and the chunk;
        ``None`` plans for :data:`DEFAULT_SIZE` (or ``model.min_size`` if larger).
      target: the target(s) the maps will explain, if known: one, or one per image
        (only the default layer depends on it).
      **options: the method's options (docs/attribution.md lists them with defaults).
    """
    spec = specs.resolve(method, options)
    missing = [t for t in spec.taps if t not in model.taps]
    if missing:
        raise JaxvisError(
            f"{spec.method} needs a model that honours taps {choices(missing)}, but "
            f"{model.name} offers {choices(sorted(model.taps)) or 'none'} (model.taps)"
        )
    if layer is not None and not spec.cam:
        raise JaxvisError(f"{spec.method} takes no layer; only {choices(specs.CAM_METHODS)} do")
    size = max(DEFAULT_SIZE, model.min_size) if size is None else size
    hw = inputs.check_size(size, model)
    keepdims, seed = inputs.check_keepdims(keepdims), inputs.check_seed(seed)
    targets = None if target is None else per_image(target, None, model)
    batch = inputs.check_batch(batch)
    return Attributor(model, spec, layer, keepdims, batch, seed, hw, targets)


@contextlib.contextmanager
def _progress(progress, method: str, n: int):
    """The per-chunk callback for ``progress``: None/False (none), True (the project's
    bar on stderr, jaxvis/progress.py) or a callable ``(done, total)``."""
    if progress is None or progress is False:
        yield None
    elif progress is True:
        from jaxvis.progress import Progress

        with Progress({method: n}, noun="images") as bar:
            bar.start_layer(method)
            yield lambda k: bar.advance(method, k)
    elif callable(progress):
        done = [0]

        def advance(k):
            done[0] += k
            progress(done[0], n)

        yield advance
    else:
        raise JaxvisError(f"progress must be True, False, None or a callable; got {progress!r}")


def attribute(
    model: FeatureModel,
    images,
    *,
    method: str,
    target,
    layer: str | None = None,
    keepdims: bool = False,
    batch: int | None = None,
    seed: int = 0,
    progress=None,
    **options,
) -> np.ndarray:
    """Attribution maps of ``images`` for ``target``.

    Args:
      model: any :class:`~jaxvis.FeatureModel`, e.g. ``jaxvis.vgg16()``.
      images: float [N, H, W, 3] RGB in [0, 1].
      method: one of :data:`METHODS`.
      target: one target for every image, or a sequence with one per image: an int
        (class logit), ``"class:281"``, ``"channel:LAYER:N"``, ``"neuron:LAYER:N"``, or an
        :class:`~jaxvis.objectives.Objective`.
      layer, keepdims, batch, seed, **options: as in :func:`prepare`.
      progress: True for a progress bar with rate and ETA, or a callable ``(done, total)``.

    Returns:
      float32 [N, H, W] maps ([N, H, W, C] with ``keepdims``). Image i's noise depends on
      (seed, i, sample) alone.
    """
    images = inputs.check_images(images, model)
    n = len(images)
    targets = per_image(target, n, model)
    attributor = prepare(
        model,
        method=method,
        layer=layer,
        keepdims=keepdims,
        batch=batch,
        seed=seed,
        size=tuple(images.shape[1:3]),
        target=targets,
        **options,
    )
    with _progress(progress, attributor.method, n) as advance:
        return attributor(images, targets, np.arange(n), progress=advance)
