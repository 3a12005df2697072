"""Any Flax model, linen or NNX, as a :class:`FeatureModel`: :func:`from_flax`.

Layer names are module paths joined with ``/``: ``"Conv_0"``, ``"backbone/block2/conv"``
for linen (submodule names), ``"block/conv"``, ``"layers/0"`` for NNX (attribute paths).
The top-level module's own output is the layer :data:`OUTPUT` (``"output"``).

Which layers: every submodule whose ``__call__`` output is a float ``[N, H, W, C]`` map or
a ``[N, C]`` vector, in the order those calls finish (a block after the convs inside it),
found once by ``jax.eval_shape`` of the whole model. A module called more than once per
forward pass (shared weights) has no single output and is left out, as is the top level
when a submodule is itself named ``output``.

Pre-activations: Flax captures module outputs only. An inline ``nn.relu(x)`` between
modules is no module, so a conv layer ``Conv_0`` is the conv's *linear* output, before any
activation. No ``":pre"`` name is added (``LayerInfo.pre`` is False): the name itself
already is the linear response that the ``lucid`` preset maximizes. An activation that
the model wraps in a module of its own (a ``ReLU(nn.Module)``) is a layer of its own; a
plain function, even inside ``nn.Sequential``, is not.

Truncation: ``apply(params, images, stop_at)`` returns the layers up to ``stop_at`` and
nothing else, from a forward pass that is jitted (eager calls included), so XLA drops
every computation past it, the model's own output included; ``tests/test_flax_model.py``
pins this against hand-truncated models with XLA's cost analysis.

Taps (``jaxvis/models/taps.py``): ``deltas`` are honoured for linen and NNX, added to the
named module's output before the rest of the model uses it. ``guided_relu`` is not: the
ReLUs of a Flax model are inline function calls that no hook can reach. ``select`` (one
output channel of a conv layer, ``[N, h, w, 1]``) is honoured for a plain ``nn.Conv`` /
``nnx.Conv`` with ``feature_group_count == 1`` and no mask (the backends' ``sliceable``),
the other conv layers are listed in ``FeatureModel.unsliceable`` and computed whole
(``engine.selects``).

Backends: ``jaxvis/models/flax_linen.py`` and ``jaxvis/models/flax_nnx.py``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxvis._types import Array, Params
from jaxvis.errors import JaxvisError, choices
from jaxvis.models import conventions
from jaxvis.models import flax_linen as _linen
from jaxvis.models import flax_nnx as _nnx
from jaxvis.models.feature_model import PRE, FeatureModel, LayerInfo
from jaxvis.models.taps import DELTAS, SELECT, Taps
from jaxvis.models.weights_info import WeightsInfo

OUTPUT = "output"  # The layer name of the top-level module's own output.
# Image sides tried, in order, to trace the model once for its layers; the first that the
# model accepts wins. A model with a dense head on a flattened map takes one size only.
DISCOVERY_SIZES = (224, 32, 64, 128, 256, 299, 28)
_BATCH = 2  # a batch axis of 2 tells [N, C] outputs apart from unbatched arrays


class _Backend(NamedTuple):
    params: Params
    run: Callable[..., dict[str, Array]]  # (params, x, wanted, deltas, record, select)
    kind: Callable[[type], str]
    in_channels: Callable[[Any], int | None]
    sliceable: Callable[[Any], bool]  # can the module compute one channel (Taps.select)?


class _Found(NamedTuple):
    key: str  # the backend's key: the path joined with "/", "" for the top level
    info: LayerInfo
    rank: int  # 4 for a [N, H, W, C] map, 2 for a [N, C] vector
    dtype: str
    sliceable: bool  # the module can compute one output channel alone (Taps.select)


def from_flax(
    module,
    variables: Mapping | None = None,
    *,
    preprocess: str | conventions.Preprocess | None = None,
    layers: Sequence[str] | None = None,
    name: str | None = None,
    method_kwargs: Mapping[str, Any] | None = None,
) -> FeatureModel:
    """A :class:`FeatureModel` that runs a Flax model (see the module docstring for names).

    Args:
      module: a ``flax.linen.Module`` or a ``flax.nnx.Module`` (in eval mode: its
        BatchNorm and Dropout settings are used as they are).
      variables: the linen variables (``{"params": ..., "batch_stats": ...}``); None for
        NNX, whose state lives in the module.
      preprocess: the model's input convention (``jaxvis/models/conventions.py``):
        ``"caffe"``, ``"torch"``, ``"tf"``, None (the model takes [0, 1] RGB) or a
        callable; applied inside ``apply`` to the float32 [N, H, W, 3] RGB images.
      layers: the layer names to offer (each must be one the model produces); None for
        all. The order stays the model's.
      name: the model's name in atlases; default the module's class name.
      method_kwargs: keyword arguments for every call of the module, e.g.
        ``{"train": False}``.

    Returns:
      A FeatureModel whose params are the variables (linen) or the split state (NNX);
      its ``logits`` is ``"output"`` when the model's output is a [N, C] vector, and its
      ``dtype`` is that of the first layer's output.
    """
    backend = _backend(module, variables, dict(method_kwargs or {}))
    name = name or type(module).__name__
    fn, description = conventions.resolve(preprocess)
    found = _select(_discover(backend, fn, name), layers, name)
    keys = {f.info.name: f.key for f in found}
    sliced = {f.info.name for f in found if f.sliceable}
    convs = [f.info.name for f in found if f.info.kind == "conv"]
    unsliceable = frozenset(name for name in convs if name not in sliced)
    top = [f for f in found if f.key == ""]
    logits = OUTPUT if top and top[0].rank == 2 else None
    info = WeightsInfo(
        source="flax-model",
        sha256=weights_sha256(backend.params),
        preprocessing=description,
        has_head=logits is not None,
        trained=True,
        framework=f"flax {flax.__version__}",
    )
    return FeatureModel(
        name=name,
        apply=_make_apply(backend.run, fn, keys, name, sliced),
        params=backend.params,
        layers=tuple(f.info for f in found),
        info=info,
        dtype=found[0].dtype,
        logits=logits,
        taps=frozenset({DELTAS, SELECT} if len(unsliceable) < len(convs) else {DELTAS}),
        unsliceable=unsliceable,
    )


def _backend(module, variables, method_kwargs: dict) -> _Backend:
    """The linen or NNX backend for ``module``, or a one-line error."""
    if _linen.is_module(module):
        if not isinstance(variables, Mapping) or not variables:
            raise JaxvisError(
                f"a flax.linen module needs its variables, e.g. module.init(key, x) or "
                f"{{'params': ...}}; got {type(variables).__name__}"
            )
        params = {k: v for k, v in variables.items() if k != "intermediates"}
        params = jax.tree_util.tree_map(jnp.asarray, params)
        run = _linen.make_run(module, method_kwargs)
        return _Backend(params, run, _linen.kind, _linen.in_channels, _linen.sliceable)
    if _nnx.is_module(module):
        if variables is not None:
            raise JaxvisError(
                "an nnx.Module holds its own state; pass variables=None (got "
                f"{type(variables).__name__})"
            )
        _nnx.check_capture()
        graphdef, state = _nnx.split(module)
        run = _nnx.make_run(graphdef, method_kwargs)
        return _Backend(state, run, _nnx.kind, _nnx.in_channels, _nnx.sliceable)
    raise JaxvisError(
        "from_flax needs a flax.linen.Module (with its variables) or a flax.nnx.Module; "
        f"got {type(module).__module__}.{type(module).__qualname__}"
    )


class _Recorder:
    """What one discovery trace saw: outermost ``__call__`` s in the order they finish.

    It also checks the input channels of the first convolution that runs, so a model
    for grayscale or RGBA input fails with a one-line error instead of a shape error.
    """

    def __init__(self, backend: _Backend, model: str):
        self.types: dict[str, type] = {}  # key -> module class, in order of finishing
        self.sliceable: dict[str, bool] = {}  # key -> backend.sliceable(module)
        self.counts: collections.Counter = collections.Counter()
        self._in_channels = backend.in_channels
        self._sliceable = backend.sliceable
        self._model = model
        self._checked = False

    def enter(self, key: str, module, args: tuple) -> None:
        expected = None if self._checked else self._in_channels(module)
        shape = getattr(args[0], "shape", ()) if args else ()
        if expected is None or not shape:
            return
        self._checked = True
        got = shape[-1]
        if got != expected:
            raise JaxvisError(
                f"{self._model}'s first conv {key!r} expects {expected} input channels "
                f"but gets {got}: jaxvis images are RGB; pass a preprocess that maps "
                f"them to {expected} channels"
            )

    def leave(self, key: str, module) -> None:
        self.counts[key] += 1
        self.types.setdefault(key, type(module))
        self.sliceable.setdefault(key, self._sliceable(module))


def _discover(backend: _Backend, preprocess, model: str) -> list[_Found]:
    """Every map or vector layer, by ``jax.eval_shape`` at the first size that traces."""
    failures = []
    for size in DISCOVERY_SIZES:
        record = _Recorder(backend, model)
        image = jax.ShapeDtypeStruct((_BATCH, size, size, 3), jnp.float32)
        try:
            shapes = jax.eval_shape(
                lambda p, x, r=record: backend.run(p, preprocess(x), None, {}, r),
                backend.params,
                image,
            )
        except JaxvisError:
            raise
        except Exception as err:  # the model's own error, quoted in the message
            failures.append(f"{size}px: {type(err).__name__}: {_first_line(err)}")
            continue
        return _layers(record, shapes, backend.kind)
    raise JaxvisError(
        f"could not trace {model} on RGB images of any size in {DISCOVERY_SIZES}; "
        f"first error: {failures[0]}"
    )


def _layers(record: _Recorder, shapes: Mapping, kind: Callable) -> list[_Found]:
    """The layers, in call order, from a discovery trace."""
    names = {k: k or OUTPUT for k in record.types}
    if "" in names and OUTPUT in record.types:
        del names[""]  # a submodule named "output" shadows the top level
    found = []
    for key, module_type in record.types.items():
        out = shapes.get(key)
        if key not in names or record.counts[key] != 1 or not _is_layer(out):
            continue
        info = LayerInfo(names[key], kind(module_type), int(out.shape[-1]))
        dtype, sliceable = jnp.dtype(out.dtype).name, record.sliceable[key]
        found.append(_Found(key, info, len(out.shape), dtype, sliceable))
    return found


def _is_layer(out) -> bool:
    """True for a float [N, H, W, C] map or [N, C] vector with C >= 1."""
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) not in (2, 4) or shape[0] != _BATCH or shape[-1] < 1:
        return False
    return jnp.issubdtype(out.dtype, jnp.floating)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _select(found: list[_Found], layers: Sequence[str] | None, model: str) -> list[_Found]:
    """The discovered layers restricted to ``layers`` (in model order), or an error."""
    valid = [f.info.name for f in found]
    if not found:
        raise JaxvisError(
            f"{model} has no submodule whose output is a [N, H, W, C] map or [N, C] vector"
        )
    if layers is None:
        return found
    wanted = [layers] if isinstance(layers, str) else list(layers)
    for name in wanted:
        if name not in valid:
            raise JaxvisError(
                f"layers= names {name!r}, which {model} does not produce; valid layers: "
                f"{choices(valid)}"
            )
    return [f for f in found if f.info.name in wanted]


def _make_apply(run: Callable, preprocess, keys: Mapping[str, str], model: str, sliced):
    """The model's one pure ``apply(params, images, stop_at, taps=None)``.

    The forward pass is jitted on its own (and inlined into any jit around it), so that
    an eager call, too, computes nothing past ``stop_at``: XLA drops what no returned
    activation needs.
    """
    order = list(keys)

    @functools.partial(jax.jit, static_argnames="names")
    def forward(params, images, deltas, select, names: tuple[str, ...]) -> dict[str, Array]:
        wanted = frozenset(keys[n] for n in names)
        acts = run(params, preprocess(images), wanted, deltas, None, select)
        return {n: acts[keys[n]].astype(jnp.float32) for n in names}

    def apply(
        params: Params, images: Array, stop_at: str, taps: Taps | None = None
    ) -> dict[str, Array]:
        """Float32 activations of every layer up to ``stop_at``; nothing past it.

        Args:
          params: the variables (linen) or the split state (NNX).
          images: float [N, H, W, 3] RGB in [0, 1].
          stop_at: a layer name (a ``":pre"`` suffix is read as the layer itself).
          taps: ``taps.deltas`` are added to the named layers' outputs; a conv layer
            in ``taps.select`` computes only that channel, [N, h, w, 1].

        Returns:
          ``{name: [N, h, w, C] or [N, C]}`` float32, channels-last.
        """
        stop = stop_at.removesuffix(PRE)
        if stop not in keys:
            raise JaxvisError(
                f"unknown layer {stop_at!r} for {model}; valid layers: {choices(order)}"
            )
        _check_images(images)
        names = tuple(order[: order.index(stop) + 1])
        deltas = _deltas(taps, keys, model)
        acts = forward(params, images, deltas, _selected(taps, keys, model, sliced), names)
        return {n: acts[n] for n in names}  # in model order; jit sorts dict keys

    return apply


def _deltas(taps: Taps | None, keys: Mapping[str, str], model: str) -> dict[str, Array]:
    """``taps.deltas`` keyed by the backend's keys, or an error for an unknown name."""
    if taps is None:
        return {}
    for name in taps.deltas:
        if name not in keys:
            raise JaxvisError(
                f"a delta for {name!r}, which is no layer of {model}; valid layers: {choices(keys)}"
            )
    return {keys[name]: delta for name, delta in taps.deltas.items()}


def _selected(taps: Taps | None, keys: Mapping[str, str], model: str, sliced) -> dict:
    """``taps.select`` keyed by the backend's keys, or a one-line error for a layer that
    cannot compute one channel alone or that a delta also names."""
    if taps is None:
        return {}
    for name in taps.select:
        if name not in sliced:
            raise JaxvisError(
                f"Taps.select names {name!r}, which cannot compute one channel alone: only "
                f"an nn.Conv or nnx.Conv without feature groups or mask can; in {model}: "
                f"{choices(sorted(sliced)) or 'none'}"
            )
        if name in taps.deltas:
            raise JaxvisError(f"Taps.select and Taps.deltas both name {name!r} of {model}")
    return {keys[name]: jnp.asarray(c, jnp.int32) for name, c in taps.select.items()}


def _check_images(images) -> None:
    """A one-line error unless ``images`` is a float [N, H, W, 3] array."""
    dtype = getattr(images, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise JaxvisError(f"images must be float [N, H, W, 3] RGB in [0, 1]; got dtype {dtype}")
    if len(images.shape) != 4 or images.shape[-1] != 3:
        raise JaxvisError(
            f"images must be float [N, H, W, 3] RGB in [0, 1]; got shape {tuple(images.shape)}"
        )


def weights_sha256(params: Params) -> str:
    """sha256 of every array's path, dtype, shape and bytes, in sorted path order."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    digest = hashlib.sha256()
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        if jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.ascontiguousarray(np.asarray(leaf))
        header = f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}\n"
        digest.update(header.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
