"""A Keras model's forward pass as a pure function of ``(params, images)``.

The FeatureModel's ``apply`` (:func:`apply`) and the shape-only survey of a whole pass
(:func:`survey`) that lists its layers. Keras reads each variable from a
``keras.StatelessScope`` that maps it to its entry in ``params``, opened inside the
traced function, so the weights are arguments of the compiled program, never constants;
the graph walk is :mod:`jaxvis.models.keras_graph`. ``taps.select`` may name only
``stop_at`` (a plain Conv2D: ``keras_graph.sliceable``), whose channel the walk computes
alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxvis._types import Array, Params
from jaxvis.errors import JaxvisError, choices
from jaxvis.models import conventions
from jaxvis.models import keras_graph as kg
from jaxvis.models.feature_model import PRE
from jaxvis.models.taps import Taps


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """What ``apply`` needs to know about one Keras model (hashed by identity)."""

    name: str
    graph: object  # the Functional graph walked
    keys: tuple[str, ...]  # params keys, one per variable
    variables: tuple  # the keras.Variables, in the order of keys
    preprocess: conventions.Preprocess
    layout: str  # of the model's input
    input_dtype: str
    declared: tuple[int | None, int | None, int | None]  # input H, W, C (None: free)


def mapping(spec: Spec, params: Params) -> list:
    """``[(variable, value)]`` for the StatelessScope, or a one-line error naming the
    missing and extra keys."""
    if set(params) != set(spec.keys):
        missing = [k for k in spec.keys if k not in params]
        extra = sorted(set(params) - set(spec.keys))
        raise JaxvisError(
            f"params do not match {spec.name}: missing {choices(missing) or 'none'}; "
            f"extra {choices(extra) or 'none'}"
        )
    return [(v, params[k]) for k, v in zip(spec.keys, spec.variables, strict=True)]


def inputs(spec: Spec, images: Array) -> Array:
    """RGB [0, 1] images [N, H, W, 3] as the model's input: preprocessed, laid out, cast."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise JaxvisError(f"images must be [N, H, W, 3] RGB in [0, 1]; got {images.shape}")
    x = spec.preprocess(images.astype(jnp.float32))
    channels = spec.declared[2]
    if x.ndim != 4 or (channels is not None and x.shape[-1] != channels):
        raise JaxvisError(
            f"{spec.name} takes {channels}-channel images, but preprocessing gave shape "
            f"{x.shape}; pass a preprocess callable that maps RGB to its input"
        )
    x = jnp.transpose(x, (0, 3, 1, 2)) if spec.layout == kg.FIRST else x
    return x.astype(spec.input_dtype)


def forward(spec: Spec, walk: kg.Walk, params: Params, images: Array) -> None:
    """Runs ``walk`` over the model; raises ``kg.Stopped`` when it reaches its target."""
    import keras

    x = inputs(spec, images)
    state = mapping(spec, params)
    try:
        with keras.StatelessScope(state_mapping=state, initialize_variables=False):
            walk.run(spec.graph, [x], [spec.layout])
    except JaxvisError as err:
        size, (h, w, _) = images.shape[1:3], spec.declared
        if None not in (h, w) and tuple(size) != (h, w):
            raise JaxvisError(
                f"{spec.name} cannot run on {size[0]}x{size[1]} px images (it was built for "
                f"{h}x{w} px): {err}"
            ) from err
        raise


def apply(
    spec: Spec,
    pres: dict[str, bool],
    params: Params,
    images: Array,
    stop_at: str,
    taps: Taps | None = None,
) -> dict[str, Array]:
    """The FeatureModel's ``apply``: activations of every layer up to ``stop_at``."""
    target = stop_at.removesuffix(PRE)
    if target not in pres or (stop_at.endswith(PRE) and not pres[target]):
        valid = [n for n in pres] + [n + PRE for n, has in pres.items() if has]
        raise JaxvisError(
            f"unknown layer {stop_at!r} for {spec.name}; valid layers: {choices(valid)}"
        )
    bad = [d for d in (taps.deltas if taps else ()) if d.removesuffix(PRE) not in pres]
    if bad:
        raise JaxvisError(f"deltas for unknown layers of {spec.name}: {choices(bad)}")
    _check_select(spec, taps, target)
    walk = kg.Walk(taps, target)
    try:
        forward(spec, walk, params, images)
    except kg.Stopped:
        return walk.acts
    raise JaxvisError(f"layer {target!r} of {spec.name} was never computed")


def _check_select(spec: Spec, taps: Taps | None, target: str) -> None:
    """A one-line error unless ``taps.select`` names ``stop_at`` alone (the walk stops
    there, so the one channel never flows into a later layer) and no delta of it."""
    names = list(taps.select) if taps else []
    if any(n != target for n in names):
        raise JaxvisError(
            f"Taps.select names {choices(names)} of {spec.name}, but it can only name the "
            f"layer computed last, stop_at {target!r}"
        )
    if names and {d.removesuffix(PRE) for d in taps.deltas} & set(names):
        raise JaxvisError(f"Taps.select and Taps.deltas both name {target!r} of {spec.name}")


def survey(spec: Spec, params: Params, h: int, w: int) -> list[kg.Seen]:
    """Every named output of a whole forward pass on [1, h, w, 3] (shapes only)."""
    walk = kg.Walk()

    def whole(p, x):
        forward(spec, walk, p, x)
        return walk.acts

    jax.eval_shape(whole, params, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
    return walk.seen


def fits(spec: Spec, params: Params, h: int, w: int) -> list[kg.Seen] | None:
    """The survey at h x w, or None if the model fails there or leaves a map empty."""
    try:
        seen = survey(spec, params, h, w)
    except JaxvisError:
        return None
    for s in seen:
        if s.shape is not None and len(s.shape) == 4:
            hw = s.shape[2:] if s.layout == kg.FIRST else s.shape[1:3]
            if min(hw) < 1:
                return None
    return seen
