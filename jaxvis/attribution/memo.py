"""A small bounded memo for what attribution derives from a model's shapes.

``jax.eval_shape`` of a whole network costs tens of milliseconds; a caller that asks for
one map at a time (the keras-vis way) would pay it several times per call. Results are
keyed on what they depend on: the model's ``apply``, its layer names, the shapes and
dtypes of its params, and the caller's own key. The params themselves are never held.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable

import jax
import numpy as np

_SIZE = 64
_memo: collections.OrderedDict = collections.OrderedDict()


def model_key(model) -> tuple:
    """What a model's activation shapes depend on (its weights' values excluded)."""
    leaves, treedef = jax.tree_util.tree_flatten(model.params)
    shapes = tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in leaves)
    return (model.apply, tuple(info.name for info in model.layers), treedef, shapes)


def memo(key: Hashable, compute: Callable[[], object]):
    """``compute()``, remembered under ``key`` (the least recently used forgotten)."""
    if key in _memo:
        _memo.move_to_end(key)
        return _memo[key]
    value = _memo[key] = compute()
    while len(_memo) > _SIZE:
        _memo.popitem(last=False)
    return value
