"""Which layers and filters to visualize, from the strings a user types.

Filter specs: ``all``, ``0-15``, ``3,7,9``, ``0-3,9`` (mixed), ``random:6``.
Layer specs: ``block1_conv1,block3_conv2`` or ``all-conv`` (alias ``conv``).

``random:K`` ranks every filter by the SHA-256 of ``(seed, layer, filter)`` and keeps the
first K. The draw is the same on every machine and numpy version (unlike a seeded
Generator, whose streams numpy may change), differs per layer, and is nested:
``random:6`` is a subset of ``random:12``, so widening a sample resumes the atlas.
"""

from __future__ import annotations

import hashlib

from jaxvis.errors import JaxvisError, choices

CONV_ALIASES = ("all-conv", "conv")
_FORMS = "all, 0-15, 3,7,9, 0-3,9 or random:K"


def _where(layer: str, num_filters: int) -> str:
    return f"layer {layer!r} has {num_filters} filters" if layer else f"{num_filters} filters"


def _int(text: str, spec: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise JaxvisError(
            f"bad filter spec {spec!r}: {text!r} is not a non-negative integer; use {_FORMS}"
        )
    return int(text)


def random_filters(k: int, num_filters: int, *, seed: int = 0, layer: str = "") -> list[int]:
    """K distinct filters drawn reproducibly from ``(seed, layer)``, sorted."""

    def rank(i: int) -> bytes:
        return hashlib.sha256(f"{seed}\0{layer}\0{i}".encode()).digest()

    return sorted(sorted(range(num_filters), key=rank)[:k])


def parse_filters(spec: str, num_filters: int, *, seed: int = 0, layer: str = "") -> list[int]:
    """Parses a filter spec into a sorted list of distinct filter indices.

    Args:
      spec: ``all``, ``0-15``, ``3,7,9``, ``0-3,9`` or ``random:K``.
      num_filters: the layer's filter count; valid filters are ``0..num_filters-1``.
      seed: seed of ``random:K``.
      layer: layer name; seeds ``random:K`` and names the layer in errors.

    Returns:
      Sorted, de-duplicated filter indices.
    """
    spec = str(spec).strip()
    items = [item.strip() for item in spec.split(",")]
    if not spec or "" in items:
        raise JaxvisError(f"empty filter spec {spec!r}; use {_FORMS}")
    if len(items) > 1 and any(i == "all" or i.startswith("random:") for i in items):
        raise JaxvisError(f"bad filter spec {spec!r}: 'all' and 'random:K' stand alone")
    if spec == "all":
        return list(range(num_filters))
    if spec.startswith("random:"):
        k = _int(spec.removeprefix("random:").strip(), spec)
        if not 1 <= k <= num_filters:
            raise JaxvisError(
                f"bad filter spec {spec!r}: K must be 1 to {num_filters} "
                f"({_where(layer, num_filters)})"
            )
        return random_filters(k, num_filters, seed=seed, layer=layer)
    chosen: set[int] = set()
    for item in items:
        if item.startswith("-"):
            raise JaxvisError(
                f"bad filter spec {spec!r}: {item!r} is negative; filters are 0 to "
                f"{num_filters - 1} ({_where(layer, num_filters)})"
            )
        first, sep, last = item.partition("-")
        lo = _int(first.strip(), spec)
        hi = _int(last.strip(), spec) if sep else lo
        if lo > hi:
            raise JaxvisError(
                f"bad filter spec {spec!r}: range {item!r} runs backwards; write {hi}-{lo}"
            )
        if hi >= num_filters:
            raise JaxvisError(
                f"filter {hi} in {spec!r} is out of range: "
                f"{_where(layer, num_filters)} (0-{num_filters - 1})"
            )
        chosen.update(range(lo, hi + 1))
    return sorted(chosen)


def parse_layers(spec: str, model) -> list[str]:
    """Parses ``L1,L2`` or ``all-conv`` into layer names of ``model``, in the order given.

    Args:
      spec: comma-separated layer names, or ``all-conv``/``conv`` for every conv layer.
      model: a :class:`jaxvis.FeatureModel` (anything with ``name``, ``layers``,
        ``conv_layers`` and ``layer(name)``).
    """
    names = [la.name for la in model.layers]
    out: list[str] = []
    for item in (s.strip() for s in str(spec).split(",")):
        if item in CONV_ALIASES:
            picked = list(model.conv_layers)
        elif item in names:
            picked = [item]
        elif item in getattr(model, "unavailable", {}):
            model.layer(item)  # raises the reason, e.g. a head without head weights
            picked = []
        else:
            what = f"unknown layer {item!r}" if item else f"empty layer spec {spec!r}"
            raise JaxvisError(
                f"{what} for {model.name}; valid layers: "
                f"{', '.join(CONV_ALIASES[:1])}, {choices(names)}"
            )
        out += [name for name in picked if name not in out]
    return out


def select(model, layers: str, filters: str, *, seed: int = 0) -> dict[str, list[int]]:
    """``{layer: filters}`` for a layer spec and a filter spec applied to each layer."""
    chosen = parse_layers(layers, model)
    return {
        name: parse_filters(filters, model.num_filters(name), seed=seed, layer=name)
        for name in chosen
    }
