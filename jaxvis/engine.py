"""The batched engine: many filters per compiled call, on one device or several.

``visualize`` is the jaxvis counterpart of keras-vis's ``visualize_activation``, for a
whole list of filters at once. Units are processed in chunks; each chunk is one vmapped
program (see :mod:`jaxvis.ascent`) driven in blocks of unrolled steps. Compiled programs
are cached per (model, layer, size, steps, config), so a second call with the same shapes
traces nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import time
import zlib
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis import devices, presets
from jaxvis import transforms as tfm
from jaxvis._types import Params, PRNGKey
from jaxvis.ascent import Ascent
from jaxvis.errors import JaxvisError
from jaxvis.models.model import FeatureModel

# Steps unrolled per compiled block. On XLA:CPU a while-loop body ran convolutions 3-4x
# slower than straight-line code (shared/PERF-NOTES.md, fact 1), so the step loop is a
# Python loop over compiled blocks; more steps per block cost compile time, fewer cost
# dispatch. Chosen by benchmarks/chunk_sweep.py.
BLOCK_STEPS = {"cpu": 8, "gpu": 16, "tpu": 16}
_CACHE_SIZE = 32
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_duration(event: str, seconds: float, **_) -> None:
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += seconds


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def compile_seconds_so_far() -> float:
    """Seconds this process has spent tracing, lowering and compiling with jax."""
    return _compile_seconds[0]


def unit_key(seed: int, layer: str, unit: int) -> PRNGKey:
    """The random key of one unit, from (seed, layer, unit) alone.

    It does not depend on chunk size, position in the chunk or device count, so a filter's
    picture is reproducible across runs and machines (up to float tolerance).
    """
    return unit_keys(seed, layer, [unit])[0]


def unit_keys(seed: int, layer: str, units: Sequence[int]) -> PRNGKey:
    """Keys for several units [N]; unit u's key is the same in any list (see unit_key)."""
    layer_id = zlib.crc32(layer.encode()) & 0x7FFFFFFF  # stable, unlike Python's hash()
    base = jax.random.fold_in(jax.random.key(seed), layer_id)
    return jax.vmap(lambda u: jax.random.fold_in(base, u))(jnp.asarray(units, jnp.uint32))


@dataclasses.dataclass(frozen=True)
class Visualization:
    """The result of :func:`visualize`.

    Attributes:
      layer: the visualized layer.
      filters: int [N], the filters that succeeded, in request order.
      images: uint8 [N, H, W, 3] (or [N, B, H, W, 3] for a batch of B images per unit).
      objective: float32 [N], the objective of the final image without transforms.
      history: float32 [N, steps], the objective at every step.
      failed: ``{filter: message}`` for units whose objective became non-finite.
      config: the resolved run config, as written into atlases.
      seconds: wall time of the optimization, compile time excluded.
      compile_seconds: time spent tracing and compiling in this call.
    """

    layer: str
    filters: np.ndarray
    images: np.ndarray
    objective: np.ndarray
    history: np.ndarray
    failed: dict[int, str]
    config: dict
    seconds: float
    compile_seconds: float


class Program:
    """The compiled pieces for one (model, layer, recipe): init, a block of steps, finish.

    Attributes:
      traces: how many times any piece was traced (tests check a second call adds none).
    """

    def __init__(self, ascent: Ascent, block_steps: int):
        self.ascent = ascent
        self.block_steps = block_steps
        self.traces = 0
        self.init = jax.jit(self._init)
        self.block = jax.jit(self._block, donate_argnums=(1,))
        self.finish = jax.jit(self._finish)

    def _init(self, keys):
        self.traces += 1
        return jax.vmap(self.ascent.init_one)(keys)

    def _block(self, params, state, keys, units, start):
        self.traces += 1
        step = jax.vmap(self.ascent.step_one, in_axes=(None, 0, 0, 0, None))
        values = []
        for j in range(self.block_steps):  # unrolled on purpose: see BLOCK_STEPS
            state, value = step(params, state, keys, units, start + j)
            values.append(value)
        return state, jnp.stack(values, axis=1)

    def _finish(self, params, state, units):
        self.traces += 1
        return jax.vmap(self.ascent.finish_one, in_axes=(None, 0, 0))(params, state, units)

    def run(self, params: Params, keys: PRNGKey, units: jax.Array):
        """Runs every step for a chunk of units. Returns (images, values, history)."""
        steps = self.ascent.recipe.steps
        state = self.init(keys)
        blocks = []
        for start in range(0, steps, self.block_steps):
            state, values = self.block(params, state, keys, units, jnp.int32(start))
            blocks.append(values)
        images, final = self.finish(params, state, units)
        history = jnp.concatenate(blocks, axis=1)[:, :steps]
        return images, final, history


_programs: collections.OrderedDict = collections.OrderedDict()


def block_steps_for(steps: int, platform: str) -> int:
    """Steps per compiled block: a divisor of ``steps`` near the platform's target.

    A divisor avoids wasted masked steps; if the best divisor is under half the target
    (e.g. a prime step count), the target is used and the excess steps are masked.
    """
    target = BLOCK_STEPS.get(platform, 16)
    if steps <= target:
        return steps
    divisor = max(d for d in range(1, target + 1) if steps % d == 0)
    return divisor if divisor * 2 >= target else target


def program(
    model: FeatureModel,
    layer: str,
    size: int,
    config: presets.Config,
    *,
    steps: int | None = None,
    objective=None,
    param=None,
    transform="preset",
    optimizer=None,
    platform: str | None = None,
) -> Program:
    """The cached compiled program for these settings (built on first use)."""
    platform = platform or jax.default_backend()
    key = (model, layer, size, config, steps, objective, param, transform, optimizer, platform)
    if key in _programs:
        _programs.move_to_end(key)
        return _programs[key]
    recipe = presets.resolve(
        config,
        layer,
        size,
        steps=steps,
        objective=objective,
        param_=param,
        transform=transform,
        optimizer=optimizer,
    )
    stop_at = deepest_layer(model, recipe.objective.layers or (layer,))
    ascent = Ascent(apply=model.apply, stop_at=stop_at, recipe=recipe)
    prog = Program(ascent, block_steps_for(recipe.steps, platform))
    _programs[key] = prog
    while len(_programs) > _CACHE_SIZE:
        _programs.popitem(last=False)
    return prog


def deepest_layer(model: FeatureModel, layers: Iterable[str]) -> str:
    """The layer, among ``layers``, that comes last in the model (the truncation point)."""
    order = {la.name: i for i, la in enumerate(model.layers)}
    names = [la.removesuffix(":pre") for la in layers]
    for name in names:
        model.layer(name)  # one-line error listing valid layers
    return max(names, key=order.__getitem__)


def check_filters(model: FeatureModel, layer: str, filters: Iterable[int]) -> np.ndarray:
    """Filters as int array, or a one-line error giving the layer's filter count."""
    count = model.num_filters(layer)
    try:
        units = np.array([int(f) for f in filters], dtype=np.int64)
    except (TypeError, ValueError):
        raise JaxvisError(f"filters must be integers in [0, {count}) for {layer}") from None
    if units.size == 0:
        raise JaxvisError(f"no filters given for {layer}; it has {count} (0-{count - 1})")
    bad = units[(units < 0) | (units >= count)]
    if bad.size:
        raise JaxvisError(
            f"filter {int(bad[0])} is out of range for {layer}, which has {count} filters "
            f"(0-{count - 1})"
        )
    return units


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def failure(history: np.ndarray, final: float, image: np.ndarray) -> str | None:
    """Why a unit failed (a non-finite objective or image), or None if it did not."""
    bad = np.flatnonzero(~np.isfinite(history))
    if bad.size:
        return f"objective became non-finite at step {int(bad[0])}"
    if not np.isfinite(final):
        return "final objective is non-finite"
    if not np.isfinite(image).all():
        return "image has non-finite pixels"
    return None


def run_chunk(
    prog: Program, params: Params, seed: int, layer: str, units: np.ndarray, chunk: int
) -> dict:
    """Runs one chunk (padded to ``chunk`` units and masked) and fetches the results.

    Returns:
      dict with ``filters``, ``images`` (uint8), ``objective``, ``history`` for the units
      that succeeded, ``failed`` ({filter: message}) and ``seconds``.
    """
    n = len(units)
    padded = np.concatenate([units, np.full(chunk - n, units[-1])]).astype(np.int32)
    keys = unit_keys(seed, layer, padded)
    ids = jnp.asarray(padded)
    sharding = devices.unit_sharding()
    if sharding is not None:
        keys, ids = jax.device_put((keys, ids), sharding)
        params = jax.device_put(params, devices.replicated())
    start, compiling = time.perf_counter(), compile_seconds_so_far()
    images, final, history = jax.device_get(prog.run(params, keys, ids))
    compile_seconds = compile_seconds_so_far() - compiling
    seconds = time.perf_counter() - start - compile_seconds
    ok, failed = [], {}
    for i, unit in enumerate(units.tolist()):
        why = failure(history[i], final[i], images[i])
        if why is None:
            ok.append(i)
        else:
            failed[unit] = f"filter {unit} of {layer} failed: {why}"
    imgs = images[ok]
    imgs = imgs[:, 0] if imgs.shape[1] == 1 else imgs  # [N, B, H, W, 3] -> [N, H, W, 3]
    return {
        "filters": units[ok],
        "images": _to_uint8(imgs),
        "objective": final[ok],
        "history": history[ok],
        "failed": failed,
        "seconds": seconds,
        "compile_seconds": compile_seconds,
    }


def _transform_override(transforms) -> tfm.Transform | None | str:
    if transforms is None:
        return "preset"
    if callable(transforms):
        return transforms
    transforms = list(transforms)
    return tfm.compose(*transforms) if transforms else None


def visualize(
    model: FeatureModel,
    layer: str,
    filters: Iterable[int],
    *,
    size: int = 224,
    steps: int | None = None,
    preset: str | presets.Config = "lucid",
    seed: int = 0,
    batch: int | None = None,
    objective=None,
    param=None,
    transforms=None,
    optimizer=None,
) -> Visualization:
    """Activation maximization for many filters of one layer, chunk by chunk.

    Args:
      model: a :class:`~jaxvis.FeatureModel`, e.g. ``jaxvis.vgg16()``.
      layer: layer name, e.g. ``"block5_conv2"``.
      filters: filter indices of that layer.
      size: image side in pixels.
      steps: gradient steps; ``None`` takes the preset's.
      preset: ``"lucid"`` (default), ``"keras-vis"`` or a :class:`~jaxvis.Config`.
      seed: a unit's randomness comes from (seed, layer, filter) alone.
      batch: units per compiled chunk; ``None`` chooses for the device (see
        :mod:`jaxvis.devices`).
      objective: an :class:`~jaxvis.objectives.Objective` using the traced unit, instead
        of the preset's channel objective.
      param: a :class:`~jaxvis.param.Param` instead of the preset's.
      transforms: a transform or a list of them; ``[]`` for none; ``None`` for the preset's.
      optimizer: an ``optax.GradientTransformation`` instead of the preset's.

    Returns:
      A :class:`Visualization`; failed units are listed in ``.failed``, never returned as
      images.
    """
    units = check_filters(model, layer, filters)
    size = check_size(model, size)
    config = presets.get(preset)
    prog = program(
        model,
        layer,
        size,
        config,
        steps=steps,
        objective=objective,
        param=param,
        transform=_transform_override(transforms),
        optimizer=optimizer,
    )
    if batch is not None:
        check_batch(batch)
    chunk = devices.chunk_size(model, prog.ascent.stop_at, size, len(units), batch)
    parts = [
        run_chunk(prog, model.params, seed, layer, units[i : i + chunk], chunk)
        for i in range(0, len(units), chunk)
    ]
    return Visualization(
        layer=layer,
        filters=np.concatenate([p["filters"] for p in parts]),
        images=np.concatenate([p["images"] for p in parts]),
        objective=np.concatenate([p["objective"] for p in parts]),
        history=np.concatenate([p["history"] for p in parts]),
        failed={k: v for p in parts for k, v in p["failed"].items()},
        config=prog.ascent.recipe.description,
        seconds=sum(p["seconds"] for p in parts),
        compile_seconds=sum(p["compile_seconds"] for p in parts),
    )


def check_size(model: FeatureModel, size: int) -> int:
    if not isinstance(size, (int, np.integer)) or size < model.min_size:
        raise JaxvisError(f"size must be an integer >= {model.min_size} px; got {size!r}")
    return int(size)


def check_runs(model: FeatureModel, layer: str, size: int) -> None:
    """Traces the model at this size (no compute) so shape errors, like a head layer at a
    size other than 224, surface before any file is written."""
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    jax.eval_shape(lambda params, x: model.apply(params, x, layer), model.params, image)


def check_batch(batch: int) -> int:
    if not isinstance(batch, (int, np.integer)) or batch < 1:
        raise JaxvisError(f"batch must be a positive integer (units per chunk); got {batch!r}")
    return int(batch)
