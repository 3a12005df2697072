"""3x3 convs on CPU by the formulation measured fastest here, per shape, kept on disk.

On a CPU without AVX-512, XLA's direct conv ran well below its matmul rate at VGG16's
middle shapes, and Winograd F(2x2, 3x3) or im2col (``jaxvis/models/winograd.py``) ran the
same conv up to 2x faster, while losing at block1 (benchmarks/README.md, "Conv
formulations on the AVX2-only CPU"). Which one wins depends on the shape and the CPU, so
none is a constant: :func:`choose` times forward plus input gradient of each distinct
3x3 stride-1 'SAME' conv of a program on first use, and keeps the winner per CPU, jax
version and shape in a small JSON file. A formulation replaces ``lax.conv`` only where it
beat it by :data:`MARGIN`.

:class:`Formed` applies a choice to any model's ``apply``: it traces the forward pass to
a jaxpr and evaluates it again with the chosen convs replaced, so Flax, Keras-on-JAX and
plain ``lax`` models are treated alike and their code is untouched. Autodiff then runs
through the formulation, whose stages are linear, so the input gradient is matmuls too.
The results match ``lax.conv`` to fp32 rounding (max relative error about 2e-6 per conv),
but an ascent amplifies rounding, so the pictures are not bit-identical to ``lax.conv``'s.

The cache file is ``$JAXVIS_CONV_CACHE``, else ``$XDG_CACHE_HOME/jaxvis/cpu-convs.json``
(``~/.cache/jaxvis/cpu-convs.json``). It holds names and numbers, read with ``json``; an
entry naming an unknown formulation is ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jaxvis import cpu_cache
from jaxvis.errors import JaxvisError, choices
from jaxvis.models import winograd
from jaxvis.models.taps import Taps


def _lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


# Formulation name -> conv(x [N, H, W, Cin], kernel [3, 3, Cin, Cout]). Winograd F(4,3) is
# left out: it never won a shape on either CPU measured, and its error is 10x F(2,3)'s.
FORMS = {
    "lax": _lax_conv,
    "winograd": functools.partial(winograd.conv3x3_winograd, m=2),
    "im2col": winograd.conv3x3_im2col,
}
# What ``convs=`` accepts: "auto" (this CPU's measured choice per shape), or one form for
# every 3x3 conv ("lax" keeps XLA's conv everywhere).
SETTINGS = ("auto", *FORMS)
# A formulation must be this much faster than lax.conv at a shape to replace it: the
# pictures change with it, and a shared machine's timing is noisy.
MARGIN = 1.10
# Convs with fewer input or output channels than this stay lax.conv unmeasured: the
# matmuls are too thin to repay the transforms (F(2,3) ran 0.15x at block1_conv1, 3->64).
MIN_CHANNELS = 16
# Measure only for a job of at least this many filter-steps at 128 px (scaled by pixels):
# 4 filters x 64 steps. A shape costs about 2 s to measure, once per CPU.
MIN_WORK = 4 * 64 * 128 * 128
# Timing per shape: at least ROUNDS rounds (each form once per round, the best time
# kept), and more until the rounds took BUDGET_S, at most MAX_ROUNDS. On the 2-core VM
# five rounds alone let shared-machine noise flip shapes within 20 % of each other.
ROUNDS, BUDGET_S, MAX_ROUNDS = 5, 0.6, 40
# Part of every cache key: raised when a formulation's code changes speed, so that
# choices measured for the old code are not read for the new.
FORMS_VERSION = 2  # 2: F(2,3) with its own input gradient
_CONV = "conv_general_dilated"
_CALLS = ("pjit", "jit", "closed_call", "core_call")

Shape = tuple[int, int, int, int, int]  # (N, H, W, Cin, Cout) of an NHWC x HWIO conv


def cache_path() -> str:
    return cpu_cache.path("JAXVIS_CONV_CACHE", "cpu-convs.json")


def check_setting(convs) -> str:
    """``convs`` if it is one of :data:`SETTINGS`, else a one-line error."""
    if convs not in SETTINGS:
        raise JaxvisError(f"unknown convs setting {convs!r}; valid: {choices(SETTINGS)}")
    return convs


def _shape_of(eqn) -> Shape | None:
    """The shape of a conv equation that the formulations compute (3x3 HWIO kernel,
    NHWC, stride 1, 'SAME' padding, no dilation or groups, float32), else None."""
    if eqn.primitive.name != _CONV:
        return None
    p = eqn.params
    lhs, rhs = (v.aval for v in eqn.invars)
    dims = p["dimension_numbers"]
    plain = (
        tuple(dims.lhs_spec) == (0, 3, 1, 2)
        and tuple(dims.rhs_spec) == (3, 2, 0, 1)
        and tuple(dims.out_spec) == (0, 3, 1, 2)
        and tuple(p["window_strides"]) == (1, 1)
        and tuple(map(tuple, p["padding"])) == ((1, 1), (1, 1))
        and tuple(p["lhs_dilation"]) == (1, 1)
        and tuple(p["rhs_dilation"]) == (1, 1)
        and p["feature_group_count"] == 1
        and p["batch_group_count"] == 1
        and p.get("preferred_element_type") in (None, jnp.float32)
        and lhs.dtype == jnp.float32
        and rhs.dtype == jnp.float32
        and lhs.ndim == 4
        and tuple(rhs.shape[:2]) == (3, 3)
    )
    return (*lhs.shape, rhs.shape[3]) if plain else None


def _inner(eqn):
    """The ClosedJaxpr of a call equation whose body :func:`_evaluate` inlines, or None."""
    if eqn.primitive.name not in _CALLS:
        return None
    inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
    return inner if hasattr(inner, "jaxpr") else None


def _evaluate(jaxpr, consts, args, forms: Mapping[Shape, str]) -> list:
    """``jaxpr`` evaluated on ``args`` in the current trace, each conv whose shape
    ``forms`` names computed by that formulation, and jit calls inlined so that convs
    inside them are reached too. Everything else binds exactly as recorded."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        shape, inner = _shape_of(eqn), _inner(eqn)
        if shape is not None and forms.get(shape, "lax") != "lax":
            outs = [FORMS[forms[shape]](*invals)]
        elif inner is not None:
            outs = _evaluate(inner.jaxpr, inner.consts, invals, forms)
        else:
            with eqn.ctx.manager:
                ans = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
            outs = ans if eqn.primitive.multiple_results else [ans]
        for v, x in zip(eqn.outvars, outs, strict=True):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _split(taps: Taps | None):
    """Taps as pytrees of arrays plus what is static, so the jaxpr takes them as inputs."""
    if taps is None:
        return ({}, {}), None
    return (dict(taps.deltas), dict(taps.select)), taps.guided_relu


def _join(arrays, guided):
    return None if guided is None else Taps(arrays[0], guided, arrays[1])


def _traced(apply, params, images, stop_at, taps):
    """The jaxpr of ``apply(params, images, stop_at, taps)``, its flat inputs and the
    output's tree."""
    arrays, guided = _split(taps)

    def run(p, x, arrays):
        t = _join(arrays, guided)
        return apply(p, x, stop_at) if t is None else apply(p, x, stop_at, t)

    closed, out_shape = jax.make_jaxpr(run, return_shape=True)(params, images, arrays)
    return closed, jax.tree_util.tree_leaves((params, images, arrays)), out_shape


@dataclasses.dataclass(frozen=True)
class Formed:
    """``apply`` with the 3x3 convs of the shapes in ``forms`` computed by those
    formulations; every other operation is the model's own.

    Attributes:
      apply: a model's pure ``(params, images, stop_at[, taps]) -> {name: array}``.
      forms: ``((shape, form name), ...)``, shape ``(N, H, W, Cin, Cout)`` as traced
        (per unit, inside the engine's vmap).
    """

    apply: object
    forms: tuple

    def __call__(self, params, images, stop_at: str, taps: Taps | None = None):
        closed, flat, out_shape = _traced(self.apply, params, images, stop_at, taps)
        outs = _evaluate(closed.jaxpr, closed.consts, flat, dict(self.forms))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)


def _walk(jaxpr, found: list) -> list[Shape]:
    """Appends the distinct replaceable conv shapes of ``jaxpr`` (jit calls included)."""
    for eqn in jaxpr.eqns:
        shape, inner = _shape_of(eqn), _inner(eqn)
        if shape is not None and shape not in found:
            found.append(shape)
        elif inner is not None:
            _walk(inner.jaxpr, found)
    return found


def conv_shapes(apply, params, images, stop_at: str, taps: Taps | None = None) -> list[Shape]:
    """The distinct shapes of the 3x3 convs :class:`Formed` could replace in this forward
    pass, in the order they run (``images`` may be a ``jax.ShapeDtypeStruct``)."""
    return _walk(_traced(apply, params, images, stop_at, taps)[0].jaxpr, [])


def measure(shape: Shape, rounds: int = ROUNDS) -> dict[str, float]:
    """Best seconds of forward plus input gradient per formulation at ``shape``, the
    forms called in turn each round (random inputs; speed does not depend on them).
    ``rounds`` is the least number of rounds; more run until :data:`BUDGET_S`."""
    n, h, w, cin, cout = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((n, h, w, cout)), jnp.float32)

    def fwd_and_input_grad(form):
        def run(x, k, ct):
            y, vjp = jax.vjp(lambda x: form(x, k), x)
            return y, vjp(ct)[0]

        return jax.jit(run).lower(x, k, ct).compile()

    compiled = {name: fwd_and_input_grad(form) for name, form in FORMS.items()}
    best = dict.fromkeys(compiled, float("inf"))
    for fn in compiled.values():  # once untimed: first-call allocation
        jax.block_until_ready(fn(x, k, ct))
    spent, done = 0.0, 0
    while done < rounds or (spent < BUDGET_S and done < MAX_ROUNDS):
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x, k, ct))
            took = time.perf_counter() - start
            best[name], spent = min(best[name], took), spent + took
        done += 1
    return best


def pick(seconds: Mapping[str, float]) -> str:
    """The fastest formulation if it beats ``lax`` by :data:`MARGIN`, else ``"lax"``."""
    name = min(seconds, key=seconds.get)
    return name if seconds[name] * MARGIN <= seconds["lax"] else "lax"


def key_prefix() -> str:
    return f"{cpu_cache.cpu_signature()}|jax {jax.__version__}|forms {FORMS_VERSION}|"


def cache_key(shape: Shape) -> str:
    return f"{key_prefix()}conv3x3 {shape} float32"


def _form(entry) -> str | None:
    """The formulation a cache entry names, or None for a missing or unknown one."""
    form = entry.get("form") if isinstance(entry, dict) else None
    return form if form in FORMS else None


def known(shape: Shape) -> str | None:
    """The formulation measured best for ``shape`` on this CPU before, or None."""
    return _form(cpu_cache.load(cache_path()).get(cache_key(shape)))


def _measurable(shape: Shape) -> bool:
    return min(shape[3], shape[4]) >= MIN_CHANNELS


def choose(prog, params, size: int, n_units: int, note=None) -> tuple:
    """The forms for ``prog``'s convs on this CPU, as :class:`Formed` takes them: cached
    choices, and for a job of at least :data:`MIN_WORK` the missing shapes measured now
    (and cached). ``()`` keeps every conv ``lax.conv``: off CPU, for a
    model that is not float32 where it matters, and where nothing beat ``lax``.
    ``note(line)``, if given, is told when measuring starts and what it found. With
    several CPU devices (``jaxvis/cpu_devices.py``) the choice is the same: a shape is
    measured on one device, and each unit's convs run on one device."""
    if jax.default_backend() != "cpu":
        return ()
    work = n_units * prog.ascent.recipe.steps * size * size
    cached = cpu_cache.load(cache_path())
    if work < MIN_WORK and not any(k.startswith(key_prefix()) for k in cached):
        return ()  # nothing to read, nothing worth measuring: skip tracing the program
    shapes = [s for s in _program_shapes(prog, params) if _measurable(s)]
    chosen = {s: _form(cached.get(cache_key(s))) for s in shapes}
    missing = [s for s, form in chosen.items() if form is None]
    if missing and work >= MIN_WORK:
        if note:
            note(
                f"measuring {len(missing)} conv shape(s) on this CPU (once; kept in {cache_path()})"
            )
        for shape in missing:
            seconds = measure(shape)
            chosen[shape] = pick(seconds)
            entry = {"form": chosen[shape], "seconds": seconds, "date": time.strftime("%Y-%m-%d")}
            if not cpu_cache.store(cache_path(), cache_key(shape), entry) and note:
                note(f"could not write {cache_path()}; the choice holds for this run only")
        if note:
            shown = ", ".join(f"{s[1]}x{s[2]} {s[3]}->{s[4]}: {chosen[s]}" for s in missing)
            note(f"conv formulations: {shown}")
    return tuple((s, f) for s, f in chosen.items() if f not in (None, "lax"))


def everywhere(prog, params, form: str) -> tuple:
    """``form`` for every 3x3 conv of ``prog`` (``convs="winograd"`` and the like)."""
    if form == "lax":
        return ()
    return tuple((s, form) for s in _program_shapes(prog, params))


def forms_for(prog, params, convs: str, size: int, n_units: int, note=None) -> tuple:
    """What ``convs=`` means for ``prog``: ``"auto"`` (:func:`choose`) or one form for
    every conv (:func:`everywhere`)."""
    check_setting(convs)
    if convs == "auto":
        return choose(prog, params, size, n_units, note)
    return everywhere(prog, params, convs)


def _program_shapes(prog, params) -> list[Shape]:
    """The conv shapes of one unit's objective in ``prog``, as its vmapped step traces
    them: after the transforms, with the one-channel target conv where it slices."""
    ascent = prog.ascent
    if isinstance(ascent.apply, Formed):
        ascent = dataclasses.replace(ascent, apply=ascent.apply.apply)
    key = jax.random.key(0)
    raw = jax.eval_shape(ascent.recipe.param.init, key)
    closed = jax.make_jaxpr(ascent.objective)(params, raw, key, jnp.int32(0))
    return _walk(closed.jaxpr, [])
