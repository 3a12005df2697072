"""The command-line flags of the attribution methods' options (jaxvis/attribution/specs.py).

Every option a method takes has one flag. Only the flags given are passed on, so a method
refuses an option it does not take (``--samples`` with gradcam: ``unknown option
'samples' for gradcam``) and the defaults stay in one place, specs.py. Each help text
starts with the methods that take the option. This module imports neither jax nor specs
(which does): the CLI builds its parser without jax.
"""

from __future__ import annotations

import argparse

# ``(option, flags, argparse keywords)`` for every option of ``specs.OPTIONS``; the valid
# values listed are specs.REDUCE, COMBINE and RULES (tests/test_attribution_cli.py checks).
OPTIONS = (
    ("samples", ("--samples",), {"type": int, "help": "smoothgrad: noisy copies of each image"}),
    (
        "noise",
        ("--noise",),
        {
            "type": float,
            "help": "smoothgrad: the noise's standard deviation, as a fraction of the "
            "image's value range",
        },
    ),
    (
        "steps",
        ("--steps",),
        {"type": int, "help": "integrated_gradients: points on the path from the baseline"},
    ),
    (
        "baseline",
        ("--baseline",),
        {"help": "integrated_gradients: black, or an image file (resized to SIZE)"},
    ),
    (
        "reduce",
        ("--reduce",),
        {
            "help": "gradient, smoothgrad, integrated_gradients, guided_backprop, "
            "guided_gradcam: how the three colour channels become one map: max_abs, sum_abs "
            "or sum"
        },
    ),
    (
        "combine",
        ("--combine",),
        {"help": "smoothgrad: how the samples' gradients are averaged: mean, abs or square"},
    ),
    (
        "rule",
        ("--rule",),
        {
            "help": "integrated_gradients: the quadrature: right, left, midpoint, trapezoid or "
            "linspace"
        },
    ),
    (
        "resize",
        ("--resize",),
        {
            "action": argparse.BooleanOptionalAction,
            "help": "gradcam, gradcam++, scorecam: --no-resize keeps the map at the layer's "
            "size (e.g. 14 x 14 for block5 at 224 px) instead of upsampling it to the image",
        },
    ),
    (
        "score_batch",
        ("--score-batch",),
        {
            "type": int,
            "metavar": "N",
            "help": "scorecam: masked images per model pass; sets memory use, not the map",
        },
    ),
)
OPTION_FLAGS = tuple(name for name, _, _ in OPTIONS)


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """Adds a flag for every option of :data:`OPTIONS`, each ``None`` unless given."""
    for name, names, kw in OPTIONS:
        parser.add_argument(*names, dest=name, default=None, **kw)


def given_options(args: argparse.Namespace) -> dict:
    """``{option: value}`` of the option flags given on the command line."""
    return {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k, None) is not None}
