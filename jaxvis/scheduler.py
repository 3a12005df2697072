"""Whole-layer atlases: the stateful edge around the engine.

One straight path from a request to an atlas: check everything the caller gave (before
any file is touched), build each layer's program, open the atlas and skip what it holds,
then run the rest through :func:`jaxvis.engine.chunks` and commit each chunk before the
next starts, so that a crash loses at most the chunk in flight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxvis import devices, engine, presets
from jaxvis.atlas import AtlasWriter
from jaxvis.errors import JaxvisError
from jaxvis.models.feature_model import FeatureModel
from jaxvis.progress import Progress


def run_identity(model: FeatureModel, recipe: presets.Recipe, *, seed: int) -> dict[str, object]:
    """What identifies an atlas apart from its layers: the model, its weights and the
    layer-independent run config (each layer's objective is stored with the layer).

    Batch size is not part of it: results do not depend on chunk size. The compute dtype
    is: bf16 and fp32 pictures differ.
    """
    return {
        "model": model.name,
        "weights": model.info.to_dict() if model.info else {},
        "config": {**recipe.run_description, "seed": seed, "dtype": model.dtype},
    }


def generate_atlas(
    model: FeatureModel,
    out: str,
    layers: Mapping[str, Sequence[int]],
    *,
    preset: str | presets.Config = "lucid",
    size: int = 224,
    steps: int | None = None,
    seed: int = 0,
    batch: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    snapshots: int | None = None,
) -> str:
    """Writes (or resumes) an atlas of ``{layer: filters}`` to ``out``.

    Every layer and filter is checked before the file is touched. Re-running the same
    call after a crash finishes the atlas; a run whose settings differ in any way that
    changes a picture is refused, naming the setting, unless ``overwrite``.

    ``snapshots=K`` also stores each unit's picture after every K steps (1 to steps),
    per layer (docs/atlas-format.md, "Snapshots"); a layer whose rows were written with
    another K, or without snapshots, is refused.

    Returns:
      ``out``.
    """
    config = presets.get(preset)
    size = model.check_size(size)
    batch = engine.check_batch(batch)
    wanted = {layer: _check_layer_filters(model, layer, f) for layer, f in layers.items()}
    if not wanted:
        raise JaxvisError("no layers given; name at least one layer")
    programs = {}
    for layer, units in wanted.items():
        model.check_runs(layer, size)
        chunk = devices.chunk_size(model, layer, size, len(units), batch)
        devices.check_fits(model, layer, size, chunk)
        programs[layer] = engine.program(
            model, layer, size, config, steps=steps, snapshots=snapshots
        )
    first = next(iter(programs.values())).ascent.recipe
    every = engine.check_snapshots(snapshots, first.steps)
    provenance = {**run_identity(model, first, seed=seed), "device_kind": _device_kind()}
    with AtlasWriter(out, provenance=provenance, overwrite=overwrite) as writer:
        writer.request(
            wanted,
            num_filters={la: model.num_filters(la) for la in wanted},
            objectives={la: p.ascent.recipe.objective.description for la, p in programs.items()},
            outputs={la: model.output_kind(la, size) for la in wanted},
            snapshot_every={la: every for la in wanted},
        )
        todo = {la: _not_done(units, writer.done(la)) for la, units in wanted.items()}
        # ETA weights: one lowering per layer (no compile), so only when progress is shown.
        shown = [la for la, units in todo.items() if len(units)] if progress else []
        costs = {la: programs[la].step_flops(model.params) for la in shown}
        with Progress({la: len(u) for la, u in todo.items()}, enabled=progress, costs=costs) as bar:
            for layer, units in todo.items():
                bar.start_layer(layer)
                if not len(units):
                    continue
                parts = engine.chunks(
                    model,
                    programs[layer],
                    layer,
                    units,
                    size=size,
                    seed=seed,
                    batch=batch,
                    snapshots=snapshots,
                )
                for chunk in parts:
                    writer.write_chunk(layer, chunk)
                    bar.advance(layer, chunk.units)
    return out


def _check_layer_filters(model: FeatureModel, layer: str, filters) -> np.ndarray:
    units = model.check_filters(layer, filters)
    if len(np.unique(units)) != len(units):
        values, counts = np.unique(units, return_counts=True)
        raise JaxvisError(
            f"filter {int(values[counts > 1][0])} of {layer} is given twice; give each filter once"
        )
    return units


def _not_done(units: np.ndarray, done: set[int]) -> np.ndarray:
    return np.array([u for u in units.tolist() if u not in done], np.int64)


def _device_kind() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind} x{jax.device_count()}"
