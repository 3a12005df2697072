"""The gradient-ascent loop for one unit, as pure functions of arrays.

Everything here is written for ONE unit and vmapped by the engine. The unit index is a
traced int32, so one compiled program serves every filter of a layer (Lucid bakes the
index into the graph; keras-vis rebuilt its graph per call, keras-vis issue #71).

The loop is split into three pure pieces so the engine can choose how to drive it:
``init_one`` (make the image parameters and optimizer state), ``step_one`` (one Adam/
RMSProp step) and ``finish_one`` (final image and objective); ``snapshot_one`` is the
picture of a state mid-run, for optimization snapshots. :func:`run_one` chains them
with ``lax.scan``; the engine instead runs blocks of unrolled steps, because on XLA:CPU
convolutions inside a while loop ran 3-4x slower (benchmarks/README.md, "while-loop
convolutions").

Sign convention: objectives are maximized; the loss is ``-objective`` and this module is
the only place where that negation happens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxvis._types import Array, Params, PRNGKey
from jaxvis.errors import JaxvisError
from jaxvis.models.taps import Taps
from jaxvis.objectives import Objective
from jaxvis.presets import Recipe

Apply = Callable[[Params, Array, str], dict]


class State(NamedTuple):
    """One unit's optimization state (a pytree; vmapped with a leading unit axis)."""

    raw: Any  # the parameterization's raw values
    opt_state: Any
    best_raw: Any  # the raw with the best objective so far (keep_best only)
    best: Array  # [] float32, best objective so far


@dataclasses.dataclass(frozen=True)
class Ascent:
    """The per-unit loop for one model, layer and recipe.

    Attributes:
      apply: the model's pure features function ``(params, images, stop_at) -> acts``.
      stop_at: the deepest layer the objective needs; nothing beyond it is computed.
      recipe: parameterization, transforms, objective, optimizer and steps.
      select: compute only the traced unit's channel of ``stop_at`` (``Taps.select``,
        jaxvis/models/taps.py) and read it with the objective narrowed to it
        (``Objective.on_unit_channel``); the engine decides (``engine.selects``).
    """

    apply: Apply
    stop_at: str
    recipe: Recipe
    select: bool = False

    @functools.cached_property
    def goal(self) -> Objective:
        """The objective as the forward pass will be read: narrowed with ``select``."""
        if not self.select:
            return self.recipe.objective
        narrowed = self.recipe.objective.on_unit_channel(self.stop_at)
        if narrowed is None:
            raise JaxvisError(
                f"select=True, but {self.recipe.objective.description} reads more of "
                f"{self.stop_at!r} than the traced unit's channel"
            )
        return narrowed

    def keys(self, key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
        """Splits a unit key into (init key, step key); step i uses fold_in(step key, i)."""
        k_init, k_steps = jax.random.split(key)
        return k_init, k_steps

    def objective(self, params: Params, raw, key: PRNGKey | None, unit: Array) -> Array:
        """The objective of the image that ``raw`` encodes, seen through the transforms."""
        image = self.recipe.param.to_image(raw)
        seen = image
        if key is not None and self.recipe.transform is not None:
            seen = self.recipe.transform(key, image)
        if self.select:
            acts = self.apply(params, seen, self.stop_at, Taps(select={self.stop_at: unit}))
        else:
            acts = self.apply(params, seen, self.stop_at)
        return self.goal(acts, image, unit)

    def init_one(self, key: PRNGKey) -> State:
        raw = self.recipe.param.init(self.keys(key)[0])
        opt_state = self.recipe.optimizer.init(raw)
        best_raw = raw if self.recipe.keep_best else None
        return State(raw, opt_state, best_raw, jnp.array(-jnp.inf, jnp.float32))

    def step_one(
        self, params: Params, state: State, key: PRNGKey, unit: Array, i: Array
    ) -> tuple[State, Array]:
        """One optimizer step at step index ``i``; steps at ``i >= steps`` change nothing.

        Returns:
          ``(new_state, objective before the update)``.
        """
        step_key = jax.random.fold_in(self.keys(key)[1], i)

        def loss(raw):
            value = self.objective(params, raw, step_key, unit)
            return -value, value  # the one negation: optimizers minimize

        (_, value), grads = jax.value_and_grad(loss, has_aux=True)(state.raw)
        updates, opt_state = self.recipe.optimizer.update(grads, state.opt_state, state.raw)
        raw = optax.apply_updates(state.raw, updates)
        best_raw, best = state.best_raw, state.best
        if self.recipe.keep_best:
            better = value > best
            best_raw = _where(better, state.raw, best_raw)
            best = jnp.where(better, value, best)
        new = State(raw, opt_state, best_raw, best)
        active = i < self.recipe.steps
        return _where(active, new, state), value.astype(jnp.float32)

    def finish_one(self, params: Params, state: State, unit: Array) -> tuple[Array, Array]:
        """Final picture and objective for one unit.

        Returns:
          ``(image float32 [B, H, W, 3] in [0, 1], objective [] without transforms)``.
        """
        raw = self._shown_raw(state)
        image = self._display(raw)
        value = self.objective(params, raw, None, unit)
        return jnp.clip(image, 0.0, 1.0), value.astype(jnp.float32)

    def snapshot_one(self, state: State) -> Array:
        """The picture ``finish_one`` would return if the run ended at ``state``.

        Returns:
          uint8 [B, H, W, 3], rounded as the engine rounds final images (jaxvis/engine.py),
          so a snapshot is 4x smaller than the float picture on the device and in transfer.
        """
        image = jnp.clip(self._display(self._shown_raw(state)), 0.0, 1.0)
        return jnp.round(image * 255.0).astype(jnp.uint8)

    def _shown_raw(self, state: State):
        """The raw values whose picture is shown: the best so far with ``keep_best``."""
        return state.best_raw if self.recipe.keep_best else state.raw

    def _display(self, raw) -> Array:
        """float32 [B, H, W, 3], not yet clipped: the param's display view, or its image."""
        display = self.recipe.param.display
        return display(raw) if display is not None else self.recipe.param.to_image(raw)

    def run_one(self, params: Params, key: PRNGKey, unit: Array) -> tuple[Array, Array, Array]:
        """The whole loop for one unit with ``lax.scan`` over steps.

        Returns:
          ``(image [B, H, W, 3], final objective [], history [steps])``.
        """
        state = self.init_one(key)

        def body(state, i):
            return self.step_one(params, state, key, unit, i)

        state, history = jax.lax.scan(body, state, jnp.arange(self.recipe.steps))
        image, value = self.finish_one(params, state, unit)
        return image, value, history


def _where(cond: Array, new, old):
    """``cond ? new : old`` over matching pytrees (None leaves stay None)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cond, a, b), new, old)
