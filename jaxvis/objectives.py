"""Objectives: scalar functions of one unit's activations, to be MAXIMIZED.

An :class:`Objective` wraps ``fn(acts, images, unit) -> scalar``:

* ``acts``: ``{name: activation}`` for ONE unit's image batch, each [B, h, w, C] (or
  [B, C] for dense layers). ``"name:pre"`` holds a layer's pre-ReLU response where the
  model exposes one.
* ``images``: that unit's model-space images [B, H, W, 3], float32 RGB nominally in
  [0, 1], taken after the parameterization and BEFORE the transforms, so that
  regularizers see the image that is being optimized.
* ``unit``: int32 scalar, a traced value. It is data, so one compiled step serves every
  filter of a layer instead of one compile per filter; it is only ever used to index.

One sign convention: every objective returns a value to maximize, and regularizers return
positive penalties that the user subtracts, e.g.
``channel("block3_conv2") - 10 * total_variation()``. The ascent negates the total in
exactly one place.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis._types import Array
from jaxvis.errors import JaxvisError, choices

#: Suffix of a layer's pre-activation output (the FeatureModel protocol, models/model.py).
PRE = ":pre"
# tf.nn.l2_normalize's epsilon as Lucid's diversity passes it (Lucid optvis/objectives.py).
_GRAM_EPS = 1e-10
# Magnitude floor in Lucid's _dot_cossim (Lucid optvis/objectives.py).
_COSSIM_EPS = 1e-4

ObjectiveFn = Callable[[dict[str, Array], Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A scalar to maximize, with what the engine needs to know about it.

    Objectives compose with ``+`` and ``-`` (with another objective), ``*`` and ``/``
    (by a Python scalar, ``*`` on either side) and unary ``-``; ``sum()`` works too.

    Attributes:
      fn: ``(acts, images [B, H, W, 3], unit int32 []) -> float32 []``.
      layers: base layer names it reads (no ``":pre"``), so that the engine can stop the
        model at the deepest one.
      description: human-readable formula, written into atlases.
      uses_unit: whether it reads the traced ``unit`` (else every unit gets the same
        objective, e.g. a fixed channel or a direction).
      narrow: ``narrow(layer)`` is the same objective's ``fn`` for activations in which
        ``layer`` (and ``layer:pre``) hold only the traced unit's channel, ``[..., 1]``,
        or None where it reads more of that layer; None for an objective that cannot
        narrow at all. See :meth:`on_unit_channel`.
    """

    fn: ObjectiveFn
    layers: tuple[str, ...] = ()
    description: str = ""
    uses_unit: bool = False
    narrow: Callable[[str], ObjectiveFn | None] | None = None

    def __call__(self, acts: dict[str, Array], images: Array, unit: Array) -> Array:
        return self.fn(acts, images, unit)

    def on_unit_channel(self, layer: str) -> Objective | None:
        """This objective for a forward pass that computes only the traced unit's channel
        of ``layer`` (``Taps.select``, jaxvis/models/taps.py), or None if it reads more
        of ``layer`` than that channel. An objective that does not read ``layer`` is
        returned as it is."""
        if layer not in self.layers:
            return self
        fn = _narrowed(self, layer)
        return None if fn is None else dataclasses.replace(self, fn=fn, narrow=None)

    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        rhs = _paren(other.description) if other.description.startswith("-") else other.description
        return _join(self, other, lambda a, b: a + b, f"{self.description} + {rhs}")

    def __radd__(self, other) -> Objective:
        if isinstance(other, numbers.Number) and other == 0:  # sum([...]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        desc = f"{self.description} - {_wrap(other.description)}"
        return _join(self, other, lambda a, b: a - b, desc)

    def __neg__(self) -> Objective:
        return _scaled(self, lambda v: -v, f"-{_wrap(self.description)}")

    def __mul__(self, k) -> Objective:
        if not _is_scalar(k):
            return NotImplemented
        k = float(k)
        return _scaled(self, lambda v: k * v, f"{k:g}*{_wrap(self.description)}")

    __rmul__ = __mul__

    def __truediv__(self, k) -> Objective:
        if not _is_scalar(k):
            return NotImplemented
        if k == 0:
            raise JaxvisError("cannot divide an objective by zero")
        k = float(k)
        return _scaled(self, lambda v: v / k, f"{_wrap(self.description)}/{k:g}")


def _is_scalar(k) -> bool:
    return isinstance(k, numbers.Real) and not isinstance(k, bool)


def _narrowed(obj: Objective, layer: str) -> ObjectiveFn | None:
    """``obj.fn`` for activations holding only the traced unit's channel of ``layer``."""
    if layer not in obj.layers:
        return obj.fn
    return None if obj.narrow is None else obj.narrow(layer)


def _scaled(obj: Objective, op, description: str) -> Objective:
    """``op(obj)`` for a unary ``op`` on values (negation, a scalar factor)."""

    def lift(fn):
        return None if fn is None else (lambda *a: op(fn(*a)))

    return dataclasses.replace(
        obj,
        fn=lift(obj.fn),
        description=description,
        narrow=lambda layer: lift(_narrowed(obj, layer)),
    )


def _join(a: Objective, b: Objective, op, description: str) -> Objective:
    def combine(fa, fb):
        if fa is None or fb is None:
            return None
        return lambda *args: op(fa(*args), fb(*args))

    layers = a.layers + tuple(la for la in b.layers if la not in a.layers)
    return Objective(
        fn=combine(a.fn, b.fn),
        layers=layers,
        description=description,
        uses_unit=a.uses_unit or b.uses_unit,
        narrow=lambda layer: combine(_narrowed(a, layer), _narrowed(b, layer)),
    )


def _has_top_level_sum(desc: str) -> bool:
    depth = 0
    for i, ch in enumerate(desc):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and desc[i : i + 3] in (" + ", " - "):
            return True
    return False


def _paren(desc: str) -> str:
    return f"({desc})"


def _wrap(desc: str) -> str:
    """Parenthesizes ``desc`` where a binding operator would otherwise misread it."""
    return _paren(desc) if _has_top_level_sum(desc) or desc.startswith("-") else desc


def _kwargs_str(**kwargs) -> str:
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kwargs.items()
    )


# --- reading activations -------------------------------------------------------------


def _parse_layer(layer: str, pre: bool) -> tuple[str, bool]:
    if not isinstance(layer, str) or not layer or layer == PRE:
        raise JaxvisError(
            f"layer must be a non-empty layer name like 'block3_conv2'; got {layer!r}"
        )
    if layer.endswith(PRE):
        return layer[: -len(PRE)], True
    return layer, bool(pre)


def _shown(layer: str, pre: bool) -> str:
    return layer + PRE if pre else layer


def _read(acts: dict[str, Array], layer: str, pre: bool) -> Array:
    """The pre-ReLU output if asked for and present (a trace-time choice), else the layer."""
    if pre and layer + PRE in acts:
        return acts[layer + PRE]
    if layer in acts:
        return acts[layer]
    raise JaxvisError(
        f"the objective reads layer {layer!r}, but the activations hold only: "
        f"{choices(sorted(acts))}; pass a layer up to which the model was run"
    )


def _check_unit_arg(unit) -> None:
    if unit is not None and (not isinstance(unit, numbers.Integral) or isinstance(unit, bool)):
        raise JaxvisError(f"unit must be None (the traced unit) or an int; got {unit!r}")
    if unit is not None and unit < 0:
        raise JaxvisError(f"unit must be >= 0; got {unit}")


def _unit_index(fixed: int | None, traced: Array, width: int, layer: str) -> Array | int:
    """The traced unit, or the fixed one after a trace-time range check."""
    if fixed is None:
        return traced
    if fixed >= width:
        raise JaxvisError(f"unit {fixed} is out of range for {layer!r}, which has {width} units")
    return fixed


def _narrowed_index(a: Array, layer: str) -> int:
    """0, the one channel a narrowed read sees, after a trace-time check that the model
    did compute that channel alone (a model that ignored ``Taps.select`` would otherwise
    be read at channel 0 for every unit)."""
    if a.shape[-1] != 1:
        raise JaxvisError(
            f"the model was asked for one channel of {layer!r} (Taps.select) but returned "
            f"{a.shape[-1]}; a model that lists 'select' in FeatureModel.taps must honour it"
        )
    return 0


def _unit_str(unit: int | None) -> str:
    return "" if unit is None else f", {unit}"


def _mean32(x: Array) -> Array:
    return jnp.mean(x, dtype=jnp.float32)


# --- activation objectives -----------------------------------------------------------


def channel(layer: str, unit: int | None = None, *, pre: bool = True) -> Objective:
    """Mean of one channel over the batch and all positions.

    Lucid's ``objectives.channel`` (a mean over ``T(layer)[..., n]``). With ``pre=False``
    this is keras-vis's ``ActivationMaximization`` loss with the sign flipped: the mean
    over batch and positions of the layer's (post-ReLU) Keras output for the filter
    (keras-vis vis/losses.py).

    Args:
      layer: base layer name; a trailing ``":pre"`` forces ``pre=True``.
      unit: ``None`` to use the traced unit given at call time, or a fixed channel.
      pre: read ``layer + ":pre"`` when the activations hold it (decided at trace time
        from the dict keys), else ``layer``.

    Returns:
      An Objective whose value is a float32 scalar.
    """
    base, pre = _parse_layer(layer, pre)
    _check_unit_arg(unit)

    def read(acts, traced_unit, narrowed):
        a = _read(acts, base, pre)
        return _mean32(jnp.take(a, _channel(a, base, unit, traced_unit, narrowed), axis=-1))

    return _unit_read(read, base, unit, f"channel({_shown(base, pre)}{_unit_str(unit)})")


def _channel(a: Array, base: str, unit: int | None, traced: Array, narrowed: bool):
    """The channel of ``a`` to read: 0 when narrowed (``a`` holds the unit's channel
    alone), else the traced or fixed unit."""
    if narrowed:
        return _narrowed_index(a, base)
    return _unit_index(unit, traced, a.shape[-1], base)


def _unit_read(read, base: str, unit: int | None, description: str) -> Objective:
    """The Objective of ``read(acts, traced_unit, narrowed)``, a read of one channel of
    ``base``. Its ``narrow`` is the narrowed read for ``base`` when the channel is the
    traced unit's; a fixed unit cannot narrow (it needs its own channel)."""

    def narrow(layer):
        if unit is not None or layer != base:
            return None
        return lambda acts, images, u: read(acts, u, True)

    return Objective(
        lambda acts, images, u: read(acts, u, False), (base,), description, unit is None, narrow
    )


def neuron(
    layer: str,
    unit: int | None = None,
    *,
    x: int | None = None,
    y: int | None = None,
    pre: bool = True,
) -> Objective:
    """One channel at one spatial position (batch mean), by default the centre.

    The centre is ``(y, x) = (h // 2, w // 2)``: for even sizes, the bottom-right of the
    central 2x2, as in Lucid's ``objectives.neuron``. Here ``y`` is the row and ``x`` the
    column; Lucid's ``x`` indexes axis 1 (rows), which only matters off-centre.

    Args:
      layer: a spatial layer [B, h, w, C]; a trailing ``":pre"`` forces ``pre=True``.
      unit: ``None`` for the traced unit, or a fixed channel.
      x: column, default ``w // 2``.
      y: row, default ``h // 2``.
      pre: as in :func:`channel`.
    """
    base, pre = _parse_layer(layer, pre)
    _check_unit_arg(unit)

    def read(acts, traced_unit, narrowed):
        a = _read(acts, base, pre)
        if a.ndim != 4:
            raise JaxvisError(f"neuron needs a [B, h, w, C] layer; {base!r} has shape {a.shape}")
        h, w = a.shape[1:3]
        row, col = h // 2 if y is None else y, w // 2 if x is None else x
        if not (0 <= row < h and 0 <= col < w):
            raise JaxvisError(f"neuron position (y={row}, x={col}) is outside {base!r} ({h}x{w})")
        idx = _channel(a, base, unit, traced_unit, narrowed)
        return _mean32(jnp.take(a[:, row, col, :], idx, axis=-1))

    pos = {k: v for k, v in (("x", x), ("y", y)) if v is not None}
    where = f", {_kwargs_str(**pos)}" if pos else ""
    return _unit_read(read, base, unit, f"neuron({_shown(base, pre)}{_unit_str(unit)}{where})")


def class_logit(unit: int | None = None) -> Objective:
    """The pre-softmax logit of one class (batch mean), read from ``"predictions"``.

    Lucid's ``objectives.class_logit`` sums over the batch; this takes the mean, like
    every objective here, so that weights do not depend on the batch size.
    """
    _check_unit_arg(unit)
    obj = channel("predictions", unit, pre=False)
    return dataclasses.replace(obj, description=f"class_logit({'' if unit is None else unit})")


def direction(
    layer: str, vector: Sequence[float] | Array, *, pre: bool = True, cossim_pow: float = 0.0
) -> Objective:
    """Mean over batch and positions of ``dot(activation, vector)``.

    This is Lucid's ``objectives.direction`` with its default ``cossim_pow=0``: a plain dot
    product, not normalized, so the image is pushed along ``vector`` without limit. With
    ``cossim_pow > 0`` each dot product is weighted by ``max(0.1, cos)**cossim_pow`` with
    ``cos = dot / (1e-4 + |act|) / (1e-4 + |vector|)``, as in Lucid's ``_dot_cossim``,
    which favours activations pointing along ``vector`` over merely large ones.

    Args:
      layer: base layer name; a trailing ``":pre"`` forces ``pre=True``.
      vector: [C], one weight per channel.
      pre: as in :func:`channel`.
      cossim_pow: exponent of the cosine weighting (0 disables it).
    """
    base, pre = _parse_layer(layer, pre)
    v = np.asarray(vector, np.float32)
    if v.ndim != 1 or v.size == 0:
        raise JaxvisError(f"direction vector must be 1-D [C]; got shape {v.shape}")

    def fn(acts, images, unit):
        a = _read(acts, base, pre).astype(jnp.float32)
        if a.shape[-1] != v.size:
            raise JaxvisError(
                f"direction vector has {v.size} entries but {base!r} has {a.shape[-1]} channels"
            )
        dot = a @ v
        if cossim_pow == 0:
            return jnp.mean(dot)
        cos = dot / (_COSSIM_EPS + jnp.linalg.norm(a, axis=-1)) / (_COSSIM_EPS + np.linalg.norm(v))
        return jnp.mean(dot * jnp.maximum(0.1, cos) ** cossim_pow)

    extra = f", cossim_pow={cossim_pow:g}" if cossim_pow else ""
    desc = f"direction({_shown(base, pre)}, [{v.size}]{extra})"
    return Objective(fn, (base,), desc, False)


def diversity(layer: str, *, pre: bool = False) -> Objective:
    """Lucid's Gram-matrix diversity across the B images of one unit, to maximize.

    Each image's Gram matrix ``G = F^T F`` (F: [h*w, C]) is L2-normalized as a whole; the
    value is minus the mean cosine similarity ``<G_i, G_j>`` over ordered pairs i != j,
    so it lies in [-1, 0] for post-ReLU layers and rises as the images differ in style.
    Lucid's ``objectives.diversity`` returns the sum over pairs divided by B, i.e.
    ``(B - 1)`` times this mean with the opposite sign (Lucid subtracts it as a penalty).
    With B = 1 there is no pair and the value is 0.

    Args:
      layer: base layer name. Lucid uses post-ReLU activations, hence ``pre=False``.
      pre: read ``layer + ":pre"`` if present.
    """
    base, pre = _parse_layer(layer, pre)

    def fn(acts, images, unit):
        a = _read(acts, base, pre).astype(jnp.float32)
        b = a.shape[0]
        if b < 2:
            return jnp.zeros((), jnp.float32)
        f = a.reshape(b, -1, a.shape[-1])
        grams = jnp.einsum("bpc,bpd->bcd", f, f).reshape(b, -1)
        sq = jnp.sum(grams * grams, axis=1, keepdims=True)
        grams = grams * jax.lax.rsqrt(jnp.maximum(sq, _GRAM_EPS))
        sims = grams @ grams.T
        return -(jnp.sum(sims) - jnp.trace(sims)) / (b * (b - 1))

    return Objective(fn, (base,), f"diversity({_shown(base, pre)})", False)


# --- image regularizers (positive penalties) -----------------------------------------


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, numbers.Real) and value > 0):
        raise JaxvisError(f"{name} must be a positive number; got {value!r}")


def _penalty_desc(name: str, **nondefault) -> str:
    return f"{name}({_kwargs_str(**{k: v for k, v in nondefault.items() if v is not None})})"


def _pow(t: Array, e: float) -> Array:
    """``t**e`` for t >= 0 with a zero (not NaN) gradient at t = 0 when e < 1."""
    if e == 1.0:
        return t
    positive = t > 0
    return jnp.where(positive, jnp.where(positive, t, 1.0) ** e, 0.0)


def total_variation(*, beta: float = 2.0, scale: float = 1.0) -> Objective:
    """keras-vis's ``TotalVariation`` penalty of the images (to subtract).

    Per image x = scale * image (keras-vis vis/regularizers.py)::

        sum over (i, j, c) in [:-1, :-1] of
            ((x[i+1, j, c] - x[i, j, c])**2 + (x[i, j+1, c] - x[i, j, c])**2) ** (beta / 2)
        / (H * W * 3)

    then the mean over the B images (keras-vis sums over its batch of one). keras-vis
    computes it on 0-255 input: ``scale=255`` reproduces its numbers. Lucid's
    ``total_variation`` is TensorFlow's L1 variant instead (``beta=1`` comes closest).

    Args:
      beta: exponent; keras-vis recommends 1.5-2.0. Smaller gives sharper, spikier images.
      scale: multiplies the [0, 1] image first.
    """
    _check_positive("beta", beta)
    _check_positive("scale", scale)

    def fn(acts, images, unit):
        x = images.astype(jnp.float32) * scale
        dy = x[:, 1:, :-1] - x[:, :-1, :-1]
        dx = x[:, :-1, 1:] - x[:, :-1, :-1]
        tv = jnp.sum(_pow(dy * dy + dx * dx, beta / 2.0), axis=(1, 2, 3))
        return jnp.mean(tv) / np.prod(x.shape[1:])

    desc = _penalty_desc(
        "total_variation", beta=None if beta == 2.0 else beta, scale=None if scale == 1 else scale
    )
    return Objective(fn, (), desc, False)


def lp_norm(*, p: float = 6.0, scale: float = 1.0) -> Objective:
    """keras-vis's ``LPNorm`` penalty of the images (to subtract).

    Per image x = scale * image (keras-vis vis/regularizers.py)::

        (sum over (i, j, c) of |x|**p) ** (1 / p) / (H * W * 3)

    then the mean over the B images; ``p=inf`` gives ``max |x|`` (keras-vis takes
    ``max x``, the same for its non-negative 0-255 input). ``scale=255`` reproduces
    keras-vis's numbers. The sum is computed relative to ``max |x|``, which gives the same
    value and gradient (the norm is 1-homogeneous) without float32 overflow for large p.

    Args:
      p: the norm's order, >= 1 (keras-vis raises for p < 1).
      scale: multiplies the [0, 1] image first.
    """
    if not (isinstance(p, numbers.Real) and p >= 1):
        raise JaxvisError(f"p must be >= 1 (or inf); got {p!r}")
    _check_positive("scale", scale)

    def fn(acts, images, unit):
        x = jnp.abs(images.astype(jnp.float32) * scale).reshape(images.shape[0], -1)
        m = jnp.max(x, axis=1)
        if np.isinf(p):
            norm = m
        else:
            m = jax.lax.stop_gradient(jnp.maximum(m, 1e-30))[:, None]
            norm = m[:, 0] * jnp.sum((x / m) ** p, axis=1) ** (1.0 / p)
        return jnp.mean(norm) / x.shape[1]

    desc = _penalty_desc("lp_norm", p=None if p == 6.0 else p, scale=None if scale == 1 else scale)
    return Objective(fn, (), desc, False)


def _box3(x: Array) -> Array:
    """3x3 box sum with zero padding, [B, H, W, C] -> [B, H, W, C]."""
    h, w = x.shape[1:3]
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3))


def blur(images: Array) -> Array:
    """Lucid's ``_tf_blur``: 3x3 kernel, 1 at the centre and 0.5 around, renormalized.

    The kernel is applied per channel with zero padding and divided by the same
    convolution of ones, so borders average only real pixels (Lucid
    optvis/objectives.py). Since the kernel is ``0.5 * ones + 0.5 * centre``, this is
    ``(0.5 * box3(x) + 0.5 * x) / (0.5 * box3(1) + 0.5)``.

    Args:
      images: [B, H, W, C].
    """
    ones = jnp.ones((1,) + images.shape[1:3] + (1,), images.dtype)
    return (0.5 * _box3(images) + 0.5 * images) / (0.5 * _box3(ones) + 0.5)


def blur_penalty(*, scale: float = 1.0) -> Objective:
    """Lucid's ``blur_input_each_step`` as a penalty (to subtract).

    ``0.5 * sum((x - stop_gradient(blur(x)))**2)`` per image, mean over the batch. Its
    gradient is ``x - blur(x)``, so ascending ``objective - k * blur_penalty()`` moves the
    image a step of size ``k * lr`` towards its blurred copy, the blurring step of early
    feature-visualization work (Nguyen et al. 2015) expressed as a loss.

    Args:
      scale: multiplies the [0, 1] image first.
    """
    _check_positive("scale", scale)

    def fn(acts, images, unit):
        x = images.astype(jnp.float32) * scale
        d = x - jax.lax.stop_gradient(blur(x))
        return 0.5 * jnp.mean(jnp.sum(d * d, axis=(1, 2, 3)))

    return Objective(fn, (), _penalty_desc("blur_penalty", scale=None if scale == 1 else scale))


# keras-vis vis/visualization/activation_maximization.py, visualize_activation defaults.
KERAS_VIS_LP_NORM_WEIGHT = 10.0
KERAS_VIS_TV_WEIGHT = 10.0


def keras_vis_objective(layer: str, unit: int | None = None) -> Objective:
    """keras-vis's ``visualize_activation`` loss, negated to be maximized.

    ``ActivationMaximization`` (weight 1, post-ReLU), ``LPNorm(p=6)`` (weight 10) and
    ``TotalVariation(beta=2)`` (weight 10), both regularizers on 0-255 pixels (keras-vis
    vis/visualization/activation_maximization.py). Pair it with
    :func:`jaxvis.param.keras_vis_image` and :func:`jaxvis.optim.keras_vis_rmsprop`.
    """
    return (
        channel(layer, unit, pre=False)
        - KERAS_VIS_LP_NORM_WEIGHT * lp_norm(p=6.0, scale=255.0)
        - KERAS_VIS_TV_WEIGHT * total_variation(beta=2.0, scale=255.0)
    )
