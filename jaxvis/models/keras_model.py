"""Any built Keras 3 Functional or Sequential model as a :class:`FeatureModel`.

``from_keras(model)`` runs the model as a pure JAX function (``training=False``): its
variables are the FeatureModel's ``params`` (``{variable path: array}``, a copy), handed
to Keras inside the traced function (:mod:`jaxvis.models.keras_forward`), never
captured as constants. The graph walk itself (layer names, nested models, ``:pre``
outputs, layouts, taps, truncation) is :mod:`jaxvis.models.keras_graph`.

* **Layers**: every layer or operation whose output is an image-like map or a vector,
  under Keras's name (``outer/inner`` inside a nested model), in the order the graph runs.
  Other outputs (sequences, several outputs) are listed in ``unavailable``.
* **Inputs**: RGB [0, 1] NHWC images go through ``preprocess``
  (:mod:`jaxvis.models.conventions`), then to NCHW if the model's input is channels_first.
* **min_size**: a declared input size (``keras.Input((32, 32, 3))``) is the minimum; other
  sizes run if the graph allows (convolutions do, Flatten + Dense do not, and say so in
  one line). A free input size's minimum is the smallest square size that runs and
  leaves every map non-empty.
* **dtype**: a mixed-precision model computes as in Keras (each layer casts to its
  policy's compute dtype); activations come back float32, and ``FeatureModel.dtype`` is
  the compute dtype.
* **taps**: ``deltas`` always. ``guided_relu`` only if every rectifier in the model is a
  plain ReLU that can be intercepted: a fused ``activation="relu"``,
  ``keras.layers.ReLU()`` with default arguments, ``Activation("relu")`` or
  ``keras.ops.relu``. relu6 (MobileNetV2), leaky_relu, ELU, a ReLU with arguments, or a
  layer whose inside cannot be seen (a custom layer class, a subclassed sub-model, an
  ``Activation`` of a custom function) withholds it. ``select`` (the target conv computes
  only the traced unit's channel) for the conv layers that are a plain ``Conv2D`` with
  ``groups=1`` (``keras_graph.sliceable``); a DepthwiseConv2D, SeparableConv2D,
  Conv2DTranspose or grouped conv is listed in ``FeatureModel.unsliceable`` and
  computed whole, and a model with no plain conv does not list ``select``.
* **Provenance**: for a model in memory, ``sha256`` hashes the variables in the order of
  their keys (sorted): for each, the key (UTF-8), a NUL byte, the numpy dtype string
  (e.g. ``<f4``), the shape as text, then the raw C-order bytes. ``load_keras`` uses the
  file's own sha256.
"""

from __future__ import annotations

import functools
import hashlib
import os

import jax.numpy as jnp
import numpy as np

from jaxvis._types import Params
from jaxvis.errors import JaxvisError
from jaxvis.models import conventions
from jaxvis.models import keras_forward as kf
from jaxvis.models import keras_graph as kg
from jaxvis.models.feature_model import PRE, FeatureModel, LayerInfo
from jaxvis.models.taps import DELTAS, GUIDED_RELU, SELECT
from jaxvis.models.weights_info import WeightsInfo

# Square sizes tried, in order, to list the layers of a model whose input size is free.
_SURVEY_SIZES = (224, 512)


def _keras():
    """The keras module, or a one-line error saying how to get a usable one."""
    try:
        import keras
    except ImportError as err:
        if err.name != "keras":  # e.g. KERAS_BACKEND=tensorflow without tensorflow
            raise JaxvisError(
                f"keras did not import ({err}); jaxvis needs its JAX backend: set "
                "KERAS_BACKEND=jax before anything imports keras"
            ) from err
        raise JaxvisError('Keras models need keras 3: pip install "jaxvis[keras]"') from err
    if keras.backend.backend() != "jax":
        raise JaxvisError(
            f"Keras is running on its {keras.backend.backend()!r} backend; jaxvis needs "
            "JAX: set KERAS_BACKEND=jax before anything imports keras"
        )
    return keras


def _graph(keras, model):
    """The model's Functional graph, or a one-line error saying why it has none."""
    if not isinstance(model, keras.Model):
        raise JaxvisError(f"from_keras needs a keras.Model; got {type(model).__name__}")
    graph = kg.graph_of(model)
    if graph is None and isinstance(model, keras.Sequential):
        raise JaxvisError(
            f"model {model.name!r} is not built: give it an input, keras.Input(shape=(H, W, 3)),"
            " or call model.build((None, H, W, 3)) first"
        )
    if graph is None:
        raise JaxvisError(
            f"model {model.name!r} ({type(model).__name__}) has no layer graph to walk (a "
            "subclassed keras.Model); build it with the Functional API, keras.Model("
            "keras.Input(shape=(H, W, 3)), outputs), or as a keras.Sequential"
        )
    if len(graph.inputs) != 1:
        raise JaxvisError(
            f"model {model.name!r} has {len(graph.inputs)} inputs; jaxvis feeds it one "
            "batch of images, so it needs exactly one keras.Input"
        )
    return graph


def _input_layout(graph) -> str:
    """The data_format of the first layer that has one (channels_last if none does)."""
    for _, op in kg.operations(graph):
        if getattr(op, "data_format", None) in (kg.FIRST, kg.LAST):
            return op.data_format
    return kg.LAST


def _spec(model, graph, preprocess) -> tuple[kf.Spec, str]:
    """The model's :class:`kf.Spec` and the preprocessing description."""
    x = graph.inputs[0]
    if not jnp.issubdtype(jnp.dtype(x.dtype), jnp.floating):
        raise JaxvisError(
            f"model {model.name!r} takes {x.dtype} inputs; jaxvis feeds float images, so "
            "build it on keras.Input(..., dtype='float32') and convert in `preprocess`"
        )
    if len(x.shape) != 4:
        raise JaxvisError(
            f"model {model.name!r} takes inputs of shape {tuple(x.shape)}; jaxvis feeds "
            "images [N, H, W, 3] (or [N, 3, H, W] to a channels_first model)"
        )
    layout = _input_layout(graph)
    h, w, c = x.shape[2:] + x.shape[1:2] if layout == kg.FIRST else x.shape[1:]
    if c is not None and c != 3:
        raise JaxvisError(
            f"model {model.name!r} takes {c}-channel inputs; jaxvis optimizes RGB images, "
            "so only 3-channel models are supported (grayscale and multispectral are not)"
        )
    function, description = conventions.resolve(preprocess)
    keys, variables = _variables(model)
    spec = kf.Spec(model.name, graph, keys, variables, function, layout, x.dtype, (h, w, c))
    return spec, description


def _variables(model) -> tuple[tuple[str, ...], tuple]:
    """``(keys, variables)``: each variable keyed by its path, ``#1``... if repeated."""
    keys, seen = [], set()
    for v in model.variables:
        key, n = v.path, 0
        while key in seen:
            n += 1
            key = f"{v.path}#{n}"
        seen.add(key)
        keys.append(key)
    return tuple(keys), tuple(model.variables)


def _sizes(spec: kf.Spec, params: Params) -> tuple[list[kg.Seen], int]:
    """``(survey, min_size)``. For a declared input size: the survey there, and that size.
    For a free one: the survey at the first of :data:`_SURVEY_SIZES` that runs, and the
    smallest square size that runs, by bisection (shrinking an image never makes a
    ConvNet's maps larger)."""
    h, w, _ = spec.declared
    if h is not None and w is not None:
        return kf.survey(spec, params, h, w), max(h, w)
    for size in _SURVEY_SIZES:
        seen = kf.fits(spec, params, size, size)
        if seen is not None:
            break
    else:
        kf.survey(spec, params, size, size)  # raises its one-line error, if it has one
        raise JaxvisError(f"{spec.name} leaves an empty map even at {size}x{size} px")
    lo, hi = 0, size  # lo never fits, hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if kf.fits(spec, params, mid, mid) is not None else (mid, hi)
    return seen, hi


def _layers(seen: list[kg.Seen]) -> tuple[list[LayerInfo], dict[str, str]]:
    """The readable layers, and ``{name: why not}`` for the others."""
    pres = {s.name.removesuffix(PRE) for s in seen if s.name.endswith(PRE)}
    layers, unavailable = [], {}
    for s in seen:
        if s.name.endswith(PRE):
            continue
        if s.shape is None:
            unavailable[s.name] = "has several outputs; jaxvis reads layers with one output"
        elif not kg.is_readable(s.shape):
            shape = ("N",) + s.shape[1:]
            unavailable[s.name] = (
                f"has output shape {shape}, neither an image-like map [N, H, W, C] nor a "
                "vector [N, C], so jaxvis cannot read it"
            )
        else:
            channels = s.shape[1] if len(s.shape) == 4 and s.layout == kg.FIRST else s.shape[-1]
            layers.append(LayerInfo(s.name, kg.kind(s.op), int(channels), s.name in pres))
    return layers, unavailable


def _logits(seen: list[kg.Seen]) -> str | None:
    """The final layer if it outputs a vector (its ``:pre`` if its softmax is fused)."""
    import keras

    last = seen[-1]
    if last.shape is None or len(last.shape) != 2:
        return None
    softmax = kg.fused_activation(last.op) is keras.activations.softmax
    return last.name + PRE if softmax else last.name


def _taps(graph, seen: list[kg.Seen]) -> tuple[frozenset[str], frozenset[str]]:
    """The taps honoured and the unsliceable convs. ``deltas``; ``guided_relu`` if every
    rectifier is a plain, interceptable ReLU; ``select`` if a readable layer of kind conv
    can compute one channel alone (``kg.sliceable``). The readable convs that cannot
    (a DepthwiseConv2D, say) are the model's ``unsliceable``, computed whole."""
    roles = {kg.relu_role(op) for _, op in kg.operations(graph)}
    guided = "plain" in roles and "other" not in roles
    convs = [
        s
        for s in seen
        if not s.name.endswith(PRE) and kg.is_readable(s.shape) and kg.kind(s.op) == "conv"
    ]
    whole = frozenset(s.name for s in convs if not kg.sliceable(s.op))
    taps = {DELTAS: True, GUIDED_RELU: guided, SELECT: len(whole) < len(convs)}
    return frozenset(name for name, honoured in taps.items() if honoured), whole


def _compute_dtype(keras, model, graph) -> str:
    """The compute dtype shared by every layer with weights, else the model's policy's."""
    dtypes = {
        op.compute_dtype
        for _, op in kg.operations(graph)
        if not isinstance(op, keras.Model) and getattr(op, "weights", None)
    }
    return dtypes.pop() if len(dtypes) == 1 else model.dtype_policy.compute_dtype


def params_sha256(params: Params) -> str:
    """sha256 of ``{key: array}`` in a fixed order (see the module docstring)."""
    digest = hashlib.sha256()
    for key in sorted(params):
        value = np.ascontiguousarray(np.asarray(params[key]))
        digest.update(f"{key}\0{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _build(keras, model, preprocess, name: str | None, sha256: str, path: str) -> FeatureModel:
    graph = _graph(keras, model)
    spec, description = _spec(model, graph, preprocess)
    # Copies: Keras's predict() and fit() donate the variables' buffers to XLA.
    values = zip(spec.keys, spec.variables, strict=True)
    params = {k: jnp.array(v.value, copy=True) for k, v in values}
    seen, min_size = _sizes(spec, params)
    layers, unavailable = _layers(seen)
    logits = _logits(seen)
    info = WeightsInfo(
        source="keras-model",
        sha256=sha256 or params_sha256(params),
        preprocessing=description,
        has_head=logits is not None,
        trained=True,
        path=path,
        framework=f"keras {keras.__version__}",
    )
    pres = {la.name: la.pre for la in layers}
    taps, unsliceable = _taps(graph, seen)
    return FeatureModel(
        name=name or model.name,
        apply=functools.partial(kf.apply, spec, pres),
        params=params,
        layers=layers,
        info=info,
        min_size=min_size,
        unavailable=unavailable,
        dtype=_compute_dtype(keras, model, graph),
        logits=logits,
        taps=taps,
        unsliceable=unsliceable,
    )


def from_keras(model, *, preprocess=None, name: str | None = None) -> FeatureModel:
    """A built Keras 3 Functional or Sequential model as a :class:`FeatureModel`.

    Args:
      model: a built ``keras.Model`` with one image input (``KERAS_BACKEND=jax``).
      preprocess: the model's input convention: ``"caffe"``, ``"torch"``, ``"tf"``,
        ``None`` (it takes RGB [0, 1]) or a callable ``[N, H, W, 3] -> [N, H, W, C]``.
      name: the model's name in atlases; ``model.name`` if None.

    Returns:
      A FeatureModel whose ``params`` are a snapshot of the model's variables.
    """
    keras = _keras()
    return _build(keras, model, preprocess, name, sha256="", path="")


def load_keras(path: str | os.PathLike, *, preprocess=None) -> FeatureModel:
    """A ``.keras`` (or legacy ``.h5``) model file as a :class:`FeatureModel`.

    Loaded with ``safe_mode=True`` and ``compile=False``: no Lambda layer or other code
    from the file runs.
    """
    keras = _keras()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise JaxvisError(f"no Keras model file at {path!r}")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # Keras raises ValueError, zipfile, OSError, ...
        if "safe_mode" in str(err):
            raise JaxvisError(
                f"refused to load {path!r}: it holds a Lambda layer, whose Python code Keras's"
                " safe mode does not run; rebuild the model without Lambda layers"
            ) from err
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise JaxvisError(f"{path!r} is not a Keras model file (.keras or .h5): {first}") from err
    sha256 = _file_sha256(path)
    return _build(keras, model, preprocess, None, sha256=sha256, path=path)
