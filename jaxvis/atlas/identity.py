"""What makes two runs the same atlas, so that a resume never mixes settings.

Identity is the model, the weights (source, hash, preprocessing, trained, seed; not the
path, which may move) and the run config less :data:`format.RUN_ONLY_CONFIG_KEYS` (batch
size and the like, which change no picture). A few settings are per layer instead: each
layer's objective, and its snapshot spacing (``snapshot_every``), which a layer's rows
must all share, so that a resume never mixes rows with and without snapshots while a new
layer of the same atlas may choose its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from jaxvis.atlas import format as fmt
from jaxvis.errors import JaxvisError


def normalized_provenance(provenance: Mapping) -> dict:
    """Checks the keys and round-trips through JSON, as the atlas will store it."""
    missing = [k for k in ("model", "weights", "config") if k not in provenance]
    if missing:
        raise JaxvisError(
            f"atlas provenance lacks {', '.join(missing)}; expected keys: "
            "model, weights, config, device_kind"
        )
    prov = json.loads(json.dumps(dict(provenance), sort_keys=True, default=str))
    prov.setdefault("device_kind", "unknown")
    return prov


def identity(model: str, weights: Mapping, config: Mapping) -> dict:
    """Flat ``{"model": ..., "weights.sha256": ..., "config.steps": ...}``."""
    ident = {"model": model}
    ident.update({f"weights.{k}": weights.get(k) for k in fmt.WEIGHTS_IDENTITY_KEYS})
    ident.update({f"config.{k}": v for k, v in config.items() if k not in fmt.RUN_ONLY_CONFIG_KEYS})
    return ident


def check_same_run(path: str, attrs: Mapping, prov: Mapping) -> None:
    """Raises a one-line JaxvisError naming every difference between file and run."""
    old = identity(
        str(attrs[fmt.ATTR_MODEL]),
        json.loads(attrs[fmt.ATTR_WEIGHTS]),
        json.loads(attrs[fmt.ATTR_CONFIG]),
    )
    new = identity(prov["model"], prov["weights"], prov["config"])
    diffs = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if diffs:
        shown = "; ".join(_difference(k, old.get(k), new.get(k)) for k in diffs)
        raise JaxvisError(
            f"{path} was made with different settings ({shown}); pass "
            "--overwrite to start it over, or choose another output file"
        )


def check_same_layer(path: str, layer: str, key: str, old: object, new: object) -> None:
    """Refuses, as :func:`check_same_run` does, a layer-level setting that differs from
    the one the layer's rows were written with (e.g. ``snapshot_every``)."""
    if old != new:
        shown = _difference(f"layers.{layer}.{key}", old, new)
        raise JaxvisError(
            f"{path} was made with different settings ({shown}); pass --overwrite to "
            "start it over, or choose another output file"
        )


def _difference(key: str, old: object, new: object, limit: int = 60) -> str:
    """``key: OLD in the file, NEW now``, long values cut to show where they differ."""
    a, b = json.dumps(old), json.dumps(new)
    if max(len(a), len(b)) > limit:
        start = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        start = max(0, start - limit // 3)
        a, b = (_window(t, start, limit) for t in (a, b))
    return f"{key}: {a} in the file, {b} now"


def _window(text: str, start: int, limit: int) -> str:
    piece = text[start : start + limit]
    return ("..." if start else "") + piece + ("..." if start + limit < len(text) else "")
