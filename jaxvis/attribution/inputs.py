"""Checks at the attribution boundary: images, indices, sizes, seeds and batches.

Each returns the checked value in the form the core uses, or raises a one-line
:class:`~jaxvis.errors.JaxvisError` that says what came and what is valid.
"""

from __future__ import annotations

import numbers

import numpy as np

from jaxvis.errors import JaxvisError
from jaxvis.models.feature_model import FeatureModel

_TO_RGB = "convert to RGB first"


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _layout(shape: tuple) -> None:
    """A one-line error unless ``shape`` is [N, H, W, 3]."""
    if len(shape) == 4 and shape[-1] == 3:
        return
    if len(shape) == 4 and shape[-1] in (1, 4):
        kind = "grayscale" if shape[-1] == 1 else "RGBA"
        raise JaxvisError(f"images are {kind} {list(shape)}; {_TO_RGB} ([N, H, W, 3])")
    if len(shape) == 3 and shape[-1] == 3:
        raise JaxvisError(f"images must be a batch [N, H, W, 3]; got {list(shape)}: add an axis")
    if len(shape) in (2, 3):
        raise JaxvisError(f"images look grayscale {list(shape)}; {_TO_RGB} ([N, H, W, 3])")
    raise JaxvisError(f"images must be [N, H, W, 3] RGB in [0, 1]; got shape {list(shape)}")


def check_images(images, model: FeatureModel) -> np.ndarray:
    """float32 [N, H, W, 3] RGB in [0, 1], at least ``model.min_size`` px a side."""
    a = np.asarray(images)
    _layout(a.shape)
    if not np.issubdtype(a.dtype, np.floating):
        hint = " (divide uint8 images by 255)" if a.dtype == np.uint8 else ""
        raise JaxvisError(f"images must be float RGB in [0, 1]; got {a.dtype}{hint}")
    if a.shape[0] == 0:
        raise JaxvisError("no images given ([0, H, W, 3])")
    if not np.isfinite(a).all():
        raise JaxvisError("images have non-finite pixels (NaN or inf)")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise JaxvisError(f"images must be in [0, 1]; got values in [{lo:g}, {hi:g}]")
    h, w = a.shape[1:3]
    if min(h, w) < model.min_size:
        raise JaxvisError(
            f"images must be at least {model.min_size}x{model.min_size} px for {model.name}; "
            f"got {h}x{w}"
        )
    return a.astype(np.float32, copy=False)


def check_indices(indices, n: int) -> np.ndarray:
    """int64 [n], each >= 0: the global index of each image (it seeds its noise)."""
    a = np.asarray(indices)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise JaxvisError(f"indices must be integers [{n}], one per image; got {a.dtype} {a.shape}")
    if (a < 0).any():
        raise JaxvisError(f"indices must be >= 0; got {int(a.min())}")
    return a.astype(np.int64)


def check_size(size, model: FeatureModel) -> tuple[int, int]:
    """``(H, W)`` from an int or a pair, each at least ``model.min_size``."""
    hw = (size, size) if _is_int(size) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or not all(_is_int(s) and s >= model.min_size for s in hw):
        raise JaxvisError(
            f"size must be an int or (H, W), each >= {model.min_size} px; got {size!r}"
        )
    return int(hw[0]), int(hw[1])


def check_seed(seed) -> int:
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise JaxvisError(f"seed must be an integer in [0, 2**32); got {seed!r}")
    return int(seed)


def check_batch(batch) -> int | None:
    """``None`` (chosen for the device) or a positive integer: images per compiled call."""
    if batch is None:
        return None
    if not _is_int(batch) or batch < 1:
        raise JaxvisError(f"batch must be a positive integer (images per chunk); got {batch!r}")
    return int(batch)


def check_keepdims(keepdims) -> bool:
    if not isinstance(keepdims, (bool, np.bool_)):
        raise JaxvisError(f"keepdims must be True or False; got {keepdims!r}")
    return bool(keepdims)
