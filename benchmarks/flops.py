"""FLOP counts of an ascent step: the analytic conv count and XLA's own count.

Convention: one multiply-add is 2 FLOPs. A 3x3 'same' conv on an H x W map costs
``2 * H * W * Cin * Cout * 9`` per image forward; its gradient with respect to its input
(a transposed conv, what an ascent step needs to reach the image) costs the same again.
No weight gradients are taken. Bias adds, ReLU, pooling, preprocessing, the
parameterization (FFT, colour), the transforms and the optimizer are *excluded* from the
analytic count; XLA's count (``compiled.cost_analysis()``) includes them, so the two
together show how much non-conv work a step does.
"""

from __future__ import annotations

import re

import jax
import numpy as np


def conv_flops(model, stop_at: str, height: int, width: int | None = None) -> list[dict]:
    """Per-conv forward FLOPs of ONE image through ``model`` up to ``stop_at``.

    Assumes VGG-style 3x3 'same' convs and 2x2 pools that floor odd sizes (as
    ``jaxvis.models.vgg16.max_pool_2x2`` does).
    """
    width = height if width is None else width
    stop_at = stop_at.removesuffix(":pre")
    h, w, cin, out = height, width, 3, []
    for layer in model.layers:
        if layer.kind == "pool":
            h, w = h // 2, w // 2
        elif layer.kind == "conv":
            cout = layer.num_filters
            flops = 2.0 * h * w * cin * cout * 9
            out.append(
                {"layer": layer.name, "h": h, "w": w, "cin": cin, "cout": cout, "fwd_flops": flops}
            )
            cin = cout
        if layer.name == stop_at:
            return out
    raise ValueError(f"{stop_at!r} is not a layer of {model.name}")


def step_flops(
    model,
    stop_at: str,
    height: int,
    width: int | None = None,
    images: int = 1,
    k: int = 1,
    hoisted: bool = False,
    selected: bool = False,
) -> dict:
    """Analytic FLOPs of one filter-step: forward + input-gradient of every conv.

    ``total`` is the plain convention (every conv forward, every conv's input gradient).
    ``executed`` corrects for one thing XLA does: when the objective is linear in the
    target conv's output (Lucid's pre-ReLU channel mean), the cotangent reaching that
    conv is the same every step, so its input gradient is image-independent and XLA's
    CSE computes it once per compiled block of ``k`` steps (``hoisted=True``; see
    :func:`target_grad_hoisted`). Then ``executed = total - (1 - 1/k) * target_conv_fwd``.

    With ``selected`` (the target conv computes only the unit's channel, ``Taps.select``
    in jaxvis/models/taps.py) its forward and input gradient each cost ``1/Cout`` of the
    full conv's, so ``executed = total - 2 (1 - 1/Cout) * target_conv_fwd``. ``total``
    stays the work with the full conv: the matched work a peer does.

    Args:
      images: images per unit (a parameterization with a batch dimension).
    """
    convs = conv_flops(model, stop_at, height, width)
    fwd = images * sum(c["fwd_flops"] for c in convs)
    last = images * convs[-1]["fwd_flops"]
    if selected:
        executed = 2.0 * fwd - 2.0 * (1.0 - 1.0 / convs[-1]["cout"]) * last
    else:
        executed = 2.0 * fwd - ((1.0 - 1.0 / k) * last if hoisted else 0.0)
    return {
        "fwd": fwd,
        "input_grad": fwd,
        "total": 2.0 * fwd,
        "target_conv_fwd": last,
        "executed": executed,
    }


def count_convs(compiled) -> int:
    """Convolutions in the optimized HLO (XLA ``convolution`` ops or cuDNN conv calls)."""
    try:
        text = compiled.as_text()
    except Exception:
        return -1
    return len(re.findall(r" convolution\(|__cudnn\$conv", text))


def target_grad_hoisted(compiled, model, stop_at: str, k: int) -> bool | None:
    """Whether XLA computed the target conv's input gradient once per block, not per step.

    Per step there are 2 L convs (L forward, L input-gradient) for L convs up to
    ``stop_at``; hoisting leaves ``k (2 L - 1) + 1``. None if the count matches neither
    (e.g. the backend fused or split convs), in which case ``total`` is used.
    """
    n = count_convs(compiled)
    convs = len(conv_flops(model, stop_at, 32))
    if n == k * (2 * convs - 1) + 1:
        return True
    if n == k * 2 * convs:
        return False
    return None


def seen_shape(prog) -> tuple[int, int, int]:
    """(images per unit, H, W) of what the model sees in one step of ``prog``.

    Found by abstract evaluation of the parameterization and the transforms, so the FLOP
    count follows whatever padding or cropping the recipe does.
    """
    recipe = prog.ascent.recipe
    key = jax.random.key(0)
    raw = jax.eval_shape(recipe.param.init, key)
    image = jax.eval_shape(recipe.param.to_image, raw)
    if recipe.transform is not None:
        image = jax.eval_shape(recipe.transform, key, image)
    shape = image.shape
    if len(shape) == 3:
        shape = (1, *shape)
    return int(np.prod(shape[:-3])), int(shape[-3]), int(shape[-2])


def atlas_flops(model, size: int, steps: int) -> dict:
    """FLOPs of a whole-model conv atlas: every filter of every conv layer, ``steps`` each."""
    per_layer = {
        layer: model.num_filters(layer) * steps * step_flops(model, layer, size)["total"]
        for layer in model.conv_layers
    }
    return {
        "per_layer": per_layer,
        "total": sum(per_layer.values()),
        "filters": sum(model.num_filters(la) for la in model.conv_layers),
    }


def xla_cost(compiled) -> dict:
    """``{"flops", "bytes_accessed"}`` from XLA's cost analysis (dict or list of dicts)."""
    try:
        cost = compiled.cost_analysis()
    except Exception as e:  # not every backend implements it
        return {"flops": None, "bytes_accessed": None, "error": str(e).splitlines()[0]}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed")}
