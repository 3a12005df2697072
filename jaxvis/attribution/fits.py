"""Whether a chunk of images fits in memory: the engine's rule (jaxvis/devices.py), told
in the words of attribution maps.

``devices.check_fits`` counts an atlas's "units" and suggests "--batch". An attribution
chunk is images, each vmapping several passes through the model at once (SmoothGrad's
samples, Integrated Gradients' path points, Score-CAM's masked images;
``program.passes``), so the refusal here names the images, the passes and the option
that sets them, and the largest image size that the same rule lets fit.
"""

from __future__ import annotations

import jax

from jaxvis import devices
from jaxvis.attribution import memo, program
from jaxvis.attribution.specs import Spec
from jaxvis.errors import JaxvisError

# How to vmap fewer passes per image at once: the option that sets them (program.passes).
FEWER_PASSES = {
    "smoothgrad": "fewer samples (--samples)",
    "integrated_gradients": "fewer steps (--steps)",
    "scorecam": "a smaller score_batch (--score-batch)",
}


def check_fits(model, spec: Spec, stop_at: str, side: int, images: int, group: int) -> None:
    """A one-line JaxvisError, before anything runs, if ``images`` images per chunk, each
    with ``group`` passes at once, would not fit at ``side`` px.

    Asked once per setting (it traces the model; its answer changes only with the free
    memory).

    Args:
      model: the FeatureModel.
      spec: the method (for the name of the option that sets the passes).
      stop_at: the deepest layer the program computes.
      side: the images' longer side, px.
      images: images per compiled chunk (all devices).
      group: passes each image vmaps at once (``program.Plan.group``).
    """
    key = ("fits", memo.model_key(model), stop_at, side, images * group)
    memo.memo(key, lambda: _check(model, spec, stop_at, side, images, group))


def _check(model, spec: Spec, stop_at: str, side: int, images: int, group: int) -> None:
    try:
        devices.check_fits(model, stop_at, side, images * group)
    except JaxvisError:
        raise JaxvisError(_message(model, spec, stop_at, side, images, group)) from None


def _message(model, spec: Spec, stop_at: str, side: int, images: int, group: int) -> str:
    n_dev = jax.device_count()
    per_device = -(-images // n_dev)
    need = devices.unit_bytes(model, stop_at, side) * -(-(images * group) // n_dev)
    memory = devices.available_memory(jax.devices()[0]) or 0
    passes = f", {group} passes each at once," if group > 1 else ""
    fixes = []
    if per_device > 1:
        fixes.append("a smaller batch (--batch)")
    if group > 1 and group >= program.passes(spec) and spec.method in FEWER_PASSES:
        fixes.append(FEWER_PASSES[spec.method])  # all its passes at once: fewer would help
    largest = _largest_side(model, stop_at, side, images * group)
    if largest is not None:
        advice = "use " + _either([f"images of at most {largest} px (--size)", *fixes])
    else:
        advice = f"even {model.min_size} px images do not fit"
        advice += f"; use {_either(fixes)}" if fixes else ""
    return (
        f"{spec.method} of {_count(per_device, 'image')} per device at {side} px{passes} "
        f"needs about {_size(need)} to run up to {stop_at}, but "
        f"{jax.devices()[0].platform} has {_size(memory)} available; {advice}"
    )


def _largest_side(model, stop_at: str, side: int, passes: int) -> int | None:
    """The largest side below ``side`` (at least ``model.min_size``) that
    ``devices.check_fits`` accepts, by bisection; None if none does."""
    lo, hi = model.min_size, side - 1
    if hi < lo or not _fits(model, stop_at, lo, passes):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _fits(model, stop_at, mid, passes) else (lo, mid - 1)
    return lo


def _fits(model, stop_at: str, side: int, passes: int) -> bool:
    try:
        devices.check_fits(model, stop_at, side, passes)
    except JaxvisError:
        return False
    return True


def _size(nbytes: int) -> str:
    """``"310 MiB"`` below 1 GiB, else ``"1.1 GiB"``."""
    return f"{nbytes / 2**20:.0f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.1f} GiB"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _either(fixes: list[str]) -> str:
    """``"a"``, ``"a or b"``, ``"a, b or c"``."""
    return fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + " or " + fixes[-1]
