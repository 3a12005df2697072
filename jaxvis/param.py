"""Image parameterizations: pairs of pure functions ``init(key) -> raw`` and
``to_image(raw) -> images``, in the style of optax's ``init``/``update`` pairs: pure
functions of explicit state, so the engine can vmap and jit them over units.

``raw`` is what the optimizer updates, for ONE unit. ``to_image`` gives the model-space
images [B, H, W, 3] float32 RGB, nominally in [0, 1]; ``display`` (when set) gives what an
atlas should save. The Lucid parameterizations (pixel or Fourier basis, decorrelated
colour, sigmoid) follow Lucid's optvis/param/spatial.py and param/color.py; the keras-vis
one follows vis/optimizer.py and vis/utils/utils.py.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvis._types import Array, PRNGKey
from jaxvis.errors import JaxvisError

# Square root of ImageNet's colour correlation matrix (Lucid param/color.py,
# color_correlation_svd_sqrt).
COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32
)
# Lucid param/color.py: divided by its largest column norm (max_norm_svd_sqrt).
_COLOR = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
_COLOR_INV = np.linalg.inv(_COLOR).astype(np.float32)
# Lucid param/color.py color_mean, added to decorrelated colours when there is no sigmoid.
COLOR_MEAN = (0.48, 0.46, 0.41)
# Lucid param/spatial.py fft_image divides the image by 4 ("TODO: is that a magic constant?").
FFT_MAGIC = 4.0
# Lucid param/spatial.py: default sd of the initial noise (pixels or spectrum).
LUCID_SD = 0.01
# keras-vis vis/optimizer.py _get_seed_input with the default input_range (0, 255):
# mean = mean(input_range), std = 0.05 * (255 - 0).
KERAS_VIS_MEAN = 127.5
KERAS_VIS_SD = 12.75
# Keras backend K.epsilon(), used by keras-vis's random_array and deprocess_input.
KERAS_EPSILON = 1e-7
# from_image clips the target into (eps, 1 - eps) before the inverse sigmoid.
_LOGIT_EPS = 1e-3


class Param(NamedTuple):
    """An image parameterization for one unit.

    Attributes:
      init: ``key -> raw``; depends only on the key.
      to_image: ``raw -> images`` float32 [B, H, W, 3], the model-space images.
      description: human-readable config, written into atlases.
      display: ``raw -> images`` in [0, 1] for saving, or ``None`` for
        ``clip(to_image(raw), 0, 1)`` (see :func:`to_display`).
    """

    init: Callable[[PRNGKey], Any]
    to_image: Callable[[Any], Array]
    description: str
    display: Callable[[Any], Array] | None = None


def to_display(param: Param, raw: Any) -> Array:
    """The images an atlas should save, float32 [B, H, W, 3] in [0, 1]."""
    if param.display is not None:
        return param.display(raw)
    return jnp.clip(param.to_image(raw), 0.0, 1.0)


def _hw(size) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, numbers.Integral) else size
    hw = tuple(hw) if isinstance(hw, (tuple, list)) else ()
    if len(hw) != 2 or not all(isinstance(s, numbers.Integral) and s > 0 for s in hw):
        raise JaxvisError(f"size must be a positive int or (height, width); got {size!r}")
    return int(hw[0]), int(hw[1])


def _check_batch(batch) -> int:
    if not isinstance(batch, numbers.Integral) or batch < 1:
        raise JaxvisError(f"batch must be a positive int; got {batch!r}")
    return int(batch)


def _flags(**kw) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())


# --- colour ----------------------------------------------------------------------------


def to_rgb(t: Array, *, decorrelate: bool, sigmoid: bool) -> Array:
    """Lucid's ``to_valid_rgb``: optional decorrelated colour, then a squashing.

    ``decorrelate`` maps each pixel's 3 values through the normalized square root of
    ImageNet's colour correlation (``rgb = C t``, Lucid param/color.py). ``sigmoid``
    squashes into (0, 1). Without it the map is linear and unclipped: ``t + color_mean``
    when decorrelated (as Lucid), else ``t + 0.5`` so that a zero init is mid-grey. Lucid
    clips here instead (``constrain_L_inf``); in jaxvis clipping is left to the display.

    Args:
      t: [..., 3].
    """
    if decorrelate:
        t = t @ jnp.asarray(_COLOR.T)
    if sigmoid:
        return jax.nn.sigmoid(t)
    return t + jnp.asarray(COLOR_MEAN if decorrelate else (0.5, 0.5, 0.5), t.dtype)


def _from_rgb(rgb: np.ndarray, *, decorrelate: bool) -> np.ndarray:
    """Inverse of :func:`to_rgb` with the sigmoid, clipping to (eps, 1 - eps) first."""
    x = np.clip(rgb.astype(np.float64), _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    t = np.log(x) - np.log1p(-x)
    return t @ _COLOR_INV.T.astype(np.float64) if decorrelate else t


# --- spatial bases ---------------------------------------------------------------------


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> np.ndarray:
    """Per-frequency scale of the Fourier parameterization, float32 [h, w // 2 + 1].

    Lucid param/spatial.py: ``1 / max(f, 1 / max(h, w))**decay_power * sqrt(h * w)``,
    with ``f`` the frequency magnitude in cycles per pixel. Combined with the inverse
    FFT's 1 / (h * w) this makes the transform unitary at decay_power 0, so learning rates
    carry over from pixel parameterizations. Lucid keeps one extra column for odd widths
    and crops; here the exact ``w // 2 + 1`` half-spectrum is used for every width.
    """
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
    return (scale * np.sqrt(h * w)).astype(np.float32)


def _fft_to_spatial(raw: Array, h: int, w: int, scale: np.ndarray) -> Array:
    """[B, 2, 3, h, w//2+1] (real, imag) spectrum -> [B, h, w, 3] (Lucid fft_image)."""
    spectrum = (raw[:, 0] + 1j * raw[:, 1]) * scale
    image = jnp.fft.irfft2(spectrum, s=(h, w), axes=(-2, -1))
    return jnp.transpose(image, (0, 2, 3, 1)).astype(jnp.float32) / FFT_MAGIC


def _spatial_to_fft(t: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_fft_to_spatial`: [B, h, w, 3] -> [B, 2, 3, h, w//2+1]."""
    spectrum = np.fft.rfft2(np.transpose(t, (0, 3, 1, 2)) * FFT_MAGIC, axes=(-2, -1)) / scale
    return np.stack([spectrum.real, spectrum.imag], axis=1).astype(np.float32)


# --- parameterizations -------------------------------------------------------------------


def pixel_image(
    size,
    *,
    batch: int = 1,
    sd: float = LUCID_SD,
    decorrelate: bool = False,
    sigmoid: bool = True,
) -> Param:
    """Lucid's pixel parameterization: raw [B, H, W, 3] ~ N(0, sd), then :func:`to_rgb`.

    Args:
      size: int or (height, width).
      batch: images per unit (B > 1 for diversity).
      sd: standard deviation of the initial noise (Lucid param/spatial.py: 0.01).
      decorrelate: interpret raw colours in Lucid's decorrelated space.
      sigmoid: squash with a sigmoid (else linear, see :func:`to_rgb`).
    """
    h, w = _hw(size)
    batch = _check_batch(batch)

    def init(key: PRNGKey) -> Array:
        return sd * jax.random.normal(key, (batch, h, w, 3), jnp.float32)

    def to_image(raw: Array) -> Array:
        return to_rgb(raw, decorrelate=decorrelate, sigmoid=sigmoid)

    flags = _flags(batch=batch, sd=float(sd), decorrelate=decorrelate, sigmoid=sigmoid)
    return Param(init, to_image, f"pixel_image({h}x{w}, {flags})")


def fft_image(
    size,
    *,
    batch: int = 1,
    sd: float = LUCID_SD,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    sigmoid: bool = True,
) -> Param:
    """Lucid's Fourier parameterization (param/spatial.py ``fft_image``).

    raw is a real [B, 2, 3, H, W // 2 + 1] (real and imaginary parts, Lucid's layout per
    image) ~ N(0, sd). The image is ``irfft2(raw * spectrum_scale) / 4`` (Lucid's magic
    constant), then :func:`to_rgb`. Low frequencies get larger scales, so plain gradient
    steps favour smooth images.

    Args:
      size: int or (height, width).
      batch: images per unit.
      sd: standard deviation of the initial spectrum noise (Lucid: 0.01).
      decay_power: exponent of the 1 / frequency scaling (Lucid: 1).
      decorrelate: Lucid's decorrelated colour (its ``image()`` default).
      sigmoid: squash with a sigmoid (else linear).
    """
    h, w = _hw(size)
    batch = _check_batch(batch)
    scale = spectrum_scale(h, w, decay_power)

    def init(key: PRNGKey) -> Array:
        return sd * jax.random.normal(key, (batch, 2, 3) + scale.shape, jnp.float32)

    def to_image(raw: Array) -> Array:
        return to_rgb(_fft_to_spatial(raw, h, w, scale), decorrelate=decorrelate, sigmoid=sigmoid)

    flags = _flags(
        batch=batch,
        sd=float(sd),
        decay_power=float(decay_power),
        decorrelate=decorrelate,
        sigmoid=sigmoid,
    )
    return Param(init, to_image, f"fft_image({h}x{w}, {flags})")


def from_image(image, *, fft: bool = True, decorrelate: bool = True) -> Param:
    """Starts from a given image: ``to_image(init(key))`` returns it (up to clipping).

    The parameterization is :func:`fft_image` (or :func:`pixel_image`) with a sigmoid;
    ``init`` ignores its key and returns the raw value found by inverting each stage:
    the sigmoid (after clipping the image into (0.001, 0.999), where it stays
    invertible), the colour matrix, and the Fourier scaling.

    Args:
      image: [H, W, 3] or [B, H, W, 3], RGB in [0, 1].
      fft: use the Fourier basis (else pixels).
      decorrelate: use Lucid's decorrelated colour.
    """
    img = np.asarray(image, np.float32)
    img = img[None] if img.ndim == 3 else img
    if img.ndim != 4 or img.shape[-1] != 3 or not np.all(np.isfinite(img)):
        raise JaxvisError(
            f"image must be finite [H, W, 3] or [B, H, W, 3] RGB in [0, 1]; got shape {img.shape}"
        )
    b, h, w, _ = img.shape
    t = _from_rgb(img, decorrelate=decorrelate)
    if fft:
        base = fft_image((h, w), batch=b, decorrelate=decorrelate)
        raw = jnp.asarray(_spatial_to_fft(t, spectrum_scale(h, w)))
    else:
        base = pixel_image((h, w), batch=b, decorrelate=decorrelate)
        raw = jnp.asarray(t, jnp.float32)
    desc = f"from_image({h}x{w}, {_flags(batch=b, fft=fft, decorrelate=decorrelate)})"
    return Param(lambda key: raw, base.to_image, desc)


def _standardize(x: Array) -> Array:
    """Per image: zero mean, unit std over (H, W, 3), with Keras's epsilon."""
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) / (std + KERAS_EPSILON)


def keras_vis_image(
    size, *, batch: int = 1, mean: float = KERAS_VIS_MEAN, sd: float = KERAS_VIS_SD
) -> Param:
    """keras-vis's seed and pixel space: raw is 0-255 pixels, fed unclipped.

    ``init`` is keras-vis's ``utils.random_array``: uniform noise standardized to exactly
    ``mean`` and ``sd`` (per image here; keras-vis seeds a batch of one), with keras-vis's
    defaults for ``input_range=(0, 255)``: 127.5 and 0.05 * 255 = 12.75
    (vis/optimizer.py ``_get_seed_input``). ``to_image = raw / 255`` with no clipping,
    as keras-vis feeds its seed to the model unclipped. ``display`` is keras-vis's
    ``deprocess_input``: standardize each image, times 0.1, plus 0.5, clip to [0, 1]
    (keras-vis returns that times 255).

    Args:
      size: int or (height, width).
      batch: images per unit.
      mean: seed mean in 0-255 units.
      sd: seed standard deviation in 0-255 units.
    """
    h, w = _hw(size)
    batch = _check_batch(batch)

    def init(key: PRNGKey) -> Array:
        u = jax.random.uniform(key, (batch, h, w, 3), jnp.float32)
        return _standardize(u) * sd + mean

    def to_image(raw: Array) -> Array:
        return raw / 255.0

    def display(raw: Array) -> Array:
        return jnp.clip(_standardize(raw) * 0.1 + 0.5, 0.0, 1.0)

    flags = _flags(batch=batch, mean=float(mean), sd=float(sd))
    return Param(init, to_image, f"keras_vis_image({h}x{w}, {flags})", display)
