"""What a map explains: :class:`Target`, built on the objective algebra of jaxvis.objectives.

A target is an :class:`~jaxvis.objectives.Objective` plus the unit it is evaluated at.
Class logits, channels and neurons are objectives that read the TRACED unit
(``objectives.channel(layer, None)``), and the unit is data: ``target=[281, 285, 3]``
runs one compiled program for the three classes, as the engine runs one program for all
filters of a layer. The objective objects are cached per (kind, layer), so equal targets
give equal objectives, which is what the compile cache compares.

Layers are read as named: ``"channel:block5_conv3:17"`` is the post-ReLU channel (as the
model's Keras layer outputs it), ``"channel:block5_conv3:pre:17"`` the linear response.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Sequence

import numpy as np

from jaxvis import objectives
from jaxvis.errors import JaxvisError
from jaxvis.models.feature_model import PRE, FeatureModel

FORMS = "an int (class), 'class:N', 'channel:LAYER:N', 'neuron:LAYER:N' or an Objective"


@dataclasses.dataclass(frozen=True)
class Target:
    """One image's target.

    Attributes:
      description: e.g. ``"class:281"``, ``"channel:block5_conv3:17"``, or
        ``"objective:<its description>"``; what a maps file records.
      objective: the scalar to explain, evaluated on one image (a batch of one).
      unit: the traced unit passed to ``objective`` (0 where it reads none).
      reads: the activation it reads, ``":pre"`` included, where known (string forms).
    """

    description: str
    objective: objectives.Objective
    unit: int = 0
    reads: str | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        """Base names of the layers the objective reads."""
        return self.objective.layers


@functools.cache
def _channel(layer: str) -> objectives.Objective:
    return objectives.channel(layer, None, pre=False)


@functools.cache
def _neuron(layer: str) -> objectives.Objective:
    return objectives.neuron(layer, None, pre=False)


def _unit(text: str, whole: str) -> int:
    if not text.isdigit():
        raise JaxvisError(f"target {whole!r} must end in a non-negative unit index; {FORMS}")
    return int(text)


def _check_unit(model: FeatureModel, layer: str, unit: int, what: str) -> None:
    count = model.num_filters(layer.removesuffix(PRE))
    if not 0 <= unit < count:
        raise JaxvisError(
            f"{what} {unit} is out of range for {layer}, which has {count} (0-{count - 1})"
        )


def class_target(unit, model: FeatureModel) -> Target:
    """The pre-softmax logit ``unit``, read from ``model.logits``."""
    if model.logits is None:
        raise JaxvisError(
            f"a class target needs a model with a head; {model.name} has none "
            "(model.logits is None); use 'channel:LAYER:N' instead"
        )
    _check_unit(model, model.logits, unit, "class")
    return Target(f"class:{unit}", _channel(model.logits), unit, model.logits)


def _layer_target(kind: str, layer: str, unit: int, model: FeatureModel) -> Target:
    base = layer.removesuffix(PRE)
    info = model.layer(base)  # one-line error listing the valid layers
    if layer.endswith(PRE) and not info.pre:
        raise JaxvisError(f"{model.name} has no {layer!r}; {base} offers no pre-activation")
    _check_unit(model, layer, unit, kind)
    make = _channel if kind == "channel" else _neuron
    return Target(f"{kind}:{layer}:{unit}", make(layer), unit, layer)


def _from_string(text: str, model: FeatureModel) -> Target:
    if text.isdigit():
        return class_target(int(text), model)
    kind, _, rest = text.partition(":")
    if kind == "class":
        return class_target(_unit(rest, text), model)
    if kind in ("channel", "neuron"):
        layer, _, unit = rest.rpartition(":")
        if not layer:
            raise JaxvisError(f"target {text!r} needs a layer and a unit: '{kind}:LAYER:N'")
        return _layer_target(kind, layer, _unit(unit, text), model)
    raise JaxvisError(f"unknown target {text!r}; a target is {FORMS}")


def _from_objective(obj: objectives.Objective, model: FeatureModel) -> Target:
    if obj.uses_unit:
        raise JaxvisError(
            f"objective {obj.description!r} reads the traced unit, which a target does not "
            "give; fix it (objectives.channel(layer, 17)) or use 'channel:LAYER:17'"
        )
    if not obj.layers:
        raise JaxvisError(f"objective {obj.description!r} reads no layer of the model")
    for layer in obj.layers:
        model.layer(layer)
    return Target(f"objective:{obj.description}", obj, 0)


def parse_target(target, model: FeatureModel) -> Target:
    """A :class:`Target` from an int (class logit), ``"class:281"``,
    ``"channel:LAYER:N"``, ``"neuron:LAYER:N"`` (centre position), an
    :class:`~jaxvis.objectives.Objective` that reads no traced unit, or a Target."""
    if isinstance(target, Target):
        return target
    if isinstance(target, numbers.Integral) and not isinstance(target, (bool, np.bool_)):
        if target < 0:
            raise JaxvisError(f"class {int(target)} must be >= 0")
        return class_target(int(target), model)
    if isinstance(target, str):
        return _from_string(target.strip(), model)
    if isinstance(target, objectives.Objective):
        return _from_objective(target, model)
    raise JaxvisError(f"unknown target {target!r}; a target is {FORMS}")


def per_image(target, n: int | None, model: FeatureModel) -> list[Target]:
    """``n`` targets: ``target`` for every image, or one per image from a sequence
    (``n=None``: one, or a sequence of any length)."""
    single = (str, numbers.Integral, objectives.Objective, Target)
    if isinstance(target, single):
        return [parse_target(target, model)] * (1 if n is None else n)
    if not isinstance(target, (Sequence, np.ndarray)):
        raise JaxvisError(f"unknown target {target!r}; a target is {FORMS}, or a list of them")
    if n is not None and len(target) != n:
        raise JaxvisError(f"got {len(target)} targets for {n} images; give one, or one per image")
    return [parse_target(t, model) for t in target]
