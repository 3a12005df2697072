"""The attribution methods by name: aliases, options with their defaults, what they need.

Every option a method takes is listed here with its default, and checked here, so that
an Attributor's description (the identity of a maps file) always holds every option,
defaults filled in. The formulas live in ``jaxvis/attribution/methods.py`` and
``jaxvis/attribution/cam.py``; ``docs/attribution.md`` gives them with their papers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
from collections.abc import Callable, Mapping

import numpy as np

from jaxvis.errors import JaxvisError, choices
from jaxvis.models.taps import DELTAS, GUIDED_RELU

METHODS: tuple[str, ...] = (
    "gradient",
    "smoothgrad",
    "integrated_gradients",
    "gradcam",
    "gradcam++",
    "scorecam",
    "guided_backprop",
    "guided_gradcam",
)
CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "guided_gradcam")
# Other spellings, after lower-casing and turning "-" and " " into "_".
_ALIASES = {
    "saliency": "gradient",
    "vanilla": "gradient",
    "vanilla_gradient": "gradient",
    "smooth_grad": "smoothgrad",
    "ig": "integrated_gradients",
    "integrated_gradient": "integrated_gradients",
    "grad_cam": "gradcam",
    "gradcam_plus_plus": "gradcam++",
    "grad_cam++": "gradcam++",
    "gradcampp": "gradcam++",
    "score_cam": "scorecam",
    "guided": "guided_backprop",
    "guided_backpropagation": "guided_backprop",
    "guided_grad_cam": "guided_gradcam",
}

REDUCE = ("max_abs", "sum_abs", "sum")
COMBINE = ("mean", "abs", "square")
RULES = ("right", "left", "midpoint", "trapezoid", "linspace")


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise JaxvisError(f"{name} must be a positive integer; got {v!r}")
    return int(v)


def _positive_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < float("inf"):
        raise JaxvisError(f"{name} must be a positive number; got {v!r}")
    return float(v)


def _one_of(valid: tuple[str, ...]) -> Callable[[str, object], str]:
    def check(name: str, v) -> str:
        if v not in valid:
            raise JaxvisError(f"unknown {name} {v!r}; valid: {choices(valid)}")
        return v

    return check


def _boolean(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise JaxvisError(f"{name} must be True or False; got {v!r}")
    return bool(v)


def _baseline(name: str, v):
    """``"black"`` or a float image [H, W, 3] (its size is checked against the images)."""
    if isinstance(v, str):
        if v != "black":
            raise JaxvisError(f"baseline must be 'black' or an image [H, W, 3]; got {v!r}")
        return v
    a = np.asarray(v)
    if a.ndim != 3 or a.shape[-1] != 3 or not np.issubdtype(a.dtype, np.floating):
        raise JaxvisError(
            f"baseline must be 'black' or a float image [H, W, 3]; got {a.dtype} {a.shape}"
        )
    if not np.isfinite(a).all():
        raise JaxvisError("baseline image has non-finite pixels")
    return a.astype(np.float32)


_CHECKS = {
    "reduce": _one_of(REDUCE),
    "noise": _positive_float,
    "samples": _positive_int,
    "combine": _one_of(COMBINE),
    "steps": _positive_int,
    "baseline": _baseline,
    "rule": _one_of(RULES),
    "resize": _boolean,
    "score_batch": _positive_int,
}
# Every option any method takes (``jaxvis attribute`` has a flag for each).
OPTIONS: tuple[str, ...] = tuple(_CHECKS)

# Defaults: see docs/attribution.md for why each was chosen.
_DEFAULTS: dict[str, dict[str, object]] = {
    "gradient": {"reduce": "max_abs"},
    "smoothgrad": {"noise": 0.15, "samples": 25, "combine": "mean", "reduce": "max_abs"},
    "integrated_gradients": {"steps": 32, "baseline": "black", "rule": "right", "reduce": "sum"},
    "gradcam": {"resize": True},
    "gradcam++": {"resize": True},
    "scorecam": {"resize": True, "score_batch": 32},
    "guided_backprop": {"reduce": "max_abs"},
    "guided_gradcam": {"reduce": "max_abs"},
}
_TAPS = {
    "gradcam": (DELTAS,),
    "gradcam++": (DELTAS,),
    "guided_backprop": (GUIDED_RELU,),
    "guided_gradcam": (DELTAS, GUIDED_RELU),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One method, resolved: canonical name and every option, checked.

    Attributes:
      method: canonical name, one of :data:`METHODS`.
      options: ``{name: value}`` for every option the method takes, defaults filled in
        (a baseline image stays a numpy array; see :meth:`key` and :meth:`described`).
    """

    method: str
    options: Mapping[str, object]

    @property
    def cam(self) -> bool:
        """Whether the method reads a layer's activation (and takes ``layer``)."""
        return self.method in CAM_METHODS

    @property
    def taps(self) -> tuple[str, ...]:
        """The :class:`~jaxvis.models.taps.Taps` capabilities the method needs."""
        return _TAPS.get(self.method, ())

    def key(self) -> tuple:
        """Hashable options for the compile cache: an image baseline is data, so only its
        presence counts, not its pixels."""
        return tuple(
            (k, "image" if isinstance(v, np.ndarray) else v)
            for k, v in sorted(self.options.items())
        )

    def described(self) -> dict:
        """JSON-able options; an image baseline becomes its shape and SHA-256 digest."""
        return {k: _describe(v) for k, v in self.options.items()}


def _describe(v):
    if isinstance(v, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(v, np.float32).tobytes()).hexdigest()
        return f"image{list(v.shape)} sha256:{digest[:16]}"
    return v


def canonical(method) -> str:
    """The canonical name of ``method`` (aliases and case accepted), or a one-line error."""
    if not isinstance(method, str):
        raise JaxvisError(f"method must be a string; valid: {choices(METHODS)}; got {method!r}")
    name = method.strip().lower().replace("-", "_").replace(" ", "_")
    name = _ALIASES.get(name, name)
    if name not in METHODS:
        raise JaxvisError(f"unknown method {method!r}; valid methods: {choices(METHODS)}")
    return name


def resolve(method, options: Mapping[str, object]) -> Spec:
    """The method's :class:`Spec`: unknown options refused, values checked, defaults
    filled in."""
    name = canonical(method)
    defaults = _DEFAULTS[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise JaxvisError(
            f"unknown option {unknown[0]!r} for {name}; valid options: {choices(sorted(defaults))}"
        )
    merged = {**defaults, **options}
    return Spec(name, {k: _CHECKS[k](k, v) for k, v in merged.items()})
