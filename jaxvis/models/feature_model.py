"""The protocol the engine needs from any model: :class:`FeatureModel` and its layers.

A model is a pure ``apply(params, images, stop_at) -> {name: activation}`` that computes
nothing beyond ``stop_at``, its ``params``, and an ordered ``layers`` list. Everything the
engine needs to know about shapes and costs comes from JAX itself (``jax.eval_shape`` of
``apply``, and XLA's cost analysis of the lowered program), never from assumptions about
the architecture, so a ResNet or a strided conv gets the same treatment as VGG16.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis._types import Array, Params
from jaxvis.errors import JaxvisError, choices
from jaxvis.models.taps import SELECT
from jaxvis.models.weights_info import WeightsInfo

LayerKind = Literal["conv", "pool", "dense", "flatten", "other"]
LAYER_KINDS: tuple[str, ...] = get_args(LayerKind)
PRE = ":pre"  # Suffix of a layer's pre-activation (linear) output.


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One named layer that ``stop_at`` accepts.

    Attributes:
      name: the name in the activation dict.
      kind: one of :data:`LAYER_KINDS`.
      num_filters: channels (conv, pool) or units (dense) of its output.
      pre: whether the model also offers the layer's linear response, before its fused
        activation, as ``name + ":pre"`` (the ``lucid`` preset maximizes it when it exists).
    """

    name: str
    kind: LayerKind
    num_filters: int
    pre: bool = False

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise JaxvisError(
                f"layer {self.name!r} has kind {self.kind!r}; valid kinds: {choices(LAYER_KINDS)}"
            )
        if not isinstance(self.num_filters, numbers.Integral) or self.num_filters < 1:
            raise JaxvisError(
                f"layer {self.name!r} needs a positive integer num_filters; "
                f"got {self.num_filters!r}"
            )

    @property
    def filters(self) -> int:
        """Alias of :attr:`num_filters`, the name jaxvis 0.1 used."""
        return self.num_filters


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureModel:
    """A model the engine can visualize.

    Attributes:
      name: short model name, recorded in atlases.
      apply: pure ``(params, images [N,H,W,3] RGB in [0,1], stop_at) -> {name: [N,h,w,C]}``.
        It must compute nothing beyond ``stop_at``. Conv layers should also expose the
        pre-ReLU response as ``name + ":pre"`` if they want it to be the default target.
        The engine's compile cache is keyed on ``apply`` (not on the params), so two
        models whose ``apply`` compares equal share compiled programs.
      params: the weights pytree, passed to ``apply`` as an argument (never closed over).
      layers: ordered layers that ``stop_at`` accepts, with their filter counts.
      info: provenance of the weights.
      min_size: smallest accepted image side in pixels.
      unavailable: ``{layer: reason}`` for layers this instance cannot compute (a head
        asked of headless weights), so the error can say why.
      dtype: compute dtype name, recorded in atlases (bf16 and fp32 pictures differ).
      logits: the activation holding the class logits (``"predictions"`` for VGG16 with
        its head, ``"<last layer>:pre"`` for a Keras classifier whose softmax is fused),
        or ``None`` when the model has no head; class targets read it.
      taps: which :class:`~jaxvis.models.taps.Taps` ``apply`` honours as its optional
        fourth argument (``"deltas"``, ``"guided_relu"``, ``"select"``); attribution
        refuses the rest, and the engine slices a conv only with ``"select"``.
      unsliceable: conv layers that ``Taps.select`` cannot name although the model lists
        ``"select"`` (a depthwise or grouped conv next to plain ones): the engine
        computes them whole (:meth:`can_select`).
    """

    name: str
    apply: Callable[[Params, Array, str], dict[str, Array]]
    params: Params
    layers: Sequence[LayerInfo]
    info: WeightsInfo | None = None
    min_size: int = 1
    unavailable: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    logits: str | None = None
    taps: frozenset[str] = frozenset()
    unsliceable: frozenset[str] = frozenset()

    def layer(self, name: str) -> LayerInfo:
        """The named layer, or a one-line error listing the valid ones."""
        for la in self.layers:
            if la.name == name:
                return la
        if name in self.unavailable:
            raise JaxvisError(f"layer {name!r} {self.unavailable[name]}")
        raise JaxvisError(
            f"unknown layer {name!r} for {self.name}; valid layers: "
            f"{choices(la.name for la in self.layers)}"
        )

    def can_select(self, layer: str) -> bool:
        """Whether ``apply`` can compute only one output channel of conv ``layer``
        (``Taps.select``)."""
        return (
            SELECT in self.taps
            and self.layer(layer).kind == "conv"
            and layer not in self.unsliceable
        )

    def num_filters(self, layer: str) -> int:
        """Number of filters (channels or units) of ``layer``."""
        return self.layer(layer).num_filters

    def features(self, images: Array, stop_at: str) -> dict[str, Array]:
        """Activations up to ``stop_at`` for float32 [N, H, W, 3] RGB images in [0, 1]."""
        self.layer(stop_at.removesuffix(PRE))
        return self.apply(self.params, jnp.asarray(images, jnp.float32), stop_at)

    @property
    def conv_layers(self) -> list[str]:
        return [la.name for la in self.layers if la.kind == "conv"]

    def deepest(self, layers: Iterable[str]) -> str:
        """The layer, among ``layers`` (``:pre`` allowed), that comes last in the model:
        the truncation point of an objective that reads them all."""
        order = {la.name: i for i, la in enumerate(self.layers)}
        names = [la.removesuffix(PRE) for la in layers]
        for name in names:
            self.layer(name)  # one-line error listing valid layers
        return max(names, key=order.__getitem__)

    # --- checks at the boundary: each raises a one-line JaxvisError ----------------------

    def check_filters(self, layer: str, filters: Iterable[int]) -> np.ndarray:
        """Filters as int64 [N], or a one-line error giving the layer's filter count."""
        count = self.num_filters(layer)
        units = [f for f in filters] if not isinstance(filters, (str, bytes)) else [filters]
        if not all(_is_int(f) for f in units):
            raise JaxvisError(f"filters must be integers in [0, {count}) for {layer}")
        units = np.array([int(f) for f in units], dtype=np.int64)
        if units.size == 0:
            raise JaxvisError(f"no filters given for {layer}; it has {count} (0-{count - 1})")
        bad = units[(units < 0) | (units >= count)]
        if bad.size:
            raise JaxvisError(
                f"filter {int(bad[0])} is out of range for {layer}, which has {count} "
                f"filters (0-{count - 1})"
            )
        return units

    def output_kind(self, layer: str, size: int) -> str:
        """``"map"`` for an [N, h, w, C] output at this image size, ``"vector"`` for [N, C]."""
        shape = self.shapes(layer, size)[layer].shape
        return "map" if len(shape) == 4 else "vector"

    def check_size(self, size: int) -> int:
        """The image side as int, or a one-line error giving the smallest valid size."""
        if not _is_int(size) or size < self.min_size:
            raise JaxvisError(f"size must be an integer >= {self.min_size} px; got {size!r}")
        return int(size)

    def check_runs(self, layer: str, size: int) -> None:
        """Traces the model at this size (no compute), so that shape errors, like a head
        layer at a size other than 224, surface before any file is written."""
        self.shapes(layer, size)

    # --- shapes and costs, from JAX --------------------------------------------------------

    def shapes(self, stop_at: str, size: int, batch: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
        """Every activation up to ``stop_at`` for ``batch`` images of ``size`` px, by
        ``jax.eval_shape`` of ``apply``: no compute, and no assumption about the layers."""
        image = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
        return jax.eval_shape(lambda p, x: self.apply(p, x, stop_at), self.params, image)


def _is_int(value) -> bool:
    """True for Python and numpy integers (bool excluded), False for 1.7, "3" or None."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
