"""Random image transforms, applied between the parameterization and the model.

A transform is a pure ``(key, images [B, H, W, C]) -> images``. Shapes are static: the
output shape depends only on the input shape and the transform's Python config, never on
the key, so one compiled step serves every draw instead of recompiling per shape. Random
choices come from ``jax.random`` with the given key, one draw per call shared by the B
images (as Lucid's transforms do for a batch); the engine gives each unit its own key.

Every constructor returns a :class:`NamedTransform`, which carries a readable
description for the atlas config (see :func:`describe`).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxvis._types import Array, PRNGKey
from jaxvis.errors import JaxvisError, choices

Transform = Callable[[PRNGKey, Array], Array]

PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")
# Fill modes of the bilinear resampler, named as in jax.scipy.ndimage.map_coordinates.
RESAMPLE_MODES = ("constant", "nearest", "wrap")
# Lucid optvis/transform.py standard_transforms.
LUCID_PAD = 12
LUCID_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
LUCID_ANGLES = tuple(range(-10, 11)) + 5 * (0,)


@dataclasses.dataclass(frozen=True)
class NamedTransform:
    """A transform with a human-readable description.

    Attributes:
      fn: ``(key, images [B, H, W, C]) -> images``.
      description: e.g. ``"jitter(8, edge)"``; written into atlases.
    """

    fn: Transform
    description: str

    def __call__(self, key: PRNGKey, images: Array) -> Array:
        return self.fn(key, images)


def describe(transform: Transform) -> str:
    """The transform's description, or its function name for a plain callable."""
    desc = getattr(transform, "description", None)
    return desc if isinstance(desc, str) else getattr(transform, "__name__", repr(transform))


def _check_images(images: Array, name: str) -> None:
    if images.ndim != 4:
        raise JaxvisError(f"{name} expects images [B, H, W, C]; got shape {tuple(images.shape)}")


def _check_int(name: str, value, minimum: int = 0) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise JaxvisError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _check_mode(mode: str, valid: Sequence[str]) -> None:
    if mode not in valid:
        raise JaxvisError(f"unknown fill mode {mode!r}; valid: {choices(valid)}")


def _pad_hw(images: Array, width: int, mode: str, value: float) -> Array:
    pads = ((0, 0), (width, width), (width, width), (0, 0))
    if mode == "constant":
        return jnp.pad(images, pads, mode="constant", constant_values=value)
    return jnp.pad(images, pads, mode=mode)


def _fill_str(mode: str, value: float) -> str:
    return f"constant {value:g}" if mode == "constant" else mode


def random_words(key: PRNGKey) -> Array:
    """The two random uint32 words every random transform draws from its key.

    One ``jax.random.bits`` call, that is one threefry hash, per transform and step. The
    integers come from these words by a remainder (:func:`word_below`), not from
    ``jax.random.randint``, which hashes several times per call: at k = 8 unrolled steps
    the draws of ``jax.random.randint`` made a third to a half of the compile time of
    a lucid-preset block (benchmarks/README.md, "Compile time of the random draws").
    """
    return jax.random.bits(key, (2,), jnp.uint32)


def word_below(words: Array, n: int) -> Array:
    """int32 ``words % n``: uniform on [0, n) up to a bias under n / 2**32 (2**32 is not
    a multiple of n), far below what a few thousand ascent steps could show."""
    return (words % jnp.uint32(n)).astype(jnp.int32)


def offsets_from(words: Array, d: int) -> Array:
    """int32 [2], the shift (dy, dx) in [-d, d] that ``words`` [2] select."""
    return word_below(words, 2 * d + 1) - d


def choice_from(words: Array, values: Sequence[float]) -> Array:
    """The value of ``values`` that the first of ``words`` selects."""
    return jnp.asarray(values, jnp.float32)[word_below(words[0], len(values))]


def random_offsets(key: PRNGKey, d: int) -> Array:
    """The shift (dy, dx) that :func:`jitter` and :func:`roll_jitter` draw from ``key``.

    Returns:
      int32 [2], uniform integers in [-d, d] per axis (as keras-vis's ``Jitter`` draws
      ``np.random.randint(-d, d + 1)``, vis/input_modifiers.py), from
      :func:`random_words`.
    """
    return offsets_from(random_words(key), d)


def random_choice(key: PRNGKey, values: Sequence[float]) -> Array:
    """One of ``values``, uniformly, from :func:`random_words`."""
    return choice_from(random_words(key), values)


# --- deterministic -------------------------------------------------------------------


def pad(width: int, *, mode: str = "constant", value: float = 0.5) -> NamedTransform:
    """Pads height and width by ``width`` on each side; [B, H, W, C] -> [B, H+2w, W+2w, C].

    Lucid's ``transform.pad`` (standard: 12 px of constant 0.5). The key is unused.

    Args:
      width: pixels added on each side.
      mode: ``jnp.pad`` mode, one of PAD_MODES.
      value: fill for ``mode="constant"``.
    """
    width = _check_int("pad width", width)
    _check_mode(mode, PAD_MODES)

    def fn(key, images):
        _check_images(images, "pad")
        return _pad_hw(images, width, mode, value)

    return NamedTransform(fn, f"pad({width}, {_fill_str(mode, value)})")


def _center_crop(images: Array, h: int, w: int) -> Array:
    big_h, big_w = images.shape[1:3]
    if h > big_h or w > big_w:
        raise JaxvisError(f"cannot crop {big_h}x{big_w} images to a larger {h}x{w}")
    top, left = (big_h - h) // 2, (big_w - w) // 2
    return images[:, top : top + h, left : left + w]


def center_crop(height: int, width: int | None = None) -> NamedTransform:
    """Crops the central ``height`` x ``width`` (default square); deterministic.

    Odd margins leave the extra pixel at the bottom and right.
    """
    h = _check_int("crop height", height, 1)
    w = h if width is None else _check_int("crop width", width, 1)

    def fn(key, images):
        _check_images(images, "center_crop")
        return _center_crop(images, h, w)

    return NamedTransform(fn, f"center_crop({h}x{w})")


# --- translations ----------------------------------------------------------------------


def jitter(d: int, *, mode: str = "edge", value: float = 0.5) -> NamedTransform:
    """Translates by a random integer (dy, dx) in [-d, d], keeping the shape.

    ``out[i, j] = in[i - dy, j - dx]``; pixels shifted in from outside take the edge
    value (or ``value``). Lucid's ``jitter(d)`` random-crops ``d`` pixels instead, which
    shrinks the image and moves its content by -d/2..d/2 about the centre, i.e. this
    ``jitter(d // 2)`` followed by a crop.

    Args:
      d: largest shift in pixels along each axis.
      mode: fill for uncovered pixels, one of PAD_MODES.
      value: fill for ``mode="constant"``.
    """
    d = _check_int("jitter", d)
    _check_mode(mode, PAD_MODES)

    def fn(key, images):
        _check_images(images, "jitter")
        dy, dx = random_offsets(key, d)
        padded = _pad_hw(images, d, mode, value)
        start = (0, d - dy, d - dx, 0)
        return jax.lax.dynamic_slice(padded, start, images.shape)

    return NamedTransform(fn, f"jitter({d}, {_fill_str(mode, value)})")


def roll_jitter(d: int) -> NamedTransform:
    """Circular shift by a random integer (dy, dx) in [-d, d], like ``np.roll``.

    keras-vis's ``Jitter(d)`` input modifier (vis/input_modifiers.py), which draws
    ``np.random.randint(-d, d + 1)`` per axis and shifts with wrap-around
    (``scipy.ndimage.shift(mode="wrap", order=0)``, whose border handling changed across
    SciPy versions; np.roll is the exact circular shift). keras-vis
    shifts the optimized seed itself, so its offsets accumulate over steps; here the
    shift is drawn afresh each step and applied between the image and the model.
    """
    d = _check_int("roll_jitter", d)

    def fn(key, images):
        _check_images(images, "roll_jitter")
        dy, dx = random_offsets(key, d)
        return jnp.roll(images, (dy, dx), axis=(1, 2))

    return NamedTransform(fn, f"roll_jitter({d})")


# --- resampling --------------------------------------------------------------------------


def _wrap_index(i: Array, n: int, mode: str) -> Array:
    return jnp.mod(i, n) if mode == "wrap" else jnp.clip(i, 0, n - 1)


def _resample(images: Array, src_y: Array, src_x: Array, mode: str, value: float) -> Array:
    """Bilinear sampling of [B, H, W, C] at source coordinates [H', W'] (pixel units).

    Same result as ``jax.scipy.ndimage.map_coordinates(order=1)`` per plane, but with one
    gather per corner for all planes, which keeps the graph and its gradient small.
    Out-of-range corners read the edge (``"nearest"``), wrap (``"wrap"``) or ``value``.
    """
    h, w = images.shape[1:3]
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    fy, fx = src_y - y0, src_x - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    out = jnp.zeros(images.shape[:1] + src_y.shape + images.shape[3:], images.dtype)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            sample = images[:, _wrap_index(yi, h, mode), _wrap_index(xi, w, mode)]
            if mode == "constant":
                inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
                sample = jnp.where(inside[None, :, :, None], sample, value)
            out = out + (wy * wx)[None, :, :, None] * sample
    return out


def _centred_grid(h: int, w: int) -> tuple[Array, Array, float, float]:
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    y, x = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    return y - cy, x - cx, cy, cx


def _check_values(name: str, values, positive: bool = False) -> tuple[float, ...]:
    vals = tuple(values) if isinstance(values, Sequence) else ()
    ok = vals and all(isinstance(v, numbers.Real) and (v > 0 or not positive) for v in vals)
    if not ok:
        kind = "positive numbers" if positive else "numbers"
        raise JaxvisError(f"{name} must be a non-empty sequence of {kind}; got {values!r}")
    return tuple(float(v) for v in vals)


def _values_str(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def random_scale(
    scales: Sequence[float], *, mode: str = "nearest", value: float = 0.5
) -> NamedTransform:
    """Zooms about the centre by one of ``scales``, resampled to the SAME shape.

    Output pixel (i, j) reads the input at ``c + ((i, j) - c) / s`` with bilinear
    interpolation, c the centre; s > 1 enlarges the content, s < 1 shrinks it and fills
    the border from ``mode``. Lucid's ``random_scale`` resizes the whole image instead,
    changing its size; the content scales the same way.

    Args:
      scales: candidate factors, chosen uniformly (repeat a value to weight it).
      mode: fill outside the image, one of RESAMPLE_MODES (``nearest`` = edge).
      value: fill for ``mode="constant"``.
    """
    scales = _check_values("scales", scales, positive=True)
    _check_mode(mode, RESAMPLE_MODES)

    def fn(key, images):
        _check_images(images, "random_scale")
        y, x, cy, cx = _centred_grid(*images.shape[1:3])
        s = random_choice(key, scales)
        return _resample(images, cy + y / s, cx + x / s, mode, value)

    return NamedTransform(fn, f"random_scale({_values_str(scales)}, {_fill_str(mode, value)})")


def random_rotate(
    angles_degrees: Sequence[float], *, mode: str = "nearest", value: float = 0.5
) -> NamedTransform:
    """Rotates about the centre by one of ``angles_degrees``, keeping the shape.

    Positive angles turn the picture counter-clockwise as displayed (90 equals
    ``np.rot90``), bilinear, with corners filled from ``mode``. Lucid's
    ``random_rotate`` uses ``tf.contrib.image.rotate`` (nearest neighbour, black fill).

    Args:
      angles_degrees: candidate angles, chosen uniformly (repeat a value to weight it).
      mode: fill outside the image, one of RESAMPLE_MODES (``nearest`` = edge).
      value: fill for ``mode="constant"``.
    """
    angles = _check_values("angles_degrees", angles_degrees)
    _check_mode(mode, RESAMPLE_MODES)

    def fn(key, images):
        _check_images(images, "random_rotate")
        y, x, cy, cx = _centred_grid(*images.shape[1:3])
        theta = jnp.deg2rad(random_choice(key, angles))
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        return _resample(images, cy + y * cos + x * sin, cx + x * cos - y * sin, mode, value)

    return NamedTransform(fn, f"random_rotate({_values_str(angles)}, {_fill_str(mode, value)})")


# --- composition -------------------------------------------------------------------------


def compose(*transforms: Transform) -> NamedTransform:
    """Applies ``transforms`` in order; the i-th gets ``jax.random.split(key, n)[i]``."""
    transforms = tuple(transforms)
    for t in transforms:
        if not callable(t):
            raise JaxvisError(f"compose expects transforms (callables); got {t!r}")

    def fn(key, images):
        if not transforms:
            return images
        for t, k in zip(transforms, jax.random.split(key, len(transforms)), strict=True):
            images = t(k, images)
        return images

    return NamedTransform(fn, "compose(" + ", ".join(describe(t) for t in transforms) + ")")


def standard_transforms(
    size: int | tuple[int, int] | None = None,
    *,
    fused: bool = True,
    pad_width: int | None = None,
    jitters: tuple[int, int] | None = None,
    scales: Sequence[float] | None = None,
    angles: Sequence[float] | None = None,
) -> NamedTransform:
    """Lucid's ``transform.standard_transforms``, then a crop back to a fixed size.

    Lucid (optvis/transform.py): ``pad(12, constant 0.5)``, ``jitter(8)``,
    ``random_scale([1 + (i - 5) / 50 for i in range(11)])``,
    ``random_rotate(list(range(-10, 11)) + 5 * [0])``, ``jitter(4)``. Lucid's jitter(d)
    is a random crop that moves content by -d/2..d/2, so its jitter(8) and jitter(4) are
    :func:`jitter` (4) and (2) here: the same translations, with the shape kept. A final
    centre crop gives the model ``size`` (default: the input size) instead of Lucid's
    12 px larger image.

    With ``fused=True`` (the default) the whole chain is one affine map, sampled once,
    bilinearly, at the output pixels only, with 0.5 outside the image. It draws the same
    random shifts, scale and angle from the key as the unfused chain and equals it wherever
    the chain is exact (integer shifts, 90-degree turns); elsewhere it interpolates once
    instead of twice, so it is slightly sharper. It is about 4x cheaper per step on
    XLA:CPU and compiles much faster: each resample's gradient is a scatter-add.

    Args:
      size: output int or (height, width); ``None`` crops back to the input's size.
      fused: False applies the five transforms one after another.
      pad_width: the padding, in pixels (``None``: Lucid's 12).
      jitters: the two jitters' reach (``None``: Lucid's, i.e. (4, 2) here).
      scales: the scale factors drawn from (``None``: Lucid's 0.9 to 1.1).
      angles: the angles in degrees drawn from (``None``: Lucid's -10 to 10, 0 weighted).

    Every knob appears, with its value, in the description an atlas records.
    """
    width = LUCID_PAD if pad_width is None else _check_int("pad_width", pad_width)
    if jitters is not None and (not isinstance(jitters, Sequence) or len(jitters) != 2):
        raise JaxvisError(f"jitters must be two integers (first, second); got {jitters!r}")
    reach = (4, 2) if jitters is None else tuple(_check_int("jitters", d) for d in jitters)
    scales = LUCID_SCALES if scales is None else _check_values("scales", scales, True)
    angles = LUCID_ANGLES if angles is None else _check_values("angles", angles)
    steps = (
        pad(width, mode="constant", value=0.5),
        jitter(reach[0]),
        random_scale(scales),
        random_rotate(angles),
        jitter(reach[1]),
    )
    chain = compose(*steps)
    hw = None if size is None else _size_hw(size)

    def unfused(key, images):
        _check_images(images, "standard_transforms")
        h, w = images.shape[1:3] if hw is None else hw
        return _center_crop(chain(key, images), h, w)

    def fn(key, images):
        _check_images(images, "standard_transforms")
        h, w = images.shape[1:3] if hw is None else hw
        return _lucid_affine(key, images, h, w, width, reach, scales, angles)

    target = "input size" if hw is None else f"{hw[0]}x{hw[1]}"
    desc = f"standard_transforms({', '.join(describe(t) for t in steps)}, crop to {target})"
    if fused:
        desc = desc[:-1] + ", fused into one bilinear resample)"
    return NamedTransform(fn if fused else unfused, desc)


def _lucid_affine(
    key: PRNGKey, images: Array, h: int, w: int, width: int, reach, scales, angles
) -> Array:
    """The standard chain as one resample: output pixel -> source pixel, inverted step by step.

    Frame coordinates are those of the padded image (size + 2 * width), whose centre
    the scale and rotation turn about, exactly as in the unfused chain.
    """
    # The chain's draws: compose() splits the key in five and each random transform draws
    # random_words from its own key; vmapped, the four draws are one threefry hash.
    _, w_jit1, w_scale, w_rot, w_jit2 = jax.vmap(random_words)(jax.random.split(key, 5))
    big_h, big_w = images.shape[1] + 2 * width, images.shape[2] + 2 * width
    cy, cx = (big_h - 1) / 2.0, (big_w - 1) / 2.0
    y, x = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    d1 = offsets_from(w_jit1, reach[0]).astype(jnp.float32)
    d2 = offsets_from(w_jit2, reach[1]).astype(jnp.float32)
    s = choice_from(w_scale, scales)
    theta = jnp.deg2rad(choice_from(w_rot, angles))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # crop offset, then undo jitter(2), rotate, scale, jitter(4) and the padding
    qy = y + (big_h - h) // 2 - d2[0] - cy
    qx = x + (big_w - w) // 2 - d2[1] - cx
    ry, rx = qy * cos + qx * sin, qx * cos - qy * sin
    src_y = cy + ry / s - d1[0] - width
    src_x = cx + rx / s - d1[1] - width
    return _resample(images, src_y, src_x, "constant", 0.5)


def _size_hw(size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, numbers.Integral) else size
    if not isinstance(hw, (tuple, list)) or len(hw) != 2:
        raise JaxvisError(f"size must be an int or (height, width); got {size!r}")
    return _check_int("height", hw[0], 1), _check_int("width", hw[1], 1)
