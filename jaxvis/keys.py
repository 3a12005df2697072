"""The random key of each unit, from (seed, layer, unit) alone (house style, habit 6)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxvis._types import PRNGKey


def unit_key(seed: int, layer: str, unit: int) -> PRNGKey:
    """The random key of one unit, from (seed, layer, unit) alone.

    It does not depend on chunk size, position in the chunk or device count, so a filter's
    picture is reproducible across runs and machines (up to float tolerance).
    """
    return unit_keys(seed, layer, [unit])[0]


def unit_keys(seed: int, layer: str, units: Sequence[int]) -> PRNGKey:
    """Keys for several units [N]; unit u's key is the same in any list (see unit_key)."""
    layer_id = zlib.crc32(layer.encode()) & 0x7FFFFFFF  # stable, unlike Python's hash()
    base = jax.random.fold_in(jax.random.key(seed), layer_id)
    return jax.vmap(lambda u: jax.random.fold_in(base, u))(jnp.asarray(units, jnp.uint32))
