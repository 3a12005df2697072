"""The batched engine: many filters per compiled call, on one device or several.

``visualize`` is the jaxvis counterpart of keras-vis's ``visualize_activation``, for a
whole list of filters at once. Units are processed in chunks; each chunk is one vmapped
program (see :mod:`jaxvis.ascent`) driven in blocks of unrolled steps.

The path from a request to results is one straight line: :func:`program` builds (or finds
in its cache) the compiled pieces for a layer, and :func:`jaxvis.inflight.chunks` runs a
layer's units through them chunk by chunk, one chunk in flight ahead, yielding one typed
:class:`~jaxvis.chunk.Chunk` each time.
:func:`visualize` concatenates the chunks; ``jaxvis.scheduler.generate_atlas`` writes each
one to the atlas as it comes.

Optimization snapshots (``snapshots=K``) are taken between blocks: the block size is
chosen to divide K (see :func:`block_steps_for`), and after every block that ends at a
multiple of K one more compiled piece, ``snap``, turns the state into uint8 pictures on
the device. The block, init and finish programs are the same with snapshots on or off,
so snapshots off compile and run exactly what they did before snapshots existed.

Compiled programs are cached on what the compiled code depends on: the model's ``apply``
and layer names, the layer, the size and the recipe. The params are arguments of every
call and never part of the key, so the cache keeps no model's weights alive.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis import conv_tune, devices, presets
from jaxvis._types import Params, PRNGKey
from jaxvis.ascent import Ascent
from jaxvis.errors import JaxvisError
from jaxvis.inflight import check_snapshots, chunks
from jaxvis.models.feature_model import FeatureModel

# Steps unrolled per compiled block. On XLA:CPU a while-loop body ran convolutions 3-4x
# slower than straight-line code (benchmarks/README.md, "while-loop convolutions"), so the
# step loop is a Python loop over compiled blocks; more steps per block cost compile time,
# fewer cost dispatch. Chosen by benchmarks/chunk_sweep.py.
BLOCK_STEPS = {"cpu": 8, "gpu": 16, "tpu": 16}
# Overrides BLOCK_STEPS on every platform: compile time grows about linearly with the steps
# per block (benchmarks/README.md, "Test suite time"), so short runs, such as the test
# suite's, compile faster with small blocks.
BLOCK_STEPS_ENV = "JAXVIS_BLOCK_STEPS"
# Platforms on which the target conv computes only the traced unit's channel by default
# (``Taps.select``; benchmarks/README.md, "One channel of the target conv"). Measured on
# CPU; on accelerators it is unmeasured, so they keep the full conv unless asked.
SELECT_PLATFORMS = frozenset({"cpu"})
_CACHE_SIZE = 32


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
      snapshots: uint8 [N, S, H, W, 3] (or [N, S, B, H, W, 3]) with ``snapshots=K``, else
        None: snapshot s is the picture after step ``(s + 1) * K``, so ``S = steps // K``,
        and when K divides the steps the last snapshot is ``images`` itself.
      snapshot_every: K, or 0 without snapshots.
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
    snapshots: np.ndarray | None = None
    snapshot_every: int = 0


class Program:
    """The compiled pieces for one (model, layer, recipe): init, a block of steps, finish,
    and ``snap`` (the pictures of a state, compiled only once snapshots are asked for).

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
        self.snap = jax.jit(self._snap)

    def _init(self, keys):
        self.traces += 1
        return jax.vmap(self.ascent.init_one)(keys)

    def _block(self, params, state, keys, units, start):
        self.traces += 1
        # A nested jit: the step is traced and lowered once, not once per unrolled copy.
        # XLA inlines the calls, so the compiled block is the same program; this only
        # cuts the Python time of a compile, which the persistent cache cannot keep
        # (benchmarks/README.md, "Persistent compilation cache").
        step = jax.jit(jax.vmap(self.ascent.step_one, in_axes=(None, 0, 0, 0, None)))
        values = []
        for j in range(self.block_steps):  # unrolled on purpose: see BLOCK_STEPS
            state, value = step(params, state, keys, units, start + j)
            values.append(value)
        return state, jnp.stack(values, axis=1)

    def _finish(self, params, state, units):
        self.traces += 1
        return jax.vmap(self.ascent.finish_one, in_axes=(None, 0, 0))(params, state, units)

    def _snap(self, state):
        self.traces += 1
        return jax.vmap(self.ascent.snapshot_one)(state)

    def run(self, params: Params, keys: PRNGKey, units: jax.Array, every: int = 0):
        """Runs every step for a chunk of units.

        Args:
          every: take a snapshot after every ``every`` steps (0: none); a multiple of
            ``block_steps`` unless it is the number of steps (:func:`program` chooses the
            block size so).

        Returns:
          Device arrays, as soon as every piece is dispatched (it does not wait for the
          device; see :func:`launch_chunk`):
          ``(images, values, history, snapshots)``; ``snapshots`` is a tuple of uint8
          [N, B, H, W, 3], one after each multiple of ``every`` short of the last step
          (the final picture, from ``finish``, is the snapshot at the last step).
        """
        steps = self.ascent.recipe.steps
        if every and every < steps and every % self.block_steps:
            raise JaxvisError(
                f"snapshots every {every} steps need blocks that divide {every}; this "
                f"program runs blocks of {self.block_steps} (use engine.program(snapshots=))"
            )
        state = self.init(keys)
        blocks, shots = [], []
        for start in range(0, steps, self.block_steps):
            state, values = self.block(params, state, keys, units, jnp.int32(start))
            blocks.append(values)
            end = start + self.block_steps
            if every and end % every == 0 and end < steps:  # before the next block donates it
                shots.append(self.snap(state))
        images, final = self.finish(params, state, units)
        history = jnp.concatenate(blocks, axis=1)[:, :steps]
        return images, final, history, tuple(shots)

    def step_flops(self, params: Params) -> float:
        """FLOPs of one step of one unit, as XLA counts them in the lowered program (model,
        parameterization, transforms and optimizer alike; nothing is compiled or run)."""
        key = jax.random.key(0)
        state = jax.eval_shape(self.ascent.init_one, key)
        step = jax.jit(self.ascent.step_one)
        lowered = step.lower(params, state, key, jnp.int32(0), jnp.int32(0))
        return float(lowered.cost_analysis()["flops"])


_programs: collections.OrderedDict = collections.OrderedDict()


def selects(model: FeatureModel, stop_at: str, objective) -> bool:
    """Whether the forward pass can compute only the traced unit's channel of ``stop_at``:
    a conv layer that the model can slice (``FeatureModel.can_select``), and an objective that reads
    nothing else of it (``Objective.on_unit_channel``). A channel objective then costs
    one output channel of the target conv instead of all of them."""
    return (
        model.can_select(stop_at)
        and objective.uses_unit
        and objective.on_unit_channel(stop_at) is not None
    )


def block_target(platform: str) -> int:
    """The platform's steps per block before fitting to a run: ``$JAXVIS_BLOCK_STEPS``
    where set, else :data:`BLOCK_STEPS`."""
    raw = os.environ.get(BLOCK_STEPS_ENV, "").strip()
    if not raw:
        return BLOCK_STEPS.get(platform, 16)
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise JaxvisError(f"{BLOCK_STEPS_ENV} must be a positive whole number; got {raw!r}")
    return int(raw)


def block_steps_for(steps: int, platform: str, every: int = 0) -> int:
    """Steps per compiled block: a divisor of ``steps`` near the platform's target.

    A divisor avoids wasted masked steps; if the best divisor is under half the target
    (e.g. a prime step count), the target is used and the excess steps are masked.

    With snapshots every ``every`` steps a block must end at each multiple of ``every``
    before the last step:
    the usual block is kept when it divides ``every`` (any multiple of 8 on CPU, of 16 on
    GPU/TPU, for the usual step counts), else the largest divisor of ``every`` up to the
    target is used, which runs more, shorter blocks (e.g. 1-step blocks for a prime K).
    """
    target = block_target(platform)
    if steps <= target:
        block = steps
    else:
        divisor = max(d for d in range(1, target + 1) if steps % d == 0)
        block = divisor if divisor * 2 >= target else target
    if every and every < steps and every % block:  # K = steps: the final picture only
        block = max(d for d in range(1, min(every, target) + 1) if every % d == 0)
    return block


def program(
    model: FeatureModel,
    layer: str,
    size: int,
    config: presets.Config,
    *,
    steps: int | None = None,
    objective=None,
    param=None,
    transforms=None,
    optimizer=None,
    platform: str | None = None,
    snapshots: int | None = None,
    select: bool | None = None,
    convs: tuple = (),
) -> Program:
    """The cached compiled program for these settings (built on first use).

    The overrides mean what they mean in :func:`presets.resolve`: ``None`` takes the
    config's part, ``transforms=[]`` runs with none. ``snapshots=K`` (see
    :func:`check_snapshots`) only picks a block size that divides K; where the usual one
    does, it is the very program that runs without snapshots. ``select`` computes only
    the traced unit's channel of the target conv where :func:`selects` allows it:
    ``None`` does so on :data:`SELECT_PLATFORMS`, ``False`` never. ``convs`` computes
    the 3x3 convs of the shapes it names by those formulations
    (:class:`jaxvis.conv_tune.Formed`; :func:`jaxvis.conv_tune.forms_for` chooses them).
    """
    platform = platform or jax.default_backend()
    if transforms is not None and not callable(transforms):
        transforms = tuple(transforms)  # hashable
    n_steps = presets.check_steps(config.steps if steps is None else steps)
    block = block_steps_for(n_steps, platform, check_snapshots(snapshots, n_steps))
    layer_names = tuple((la.name, la.pre) for la in model.layers)
    key = (model.apply, layer_names, layer, size, config, steps, objective, param)
    key += (transforms, optimizer, platform, block, select, convs)
    if key in _programs:
        _programs.move_to_end(key)
        return _programs[key]
    recipe = presets.resolve(
        config,
        layer,
        size,
        steps=steps,
        objective=objective,
        param=param,
        transforms=transforms,
        optimizer=optimizer,
        has_pre=model.layer(layer.removesuffix(":pre")).pre,
    )
    stop_at = model.deepest(recipe.objective.layers or (layer,))
    wanted = platform in SELECT_PLATFORMS if select is None else select
    one = wanted and selects(model, stop_at, recipe.objective)
    apply = conv_tune.Formed(model.apply, convs) if convs else model.apply
    ascent = Ascent(apply=apply, stop_at=stop_at, recipe=recipe, select=one)
    prog = Program(ascent, block)
    _programs[key] = prog
    while len(_programs) > _CACHE_SIZE:
        _programs.popitem(last=False)
    return prog


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
    snapshots: int | None = None,
    convs: str = "auto",
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
      optimizer: an :func:`jaxvis.optim.spec` or a bare ``optax.GradientTransformation``
        instead of the preset's.
      snapshots: K to also return the picture after every K steps
        (``Visualization.snapshots``), from 1 to ``steps``; ``None`` for none.
      convs: how 3x3 convs are computed. ``"auto"`` (default): on a single CPU device,
        by the formulation measured fastest on this CPU for each conv shape (measured
        once for a job of 4 filters x 64 steps at 128 px or more, and kept on disk;
        jaxvis/conv_tune.py), elsewhere XLA's conv. ``"lax"``: XLA's conv everywhere.
        ``"winograd"`` or ``"im2col"``: that formulation for every 3x3 conv.

    Returns:
      A :class:`Visualization`; failed units are listed in ``.failed``, never returned as
      images.
    """
    units = model.check_filters(layer, filters)
    size = model.check_size(size)
    batch = check_batch(batch)
    conv_tune.check_setting(convs)
    model.check_runs(layer, size)
    devices.check_fits(
        model, layer, size, devices.chunk_size(model, layer, size, len(units), batch)
    )
    settings = dict(
        steps=steps,
        objective=objective,
        param=param,
        transforms=transforms,
        optimizer=optimizer,
        snapshots=snapshots,
    )
    prog = program(model, layer, size, presets.get(preset), **settings)
    table = conv_tune.forms_for(prog, model.params, convs, size, len(units))
    if table:
        prog = program(model, layer, size, presets.get(preset), **settings, convs=table)
    parts = list(
        chunks(model, prog, layer, units, size=size, seed=seed, batch=batch, snapshots=snapshots)
    )
    every = parts[0].snapshot_every
    return Visualization(
        layer=layer,
        filters=np.concatenate([p.filters for p in parts]),
        images=np.concatenate([p.images for p in parts]),
        objective=np.concatenate([p.objective for p in parts]),
        history=np.concatenate([p.history for p in parts]),
        failed={k: v for p in parts for k, v in p.failed.items()},
        config=prog.ascent.recipe.description,
        seconds=sum(p.seconds for p in parts),
        compile_seconds=sum(p.compile_seconds for p in parts),
        snapshots=np.concatenate([p.snapshots for p in parts]) if every else None,
        snapshot_every=every,
    )


def check_batch(batch: int | None) -> int | None:
    """``None`` (choose for the device) or a positive integer, else a one-line error."""
    if batch is None:
        return None
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise JaxvisError(f"batch must be a positive integer (units per chunk); got {batch!r}")
    return int(batch)
