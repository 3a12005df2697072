"""Whole-network cases for benchmarks/conv_forms.py: VGG16 with every conv replaced.

``jaxvis/models/vgg16.py`` builds its convs with ``flax.linen.Conv``, which calls
``lax.conv_general_dilated`` through the ``lax`` name of ``flax.linen.linear``. While
:func:`conv_replaced` is active that name points at a stand-in whose 3x3 stride-1 'SAME'
convs go to a formulation of ``jaxvis/models/winograd.py``; the model's code is untouched.
The patch only matters while a program is traced, so each case is compiled inside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import types

import flax.linen.linear as flax_linear
import jax
import jax.numpy as jnp
import numpy as np

from jaxvis.models import winograd

# Formulation name -> conv(x [N, H, W, Cin], kernel [3, 3, Cin, Cout]) -> [N, H, W, Cout].
FORMS = {
    "lax.conv": lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    ),
    "winograd F(2,3)": functools.partial(winograd.conv3x3_winograd, m=2),
    "winograd F(4,3)": functools.partial(winograd.conv3x3_winograd, m=4),
    "winograd F(2,3) rows": winograd.conv3x3_winograd_rows,
    "im2col": winograd.conv3x3_im2col,
}
STOCK = "stock model"


def _replaces(kernel, window_strides, padding, kw) -> bool:
    """Whether a flax conv call is one the formulations compute (3x3, stride 1, SAME)."""
    plain = all(kw.get(k) in (None, (1, 1)) for k in ("lhs_dilation", "rhs_dilation"))
    return (
        tuple(kernel.shape[:2]) == (3, 3)
        and tuple(window_strides) == (1, 1)
        and padding == "SAME"
        and plain
        and kw.get("feature_group_count", 1) == 1
        and kw.get("dimension_numbers") is not None
    )


@contextlib.contextmanager
def conv_replaced(form):
    """Within the block, flax's 3x3 stride-1 'SAME' NHWC convs run ``form(x, kernel)``.

    Args:
      form: a conv like the values of :data:`FORMS`, or a callable
        ``(x, kernel) -> conv`` choosing per shape.
    """

    def conv(lhs, rhs, window_strides, padding, **kw):
        if _replaces(rhs, window_strides, padding, kw):
            return form(lhs, rhs)
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kw)

    stand_in = types.SimpleNamespace(**vars(jax.lax))
    stand_in.conv_general_dilated = conv
    saved = flax_linear.lax
    flax_linear.lax = stand_in
    try:
        yield
    finally:
        flax_linear.lax = saved


def step_fn(model, layer: str):
    """Truncated forward + input gradient, as the ascent step needs it.

    The objective is a fixed random mix of the layer's channels (pre-ReLU), so every
    formulation computes every output channel (reading one channel would let XLA slice a
    matmul's kernel but not a conv's).
    """
    width = model.num_filters(layer)
    mix = jnp.asarray(np.random.default_rng(0).standard_normal(width), jnp.float32)

    def objective(params, images):
        return (model.apply(params, images, layer + ":pre")[layer + ":pre"] * mix).mean()

    return jax.value_and_grad(objective, argnums=1)


@dataclasses.dataclass
class NetCase:
    """One compiled truncated-VGG16 step: ``variant`` is :data:`STOCK` or a form name."""

    variant: str
    layer: str
    size: int
    batch: int
    compiled: object
    args: tuple
    hlo_convs: int
    compile_s: float

    def call(self) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self.compiled(*self.args))
        return time.perf_counter() - start


def net_case(model, layer: str, size: int, batch: int, variant: str, form=None) -> NetCase:
    """Compiles the step of ``variant``: the stock model, or every conv replaced by
    ``form`` (default ``FORMS[variant]``)."""
    images = jnp.asarray(np.random.default_rng(1).random((batch, size, size, 3), np.float32))
    args = (model.params, images)
    patch = contextlib.nullcontext() if variant == STOCK else conv_replaced(form or FORMS[variant])
    start = time.perf_counter()
    with patch:
        compiled = jax.jit(step_fn(model, layer)).lower(*args).compile()
    wall = time.perf_counter() - start
    hlo_convs = compiled.as_text().count(" convolution(")
    return NetCase(variant, layer, size, batch, compiled, args, hlo_convs, wall)


def net_accuracy(stock: NetCase, case: NetCase) -> dict:
    """Errors of the objective and of the input gradient against the stock model.

    ``grad_rel_l2`` is ||g - g0|| / ||g0||. ``grad_rel_max`` (max |g - g0| / max |g0|) is
    also kept, but through a whole network it is dominated by a few pixels where rounding
    flips which of two near-equal values wins a 2x2 max-pool (or the sign of a ReLU input),
    moving that pixel's whole gradient.
    """
    (v0, g0), (v1, g1) = stock.compiled(*stock.args), case.compiled(*case.args)
    return {
        "objective_rel_err": float(abs(v1 - v0) / abs(v0)),
        "grad_rel_l2": float(jnp.linalg.norm(g1 - g0) / jnp.linalg.norm(g0)),
        "grad_rel_max": float(jnp.abs(g1 - g0).max() / jnp.abs(g0).max()),
    }


def per_shape_form(table: dict):
    """A conv that runs ``FORMS[table[(batch, side, cin, cout)]]``, lax.conv elsewhere."""

    def conv(x, kernel):
        key = (x.shape[0], x.shape[1], x.shape[3], kernel.shape[3])
        return FORMS[table.get(key, "lax.conv")](x, kernel)

    return conv
