"""Compiled attribution programs: one per (model.apply, method, options, image shape,
layer, target objective), vmapped over images, cached like the engine's
(``jaxvis/engine.py``).

The unit (class or channel index), the image index and the seed are arguments, so every
target of one kind and every seed share a program. Randomness is
``fold_in(fold_in(key(seed), index), sample)``: a map depends on its image's global index,
never on the chunk it ran in. Params are arguments, never captured.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis import devices
from jaxvis._types import Params
from jaxvis.attribution import cam, layers, memo, methods
from jaxvis.attribution.specs import Spec

_CACHE_SIZE = 32
_programs: collections.OrderedDict = collections.OrderedDict()
_traces = [0]
# What devices.auto_chunk assumes of an accelerator that reports no memory limit.
_DEFAULT_MEMORY = 16 * 2**30


def trace_count() -> int:
    """How many times any attribution program was traced in this process (tests check
    that a second call adds none)."""
    return _traces[0]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call is cut up.

    Attributes:
      chunk: images per compiled call.
      group: passes per image vmapped at once: SmoothGrad samples, Integrated Gradients
        path points, Score-CAM masked images (its ``score_batch``); 1 for the rest.
    """

    chunk: int
    group: int


def passes(spec: Spec) -> int:
    """Passes through the model that one image vmaps at once, at most."""
    o = spec.options
    if spec.method == "smoothgrad":
        return int(o["samples"])
    if spec.method == "integrated_gradients":
        return int(o["steps"])
    if spec.method == "scorecam":
        return int(o["score_batch"])
    return 1


def plan(model, spec: Spec, hw: tuple[int, int], batch: int | None) -> Plan:
    """The chunk by the engine's rule (``jaxvis/devices.py``): one image per device on
    CPU; on accelerators as many as fit in half the memory, counting every pass an image
    vmaps. Passes that do not fit in half the memory for one image run in groups."""
    side = max(hw)  # a square of the longer side: an upper bound on the activations
    deepest, _ = layers.deepest_shapes(model, (side, side))
    key = ("activation_bytes", memo.model_key(model), deepest, side)
    per_pass = memo.memo(key, lambda: devices.activation_bytes(model, deepest, side))
    memory = devices.available_memory(jax.devices()[0]) or _DEFAULT_MEMORY
    n = passes(spec)
    fit = max(1, int(memory * 0.5 // per_pass))
    group = n if spec.method == "scorecam" or fit >= n else 1 << (fit.bit_length() - 1)
    n_dev = jax.device_count()
    if batch is not None:
        chunk = devices.round_up(batch, n_dev)
    elif jax.devices()[0].platform == "cpu":
        chunk = n_dev
    else:
        chunk = devices.accelerator_chunk(per_pass * group, memory, n_dev)
    return Plan(chunk, group)


def _pixel(spec: Spec, scorer, keepdims: bool, group: int) -> Callable:
    o = spec.options

    def per_channel(params, image, unit, key, baseline):
        if spec.method == "smoothgrad":
            kw = {k: o[k] for k in ("noise", "samples", "combine")}
            return methods.smoothgrad(scorer, params, image, unit, key, **kw, group=group)
        if spec.method == "integrated_gradients":
            kw = {"steps": o["steps"], "rule": o["rule"], "group": group}
            return methods.integrated_gradients(scorer, params, image, unit, baseline, **kw)
        guided = spec.method == "guided_backprop"
        return methods.input_gradient(scorer, params, image, unit, guided=guided)

    def one(params, image, unit, key, baseline):
        g = per_channel(params, image, unit, key, baseline)
        return g if keepdims else methods.reduce_channels(g, o["reduce"])

    return one


def _cam(spec: Spec, scorer, layer: str, shape: tuple, keepdims: bool) -> Callable:
    o = spec.options

    def layer_map(params, image, unit):
        if spec.method == "scorecam":
            return cam.scorecam(scorer, params, image, unit, layer, score_batch=o["score_batch"])
        acts, grads = cam.layer_gradient(scorer, params, image, unit, layer, shape)
        if spec.method == "gradcam++":
            return cam.gradcam_plus_plus(acts, grads)
        return cam.gradcam(acts, grads)

    def one(params, image, unit, key, baseline):
        m = layer_map(params, image, unit)
        if spec.method == "guided_gradcam":
            g = methods.input_gradient(scorer, params, image, unit, guided=True)
            g = g * cam.upsample(m, image.shape[:2])[..., None]
            return g if keepdims else methods.reduce_channels(g, o["reduce"])
        m = cam.upsample(m, image.shape[:2]) if o["resize"] else m
        return m[..., None] if keepdims else m

    return one


class Program:
    """One compiled attribution program; ``run`` maps a chunk of images.

    Attributes:
      traces: how many times ``run`` was traced (a new chunk shape traces again).
    """

    def __init__(self, one: Callable):
        self._one = one
        self.traces = 0
        self.run = jax.jit(self._run)

    def _run(self, params, images, units, indices, seed, baseline):
        self.traces += 1
        _traces[0] += 1
        base = jax.random.key(seed)

        def per_image(image, unit, index):
            return self._one(params, image, unit, jax.random.fold_in(base, index), baseline)

        return jax.vmap(per_image)(images, units, indices)


def program(model, spec: Spec, scorer, layer, layer_shape, keepdims, hw, group) -> Program:
    """The cached :class:`Program` for these settings (built on first use)."""
    names = tuple(info.name for info in model.layers)
    key = (model.apply, names, spec.method, spec.key(), scorer.stop_at, scorer.objective)
    key += (layer, layer_shape, keepdims, tuple(hw), group)
    if key in _programs:
        _programs.move_to_end(key)
        return _programs[key]
    if spec.cam:
        one = _cam(spec, scorer, layer, layer_shape, keepdims)
    else:
        one = _pixel(spec, scorer, keepdims, group)
    prog = _programs[key] = Program(one)
    while len(_programs) > _CACHE_SIZE:
        _programs.popitem(last=False)
    return prog


def run_chunks(
    prog: Program,
    params: Params,
    images: np.ndarray,
    units: np.ndarray,
    indices: np.ndarray,
    *,
    seed: int,
    baseline: np.ndarray,
    chunk: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, maps)`` for each chunk of ``images`` [n, H, W, 3]; the last chunk is
    padded with copies of its last image (one compiled shape) and the padding dropped."""
    sharding = devices.unit_sharding()
    if sharding is not None:
        params = jax.device_put(params, devices.replicated())
    seed = jnp.uint32(seed)
    for start in range(0, len(images), chunk):
        stop = min(start + chunk, len(images))
        pick = np.minimum(np.arange(start, start + chunk), stop - 1)
        args = (images[pick], units[pick].astype(np.int32), indices[pick].astype(np.uint32))
        if sharding is not None:
            args = jax.device_put(args, sharding)
        maps = prog.run(params, *args, seed, baseline)
        yield start, np.asarray(jax.device_get(maps))[: stop - start]
