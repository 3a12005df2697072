"""Run configurations: a frozen config per run, and the named presets that fill it.

A :class:`Config` holds everything that decides a filter's picture apart from the model,
the layer and the unit: parameterization, transforms, objective, optimizer, steps. The
parts that depend on the layer or the image size are factories, resolved by
:func:`resolve` into a :class:`Recipe` for one (layer, size).

Presets:

* ``lucid`` (default): Olah et al. 2017, "Feature Visualization" (Distill) and Lucid's
  ``render_vis`` defaults: FFT parameterization with decorrelated colour and sigmoid,
  Lucid's ``standard_transforms``, Adam(0.05), 512 steps, the pre-ReLU channel mean.
* ``keras-vis``: what keras-vis 0.4 ``visualize_activation`` does with
  ``input_modifiers=[Jitter(16)]``: a 0-255 pixel image seeded with grey noise,
  a circular jitter of up to 16 px each step, loss = -ActivationMaximization
  + 10 * LPNorm(p=6) + 10 * TotalVariation(beta=2) on the 0-255 input, the
  RMS-gradient-normalised RMSProp of ``vis/optimizer.py``, 200 steps, and the lowest-loss
  image returned. Deviations (documented in README): keras-vis's jitter is cumulative
  (the seed image itself is rolled each step); here the shift is applied to the
  model's view only, which keeps the optimizer state aligned with the pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optax

from jaxvis import objectives as obj
from jaxvis import optim, param, transforms
from jaxvis.errors import JaxvisError, choices
from jaxvis.objectives import Objective
from jaxvis.param import Param

ObjectiveFactory = Callable[[str], Objective]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One run's settings; every field is serialized into the atlas.

    Attributes:
      preset: the preset these settings came from (or "custom").
      steps: gradient steps per unit.
      param: ``size -> Param``.
      transforms: ``size -> Transform``; ``None`` means no transforms.
      objective: ``layer -> Objective`` to maximize for the traced unit.
      optimizer: ``() -> optax.GradientTransformation``.
      keep_best: return the image with the best objective seen, not the last
        (keras-vis returns its lowest-loss input).
    """

    preset: str
    steps: int
    param: Callable[[int], Param]
    transforms: Callable[[int], transforms.Transform] | None
    objective: ObjectiveFactory
    optimizer: Callable[[], optax.GradientTransformation]
    keep_best: bool = False
    describe_optimizer: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """A :class:`Config` resolved for one layer and image size."""

    steps: int
    param: Param
    transform: transforms.Transform | None
    objective: Objective
    optimizer: optax.GradientTransformation
    keep_best: bool
    description: dict


def _lucid_objective(layer: str) -> Objective:
    return obj.channel(layer, pre=True)


PRESETS: dict[str, Config] = {
    "lucid": Config(
        preset="lucid",
        steps=512,
        param=lambda size: param.fft_image(size, decorrelate=True, sigmoid=True),
        transforms=lambda size: transforms.standard_transforms(),
        objective=_lucid_objective,
        optimizer=optim.default_optimizer,
        describe_optimizer="adam(learning_rate=0.05)",
    ),
    "keras-vis": Config(
        preset="keras-vis",
        steps=200,
        param=lambda size: param.keras_vis_image(size),
        transforms=lambda size: transforms.roll_jitter(16),
        objective=obj.keras_vis_objective,
        optimizer=optim.keras_vis_rmsprop,
        keep_best=True,
        describe_optimizer="keras_vis_rmsprop(learning_rate=1.0, decay=0.95, eps=1e-7, rms)",
    ),
}


def get(preset: str | Config) -> Config:
    """The named preset, or a one-line error listing the valid names."""
    if isinstance(preset, Config):
        return preset
    if preset not in PRESETS:
        raise JaxvisError(f"unknown preset {preset!r}; valid presets: {choices(PRESETS)}")
    return PRESETS[preset]


def resolve(
    config: Config,
    layer: str,
    size: int,
    *,
    steps: int | None = None,
    objective: Objective | None = None,
    param_: Param | None = None,
    transform: transforms.Transform | None | str = "preset",
    optimizer: optax.GradientTransformation | None = None,
) -> Recipe:
    """Builds the recipe for ``layer`` at ``size``, applying per-call overrides."""
    steps = config.steps if steps is None else int(steps)
    if steps < 1:
        raise JaxvisError(f"steps must be a positive integer; got {steps}")
    objective = objective if objective is not None else config.objective(layer)
    param_ = param_ if param_ is not None else config.param(size)
    if isinstance(transform, str):
        transform = config.transforms(size) if config.transforms else None
    custom_opt = optimizer is not None
    optimizer = optimizer if custom_opt else config.optimizer()
    description = {
        "preset": config.preset,
        "steps": steps,
        "size": size,
        "objective": objective.description,
        "param": param_.description,
        "transforms": transforms.describe(transform) if transform is not None else "none",
        "optimizer": "custom optax transformation" if custom_opt else config.describe_optimizer,
        "keep_best": config.keep_best,
    }
    return Recipe(
        steps=steps,
        param=param_,
        transform=transform,
        objective=objective,
        optimizer=optimizer,
        keep_best=config.keep_best,
        description=description,
    )
