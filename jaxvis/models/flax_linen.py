"""The ``flax.linen`` half of :func:`jaxvis.models.flax_model.from_flax`.

A linen module is stateless: its weights are the ``variables`` dict, so they are the
``FeatureModel``'s params as they are. One forward pass is ``module.apply`` with two hooks:

* ``capture_intermediates=<filter>`` stores the ``__call__`` output of the requested
  submodules in the ``intermediates`` collection; the rest is never stored, so under
  ``jit`` XLA drops every computation that no requested output depends on;
* ``nn.intercept_methods`` sees each submodule's ``__call__`` from the outside: it adds a
  tap's delta to the output (before the filter stores it and before the parent uses it)
  and reports the call to a recorder during layer discovery.

One channel (``select``, from ``Taps.select``): the interceptor runs a selected
``nn.Conv`` (:func:`sliceable`) a second time as a clone with ``features=1`` on its own
kernel and bias sliced to the traced channel, so every option of the conv (strides,
padding modes, dilations, dtype, precision) is flax's own, and sows that ``[N, h, w, 1]``
as the layer's output. The full output still flows on to the parent, but nothing that is
returned depends on it, so under ``jit`` XLA drops the full conv with the rest.

Submodules are keyed by their path joined with ``/`` (``"backbone/block2/conv"``); the
top-level module is ``""``. A ``super().__call__`` inside ``__call__`` is part of the same
call: only the outermost ``__call__`` of a module counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn

from jaxvis._types import Array, Params
from jaxvis.models import taps as _taps

# The flax.linen layer classes, by jaxvis LayerInfo.kind (flax/linen/linear.py).
_KINDS = (
    ("conv", (nn.Conv, nn.ConvLocal, nn.ConvTranspose)),
    ("dense", (nn.Dense, nn.DenseGeneral)),
)

Run = Callable[..., dict[str, Array]]


def is_module(obj) -> bool:
    return isinstance(obj, nn.Module)


def key(path: tuple) -> str:
    """``("backbone", "conv")`` -> ``"backbone/conv"``; the top level is ``""``."""
    return "/".join(str(part) for part in path)


def kind(module_type: type) -> str:
    """The jaxvis layer kind of a linen module class: conv, dense or other."""
    for name, classes in _KINDS:
        if issubclass(module_type, classes):
            return name
    return "other"


def in_channels(module: nn.Module) -> int | None:
    """Input channels an ``nn.Conv`` expects (from its kernel), else None."""
    if not isinstance(module, nn.Conv):
        return None
    kernel = module.variables.get("params", {}).get("kernel")
    return None if kernel is None else kernel.shape[-2] * module.feature_group_count


def sliceable(module: nn.Module) -> bool:
    """Whether ``module`` can compute one output channel alone (``Taps.select``): an
    ``nn.Conv`` that keeps flax's ``__call__``, with ``feature_group_count == 1`` and no
    ``mask``. ConvLocal and ConvTranspose are other classes."""
    return (
        isinstance(module, nn.Conv)
        and type(module).__call__ is nn.Conv.__call__
        and module.feature_group_count == 1
        and module.mask is None
    )


def one_channel(module: nn.Conv, args: tuple, kwargs: Mapping, channel: Array) -> Array:
    """Output channel ``channel`` of the bound conv ``module`` on ``args``: a clone with
    one feature, applied to the module's own kernel and bias sliced to that channel."""
    params = module.variables["params"]
    kernel, bias = _taps.one_channel(params["kernel"], params.get("bias"), channel)
    sliced = {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
    return module.clone(parent=None, features=1).apply({"params": sliced}, *args, **kwargs)


def make_run(module: nn.Module, method_kwargs: Mapping) -> Run:
    """The forward pass of ``module`` as ``run(variables, x, wanted, deltas, record,
    select)``.

    Args (of ``run``):
      variables: the linen variables dict.
      x: the preprocessed input [N, H, W, C].
      wanted: keys of the submodules whose outputs to return, or None for all.
      deltas: ``{key: array}`` added to those submodules' outputs.
      record: None, or an object with ``enter(key, module, args)`` and
        ``leave(key, module)``, called around every outermost ``__call__``.
      select: ``{key: int32 channel}``: those :func:`sliceable` convs' outputs are
        their one channel [N, h, w, 1] (:func:`one_channel`).

    Returns:
      ``{key: output}`` for the wanted submodules that ran, each its last call's output.
    """
    kwargs = dict(method_kwargs)

    def run(variables: Params, x: Array, wanted, deltas, record, select=None) -> dict:
        active: set[str] = set()  # modules inside their own __call__ (super() chains)
        select = select or {}
        inside: list[bool] = []  # a one-channel clone is running: pass its calls through

        def intercept(next_fun, args, call_kwargs, context):
            if context.method_name != "__call__" or inside:
                return next_fun(*args, **call_kwargs)
            name = key(context.module.path)
            if name in active:
                return next_fun(*args, **call_kwargs)
            if record is not None:
                record.enter(name, context.module, args)
            active.add(name)
            try:
                y = next_fun(*args, **call_kwargs)
            finally:
                active.discard(name)
            if name in deltas:
                y = y + deltas[name].astype(y.dtype)
            if name in select:  # sown as its output; the full y flows on, unused
                inside.append(True)
                try:
                    one = one_channel(context.module, args, call_kwargs, select[name])
                finally:
                    inside.pop()
                context.module.sow("intermediates", "__call__", one)
            if record is not None:
                record.leave(name, context.module)
            return y

        def keep(mod: nn.Module, method_name: str) -> bool:
            name = key(mod.path)
            return (
                method_name == "__call__"
                and name not in active
                and name not in select
                and (wanted is None or name in wanted)
            )

        with nn.intercept_methods(intercept):
            _, state = module.apply(
                variables,
                x,
                capture_intermediates=keep,
                mutable=["intermediates"],
                **kwargs,
            )
        return dict(_calls(state.get("intermediates", {}), ()))

    return run


def _calls(tree: Mapping, path: tuple):
    """``(key, last __call__ output)`` for every module in an ``intermediates`` tree."""
    for name, value in tree.items():
        if name == "__call__":
            yield key(path), value[-1]
        elif isinstance(value, Mapping):
            yield from _calls(value, (*path, name))
