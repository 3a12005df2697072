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
from collections.abc import Callable, Sequence

import numpy as np
import optax

from jaxvis import objectives as obj
from jaxvis import optim
from jaxvis import param as param_lib
from jaxvis import transforms as tfm
from jaxvis.errors import JaxvisError, choices
from jaxvis.objectives import Objective
from jaxvis.optim import OptimizerSpec
from jaxvis.param import Param

ObjectiveFactory = Callable[[str], Objective]
#: A transform, or a sequence of them applied in order; ``()`` for none.
Transforms = tfm.Transform | Sequence[tfm.Transform]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One run's settings. Each part describes itself from its own arguments, and those
    descriptions, resolved for the run's size and each layer, identify an atlas.

    Attributes:
      preset: the preset these settings came from (or "custom").
      steps: gradient steps per unit.
      param: ``size -> Param``.
      transforms: ``size -> Transforms``; return ``()`` for none.
      objective: ``layer -> Objective`` to maximize for the traced unit.
      optimizer: an :class:`~jaxvis.optim.OptimizerSpec`, e.g.
        ``optim.spec(optax.adam, learning_rate=0.05)``.
      keep_best: return the image with the best objective seen, not the last
        (keras-vis returns its lowest-loss input).
      prefer_pre: call ``objective`` with ``layer + ":pre"`` when the model offers the
        layer's linear response before its fused activation (``LayerInfo.pre``), and with
        the plain layer otherwise, so the objective's description, which the atlas records,
        names the activation actually maximized.
    """

    preset: str
    steps: int
    param: Callable[[int], Param]
    transforms: Callable[[int], Transforms]
    objective: ObjectiveFactory
    optimizer: OptimizerSpec
    keep_best: bool = False
    prefer_pre: bool = False

    def __post_init__(self):
        for name in ("param", "transforms", "objective"):
            if not callable(getattr(self, name)):
                raise JaxvisError(
                    f"Config.{name} must be a function (of the size, or of the layer for "
                    f"objective); got {getattr(self, name)!r}"
                )
        if not isinstance(self.optimizer, OptimizerSpec):
            raise JaxvisError(
                "Config.optimizer must be an optim.spec(...), e.g. "
                f"optim.spec(optax.adam, learning_rate=0.05); got {self.optimizer!r}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """A :class:`Config` resolved for one layer and image size.

    Attributes:
      transform: the transform the model sees the image through, or ``None`` for none
        (resolved: nothing is left to take from a preset).
      run_description: what identifies the run apart from the layer: preset, steps, size,
        param, transforms, optimizer, keep_best.
      description: ``run_description`` plus this layer's ``objective``.
    """

    steps: int
    param: Param
    transform: tfm.Transform | None
    objective: Objective
    optimizer: optax.GradientTransformation
    keep_best: bool
    run_description: dict

    @property
    def description(self) -> dict:
        return {**self.run_description, "objective": self.objective.description}


def _lucid_objective(layer: str) -> Objective:
    # Called with "<layer>:pre" where the model has it (Config.prefer_pre), which forces
    # the pre-activation; a plain name reads the layer's own output.
    return obj.channel(layer, pre=False)


PRESETS: dict[str, Config] = {
    "lucid": Config(
        preset="lucid",
        steps=512,
        param=lambda size: param_lib.fft_image(size, decorrelate=True, sigmoid=True),
        transforms=lambda size: tfm.standard_transforms(),
        objective=_lucid_objective,
        optimizer=optim.LUCID_ADAM,
        prefer_pre=True,
    ),
    "keras-vis": Config(
        preset="keras-vis",
        steps=200,
        param=lambda size: param_lib.keras_vis_image(size),
        transforms=lambda size: tfm.roll_jitter(16),
        objective=obj.keras_vis_objective,
        optimizer=optim.KERAS_VIS_RMSPROP,
        keep_best=True,
    ),
}


def get(preset: str | Config) -> Config:
    """The named preset, or a one-line error listing the valid names."""
    if isinstance(preset, Config):
        return preset
    if preset not in PRESETS:
        raise JaxvisError(f"unknown preset {preset!r}; valid presets: {choices(PRESETS)}")
    return PRESETS[preset]


def as_transform(value: Transforms) -> tfm.Transform | None:
    """One transform from a transform or a sequence of them; ``None`` for an empty one."""
    if callable(value):
        return value
    chain = tuple(value)
    return tfm.compose(*chain) if chain else None


def check_steps(steps) -> int:
    """Steps as int, or a one-line error (1.7 or "4" are refused, not truncated)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise JaxvisError(f"steps must be a positive integer; got {steps!r}")
    return int(steps)


def resolve(
    config: Config,
    layer: str,
    size: int,
    *,
    steps: int | None = None,
    objective: Objective | None = None,
    param: Param | None = None,
    transforms: Transforms | None = None,
    optimizer: OptimizerSpec | optax.GradientTransformation | None = None,
    has_pre: bool = True,
) -> Recipe:
    """Builds the recipe for ``layer`` at ``size``.

    Every override means the same thing: ``None`` takes the config's part; anything else
    replaces it. ``transforms=[]`` runs with no transforms. ``has_pre`` says whether the
    model offers ``layer + ":pre"`` (see ``Config.prefer_pre``).
    """
    steps = check_steps(config.steps if steps is None else steps)
    if objective is None:
        target = layer + obj.PRE if config.prefer_pre and has_pre else layer
        objective = config.objective(target)
    param = config.param(size) if param is None else param
    transform = as_transform(config.transforms(size) if transforms is None else transforms)
    optimizer = config.optimizer if optimizer is None else optimizer
    if isinstance(optimizer, OptimizerSpec):
        opt_description, optimizer = optimizer.description, optimizer.build()
    else:  # a bare optax transformation cannot describe itself
        opt_description = "custom optax transformation (not identifiable)"
    run_description = {
        "preset": config.preset,
        "steps": steps,
        "size": size,
        "param": param.description,
        "transforms": "none" if transform is None else tfm.describe(transform),
        "optimizer": opt_description,
        "keep_best": config.keep_best,
    }
    return Recipe(
        steps=steps,
        param=param,
        transform=transform,
        objective=objective,
        optimizer=optimizer,
        keep_best=config.keep_best,
        run_description=run_description,
    )
