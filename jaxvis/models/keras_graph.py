"""A Keras 3 layer graph, run node by node inside a JAX trace: the activation dict.

Keras can only return a layer's output from a model whose graph reaches it
(``keras.Model(inputs, layer.output)``), and it refuses a layer inside a nested model
("Graph disconnected"). So :class:`Walk` runs the graph itself, in the order Keras's own
``Function._run_through_graph`` uses (``keras/src/ops/function.py``): deepest nodes
first, each node once its inputs exist. It records every named output, recurses into
nested Functional and Sequential models (their layers are named ``outer/inner``), and
raises :class:`Stopped` as soon as the target is computed, so nothing deeper is traced.

Each layer is called as Keras calls it in ``Functional.call`` with ``training=False``:
BatchNormalization reads its moving statistics, Dropout and the random augmentation
layers are the identity, and a mixed-precision layer casts and computes as it does in
Keras. Variables are read from the ``keras.StatelessScope`` the caller opens.

One channel (``taps.select``): a plain ``keras.layers.Conv2D`` (:func:`sliceable`) named
there computes only that output channel, with its kernel and bias sliced by the traced
index and its own strides, padding, dilation, data_format, compute dtype and fused
activation, so both ``name`` and ``name:pre`` hold ``[N, h, w, 1]``. Any other layer named
there is a one-line error.

Layouts: a rank-4 output is ``[N, C, H, W]`` where the layer's ``data_format`` is
``channels_first``; a layer without a ``data_format`` (BatchNormalization, Activation,
Add) keeps the layout of its first input. Recorded activations are float32 and
channels-last; deltas are channels-last too and are transposed to the layer's layout.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools

import jax.numpy as jnp

from jaxvis._types import Array
from jaxvis.errors import JaxvisError
from jaxvis.models import taps as _taps
from jaxvis.models.feature_model import PRE

FIRST, LAST = "channels_first", "channels_last"
_TO_LAST, _TO_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)

# Class names in keras.layers (keras 3.15.1), looked up lazily so that jaxvis core never
# imports keras. Layers that apply ``self.activation`` last, in their ``call``:
_FUSED = (
    "Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose DepthwiseConv1D "
    "DepthwiseConv2D SeparableConv1D SeparableConv2D Dense EinsumDense"
)
_POOLINGS = ("Max", "Average", "GlobalMax", "GlobalAverage", "AdaptiveMax", "AdaptiveAverage")
_KINDS = {
    "conv": _FUSED.removesuffix(" Dense EinsumDense"),
    "pool": " ".join(f"{kind}Pooling{d}D" for kind in _POOLINGS for d in (1, 2, 3)),
    "dense": "Dense",
    "flatten": "Flatten",
}
# Rectifiers (names lower-cased, underscores dropped). guided_relu can replace only a plain
# ReLU; any other rectifier keeps a model from offering it.
_RECTIFIERS = frozenset({"relu", "relu6", "leakyrelu", "prelu", "elu", "selu", "celu"})


class Stopped(Exception):
    """Raised by :class:`Walk` once its ``stop_at`` is computed."""


@dataclasses.dataclass(frozen=True)
class Seen:
    """One named output met by a walk.

    Attributes:
      name: ``outer/inner`` name, ``:pre`` for a fused layer's linear part.
      op: the Keras layer or operation.
      shape: its raw output shape, or None where it has several outputs.
      layout: ``channels_first`` or ``channels_last`` (meaningful for rank 4).
    """

    name: str
    op: object
    shape: tuple | None
    layout: str


@functools.cache
def _classes(names: str) -> tuple[type, ...]:
    import keras

    return tuple(getattr(keras.layers, n) for n in names.split() if hasattr(keras.layers, n))


def kind(op) -> str:
    """``conv``, ``pool``, ``dense``, ``flatten`` or ``other`` for a Keras layer."""
    for name, classes in _KINDS.items():
        if isinstance(op, _classes(classes)):
            return name
    return "other"


def graph_of(op):
    """The Functional graph inside ``op`` (a Functional or built Sequential model that
    keeps Keras's own ``call``), or None: a plain layer, a subclassed model, or a
    Sequential that was never built."""
    import keras
    from keras.src.models.functional import Functional

    if isinstance(op, keras.Sequential):
        return getattr(op, "_functional", None) or None
    if isinstance(op, Functional) and type(op).call is Functional.call:
        return op
    return None


def fused_activation(op):
    """The non-linear ``activation`` a Conv/Dense-like layer applies last, or None."""
    import keras

    act = getattr(op, "activation", None) if isinstance(op, _classes(_FUSED)) else None
    return None if act is None or act is keras.activations.linear else act


@contextlib.contextmanager
def _linear(op):
    """``op`` with its activation swapped for ``linear`` (restored on exit)."""
    import keras

    act = op.activation
    op.activation = keras.activations.linear
    try:
        yield
    finally:
        op.activation = act


def sliceable(op) -> bool:
    """Whether ``op`` can compute one output channel alone (``taps.select``): a
    ``keras.layers.Conv2D`` (or a subclass that keeps its ``call`` and ``convolution_op``)
    with ``groups=1``, not quantized. DepthwiseConv2D, SeparableConv2D and
    Conv2DTranspose are other classes, so they are not."""
    import keras

    try:  # a private module: where a Keras release moves it, no layer slices (none is wrong)
        from keras.src.layers.convolutional.base_conv import BaseConv
    except ImportError:
        return False
    conv = keras.layers.Conv2D
    return (
        isinstance(op, conv)
        and type(op).call is BaseConv.call
        and type(op).convolution_op is BaseConv.convolution_op
        and getattr(op, "groups", 1) == 1
        and getattr(op, "quantization_mode", None) is None
    )


def one_channel_conv(op, x: Array, channel: Array) -> Array:
    """Output channel ``channel`` of a :func:`sliceable` conv's linear part, in its own
    layout ([N, h, w, 1], or [N, 1, h, w] for channels_first): what ``BaseConv.call``
    computes before the activation, with the kernel (always (kh, kw, in, out) in Keras)
    and bias sliced. Variables are read as ``op`` reads them, from the StatelessScope the
    caller opened, and cast to the layer's compute dtype as Keras's autocast does."""
    import keras

    dtype = op.compute_dtype
    kernel = keras.ops.convert_to_tensor(op.kernel, dtype=dtype)  # LoRA included
    bias = keras.ops.convert_to_tensor(op.bias, dtype=dtype) if op.use_bias else None
    kernel, bias = _taps.one_channel(kernel, bias, channel)
    y = op.convolution_op(keras.ops.cast(x, dtype), kernel)
    if bias is not None:
        y = y + bias.reshape((1, 1, 1, 1))  # one channel: the same in either layout
    return y


def _act_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__).lower().replace("_", "")


def plain_relu(op) -> bool:
    """Whether ``op`` is a ReLU that :func:`jaxvis.models.taps.relu` can stand in for:
    ``keras.layers.ReLU()`` with default arguments, ``Activation("relu")`` or
    ``keras.ops.relu``."""
    import keras
    from keras.src.ops.nn import Relu

    if isinstance(op, keras.layers.ReLU):
        return op.max_value is None and not op.negative_slope and not op.threshold
    if isinstance(op, keras.layers.Activation):
        return op.activation is keras.activations.relu
    return isinstance(op, Relu)


def relu_role(op) -> str | None:
    """``"plain"`` for a ReLU guided backprop can intercept (:func:`plain_relu` or a fused
    ``activation="relu"``), ``"other"`` for a rectifier it cannot (relu6, leaky_relu, ELU,
    a ReLU with arguments) or for a layer it cannot see into (a class from outside Keras
    with no graph, an ``Activation`` of a custom function), else None."""
    import keras

    if plain_relu(op) or fused_activation(op) is keras.activations.relu:
        return "plain"
    act = getattr(op, "activation", None)
    names = {_act_name(type(op))} | ({_act_name(act)} if callable(act) else set())
    if names & _RECTIFIERS:
        return "other"
    if isinstance(op, keras.layers.Activation) and not _is_keras(act):
        return "other"
    if not _is_keras(type(op)) and graph_of(op) is None:
        return "other"
    return None


def _is_keras(obj) -> bool:
    return (getattr(obj, "__module__", "") or "").startswith("keras.")


def is_readable(shape: tuple | None) -> bool:
    """Whether an output is an image-like map (rank 4) or a vector (rank 2)."""
    return shape is not None and len(shape) in (2, 4)


class Walk:
    """One forward pass through a Keras graph, recording named outputs.

    Attributes:
      acts: ``{name: float32 channels-last activation}`` of every map and vector so far.
      seen: every named output met, in order (``:pre`` just before its layer).
    """

    def __init__(self, taps: _taps.Taps | None = None, stop_at: str | None = None):
        self.taps = taps
        self.stop_at = stop_at
        self.acts: dict[str, Array] = {}
        self.seen: list[Seen] = []
        self._count: collections.Counter = collections.Counter()

    def run(self, graph, inputs: list, layouts: list[str], prefix: str = "") -> tuple:
        """Runs ``graph`` on ``inputs``; returns ``(outputs, layouts)`` as lists."""
        values = {id(t): v for t, v in zip(graph.inputs, inputs, strict=True)}
        formats = {id(t): la for t, la in zip(graph.inputs, layouts, strict=True)}
        nodes = graph._nodes_by_depth  # the graph Keras's own Function walks
        for depth in sorted(nodes, reverse=True):
            for node in nodes[depth]:
                if node.operation is None or node.is_input:
                    continue
                if any(id(t) not in values for t in node.input_tensors):
                    continue
                outs, outs_layouts = self._node(node, values, formats, prefix)
                for t, value, la in zip(node.outputs, outs, outs_layouts, strict=True):
                    values[id(t)], formats[id(t)] = value, la
        outs = graph.outputs
        return [values[id(t)] for t in outs], [formats[id(t)] for t in outs]

    def _node(self, node, values: dict, formats: dict, prefix: str) -> tuple[list, list]:
        import keras

        op = node.operation
        name = self._name(prefix + op.name)
        ins = node.input_tensors
        inner = graph_of(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            tensors, layouts = [values[id(t)] for t in ins], [formats[id(t)] for t in ins]
            outs, layouts = self.run(inner, tensors, layouts, name + "/")
        else:
            fmt = getattr(op, "data_format", None)
            layout = fmt if fmt in (FIRST, LAST) else formats[id(ins[0])] if ins else LAST
            args, kwargs = node.arguments.fill_in(values)
            outs = keras.tree.flatten(self._call(op, name, layout, args, kwargs))
            layouts = [layout] * len(outs)
        if len(outs) == 1:
            outs = [self.emit(name, op, outs[0], layouts[0])]
        else:
            self.seen.append(Seen(name, op, None, LAST))
        if name == self.stop_at:
            raise Stopped
        return outs, layouts

    def _name(self, name: str) -> str:
        """Keras's name; a layer called again in the same graph gets ``@1``, ``@2``..."""
        count = self._count[name]
        self._count[name] += 1
        return f"{name}@{count}" if count else name

    def _call(self, op, name: str, layout: str, args, kwargs):
        """One Keras layer or operation, in inference mode, with the taps it honours."""
        import keras

        if "training" in getattr(op, "_call_context_args", ()):
            kwargs = {**kwargs, "training": False}  # as Functional.call passes it
        act = fused_activation(op)
        channel = _taps.selected(self.taps, name)
        if channel is not None and not sliceable(op):
            raise JaxvisError(
                f"Taps.select names layer {name!r} ({type(op).__name__}), which cannot compute "
                "one channel alone; only a keras.layers.Conv2D with groups=1 can"
            )
        try:
            if channel is not None:
                pre = one_channel_conv(op, args[0], channel)
            elif self.taps is not None and self.taps.guided_relu and plain_relu(op):
                x = args[0]
                return _taps.guided_relu(x.astype(getattr(op, "compute_dtype", x.dtype)))
            elif act is None:
                pooled = _tiled_max_pool(op, args)
                return op(*args, **kwargs) if pooled is None else pooled
            else:
                with _linear(op):
                    pre = op(*args, **kwargs)
        except (JaxvisError, Stopped):
            raise
        except Exception as err:  # a Keras shape or dtype error: one line, at the boundary
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise JaxvisError(f"layer {name!r} ({type(op).__name__}) failed: {first}") from err
        if act is None:  # a selected conv without a fused activation: no ":pre"
            return pre
        pre = self.emit(name + PRE, op, pre, layout)
        return _taps.relu(pre, self.taps) if act is keras.activations.relu else act(pre)

    def emit(self, name: str, op, raw: Array, layout: str) -> Array:
        """Records ``raw`` under ``name`` and adds its delta; returns what flows on."""
        shape = tuple(raw.shape)
        first = layout == FIRST and len(shape) == 4
        if is_readable(shape) and self.taps is not None and name in self.taps.deltas:
            delta = self.taps.deltas[name]
            raw = raw + (jnp.transpose(delta, _TO_FIRST) if first else delta).astype(raw.dtype)
        if is_readable(shape):
            self.acts[name] = (jnp.transpose(raw, _TO_LAST) if first else raw).astype(jnp.float32)
        self.seen.append(Seen(name, op, shape, layout))
        return raw


def _tiled_max_pool(op, args) -> Array | None:
    """A ``MaxPooling2D`` whose windows tile the input (pool size = strides, 'valid') as a
    reshape and max, or None for any other op. Same values as Keras's ``reduce_window``,
    but its gradient is much cheaper on XLA:CPU (benchmarks/README.md, "max-pool
    gradient"), and activation maximization differentiates through every pool."""
    import keras

    if not isinstance(op, keras.layers.MaxPooling2D) or len(args) != 1:
        return None
    (ph, pw), (sh, sw) = tuple(op.pool_size), tuple(op.strides)
    if (ph, pw) != (sh, sw) or op.padding != "valid":
        return None
    x = args[0]
    if op.data_format == FIRST:
        n, c, h, w = x.shape
        x = x[:, :, : h // ph * ph, : w // pw * pw]
        return x.reshape(n, c, h // ph, ph, w // pw, pw).max(axis=(3, 5))
    n, h, w, c = x.shape
    x = x[:, : h // ph * ph, : w // pw * pw]
    return x.reshape(n, h // ph, ph, w // pw, pw, c).max(axis=(2, 4))


def operations(graph, prefix: str = ""):
    """``(name, op)`` for every operation of ``graph``, nested graphs included (their
    inner operations first, then the nested model itself)."""
    import keras

    for op in graph.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        inner = graph_of(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            yield from operations(inner, f"{prefix}{op.name}/")
        yield prefix + op.name, op
