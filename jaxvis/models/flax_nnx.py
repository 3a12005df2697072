"""The ``flax.nnx`` half of :func:`jaxvis.models.flax_model.from_flax`.

An NNX module holds its own state, so it is split once into ``(graphdef, state)``: the
state is the ``FeatureModel``'s params, and every forward pass merges a fresh module from
the two inside the traced function (nothing mutated there leaks out). Outputs come from
``nnx.capture(..., method_outputs=nnx.Intermediate)``, which sows the output of every
module's ``__call__`` (``flax/nnx/module.py``); under ``jit`` XLA drops everything that
no returned output depends on.

NNX has no method interceptors, so, for the duration of one forward pass, the ``__call__``
of each module class in the tree is wrapped: the wrapper adds a tap's delta to the output
of the module at a given path and reports calls to a recorder. ``nnx.capture`` wraps
those methods again, outside ours, so what it sows already includes the delta. Like
``nnx.capture`` itself, this patches classes for the duration of the call: do not trace
the same module classes from two threads at once.

One channel (``select``, from ``Taps.select``): the wrapper of a selected ``nnx.Conv``
(:func:`sliceable`) also runs ``nnx.Conv.__call__`` on a stand-in whose kernel and bias are
the conv's own, sliced to the traced channel (every other attribute is the conv's:
strides, padding, dilations, dtype, precision), and that ``[N, h, w, 1]`` replaces what
``nnx.capture`` sowed for it. The full output still flows on, but nothing returned depends
on it, so under ``jit`` XLA drops the full conv.

Submodules are keyed by their attribute path joined with ``/`` (``"block/conv"``,
``"layers/0"``); the top-level module is ``""``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping

import flax
from flax import nnx

from jaxvis._types import Array, Params
from jaxvis.errors import JaxvisError
from jaxvis.models import taps as _taps

# The flax.nnx layer classes, by jaxvis LayerInfo.kind (flax/nnx/nn/linear.py).
_KINDS = (
    ("conv", (nnx.Conv, nnx.ConvTranspose)),
    ("dense", (nnx.Linear, nnx.LinearGeneral)),
)
_CONV_CALL = nnx.Conv.__call__  # resolved at import, before any class is patched
TESTED_FLAX = "0.12.8"  # the first flax this adapter was tested with (nnx.capture)

Run = Callable[..., dict[str, Array]]


def is_module(obj) -> bool:
    return isinstance(obj, nnx.Module)


def key(path: tuple) -> str:
    """``("layers", 0)`` -> ``"layers/0"``; the top level is ``""``."""
    return "/".join(str(part) for part in path)


def kind(module_type: type) -> str:
    """The jaxvis layer kind of an NNX module class: conv, dense or other."""
    for name, classes in _KINDS:
        if issubclass(module_type, classes):
            return name
    return "other"


def in_channels(module: nnx.Module) -> int | None:
    """Input channels an ``nnx.Conv`` expects, else None."""
    return module.in_features if isinstance(module, nnx.Conv) else None


def sliceable(module: nnx.Module) -> bool:
    """Whether ``module`` can compute one output channel alone (``Taps.select``): an
    ``nnx.Conv`` that runs flax's own ``__call__`` (seen through the wrappers of a forward
    pass in progress), with ``feature_group_count == 1`` and no ``mask``."""
    if not isinstance(module, nnx.Conv):
        return False
    call = inspect.unwrap(_own_call(type(module)))
    return call is _CONV_CALL and module.feature_group_count == 1 and module.mask is None


class _OneChannel:
    """An ``nnx.Conv`` seen with its kernel and bias sliced to one output channel."""

    def __init__(self, conv: nnx.Conv, channel: Array):
        bias = None if conv.bias is None else conv.bias[...]
        self.kernel, self.bias = _taps.one_channel(conv.kernel[...], bias, channel)
        self._conv = conv

    def __getattr__(self, name: str):
        return getattr(self._conv, name)


def one_channel(method, conv: nnx.Conv, args: tuple, kwargs: Mapping, channel: Array) -> Array:
    """Output channel ``channel`` of ``conv`` on ``args``, [N, h, w, 1]: ``method`` (its
    original ``nnx.Conv.__call__``) run on :class:`_OneChannel`."""
    return method(_OneChannel(conv, channel), *args, **kwargs)


def check_capture() -> None:
    """A one-line error if this flax has no ``nnx.capture(..., method_outputs=)``."""
    capture = getattr(nnx, "capture", None)
    if capture is None or "method_outputs" not in inspect.signature(capture).parameters:
        raise JaxvisError(
            f"from_flax on an nnx.Module needs nnx.capture, which flax "
            f"{flax.__version__} lacks; install flax>={TESTED_FLAX}"
        )


def split(module: nnx.Module):
    """``(graphdef, state)``: the static structure and the arrays (the params)."""
    return nnx.split(module)


def make_run(graphdef, method_kwargs: Mapping) -> Run:
    """The forward pass as ``run(state, x, wanted, deltas, record, select)``, as in
    ``jaxvis/models/flax_linen.py`` (``make_run``), with the NNX state for variables."""
    kwargs = dict(method_kwargs)

    def run(state: Params, x: Array, wanted, deltas, record, select=None) -> dict:
        module = nnx.merge(graphdef, state)
        forward = nnx.capture(module, nnx.Intermediate, method_outputs=nnx.Intermediate)
        picked: dict[str, Array] = {}  # the one-channel outputs of selected convs
        with _hooked(module, deltas, record, select or {}, picked):
            _, sown = forward(x, **kwargs)
        out = dict(_calls(sown, ())) | picked
        return out if wanted is None else {k: v for k, v in out.items() if k in wanted}

    return run


def _calls(tree: Mapping, path: tuple):
    """``(key, last __call__ output)`` for every module in a captured state."""
    for name, value in tree.items():
        if name == "__call__":
            yield key(path), value.get_value()[-1]
        elif isinstance(value, Mapping):
            yield from _calls(value, (*path, name))


@contextlib.contextmanager
def _hooked(module: nnx.Module, deltas: Mapping[str, Array], record, select, picked):
    """Wraps ``__call__`` of every module class in ``module``'s tree while in the block."""
    paths = {id(m): key(p) for p, m in nnx.iter_modules(module)}
    classes = {type(m) for _, m in nnx.iter_modules(module)}
    calls = {cls: _own_call(cls) for cls in classes}  # resolved before any is patched
    saved = {cls: cls.__dict__.get("__call__") for cls in calls if calls[cls] is not None}
    active: set[int] = set()
    for cls in saved:
        cls.__call__ = _wrapper(calls[cls], paths, active, (deltas, select, picked), record)
    try:
        yield
    finally:
        for cls, method in saved.items():
            if method is None:
                del cls.__call__
            else:
                cls.__call__ = method


def _own_call(cls: type):
    """The ``__call__`` that instances of ``cls`` run, or None if they are not callable."""
    for base in cls.__mro__[:-1]:  # object defines no __call__
        if "__call__" in base.__dict__:
            return base.__dict__["__call__"]
    return None


def _wrapper(method, paths: Mapping[int, str], active: set[int], taps: tuple, record):
    """``method`` with the delta, the one channel and the recorder applied on a module's
    outermost call; ``taps`` is ``(deltas, select, picked)``."""
    deltas, select, picked = taps

    @functools.wraps(method)  # inspect.unwrap finds method (sliceable)
    def __call__(self, *args, **kwargs):
        ident = id(self)
        if ident not in paths or ident in active:
            return method(self, *args, **kwargs)
        name = paths[ident]
        if record is not None:
            record.enter(name, self, args)
        active.add(ident)
        try:
            y = method(self, *args, **kwargs)
        finally:
            active.discard(ident)
        if name in deltas:
            y = y + deltas[name].astype(y.dtype)
        if name in select:
            picked[name] = one_channel(method, self, args, kwargs, select[name])
        if record is not None:
            record.leave(name, self)
        return y

    return __call__
