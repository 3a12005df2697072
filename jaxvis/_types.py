"""Shared type aliases, so that signatures read the same across modules."""

from __future__ import annotations

from typing import Any

import jax

Array = jax.Array
#: A pytree of weights: ``{layer_name: {"kernel": Array, "bias": Array}}``.
Params = Any
#: float32 [N, H, W, 3], RGB in [0, 1] (or [H, W, 3] for one unit).
Image = jax.Array
PRNGKey = jax.Array
