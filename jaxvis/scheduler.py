"""Whole-layer atlases: chunks, devices, resume and progress around the engine.

This is the stateful edge of jaxvis: it opens the atlas, skips the filters already in it,
runs the rest chunk by chunk through the compiled engine and commits each chunk to the
atlas before starting the next, so a crash loses at most the chunk in flight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxvis import devices as dev
from jaxvis import engine, presets
from jaxvis.atlas import AtlasWriter
from jaxvis.models.model import FeatureModel
from jaxvis.progress import Progress


def run_config(
    config: presets.Config, *, size: int, steps: int | None, seed: int, dtype: str
) -> dict:
    """The layer-independent run config that identifies an atlas (batch is not part of it:
    results do not depend on chunk size; the compute dtype is)."""
    recipe = presets.resolve(config, "{layer}", size, steps=steps)
    return {**recipe.description, "seed": seed, "dtype": dtype}


def generate_atlas(
    model: FeatureModel,
    out: str,
    layers: Mapping[str, Sequence[int]],
    *,
    preset: str = "lucid",
    size: int = 224,
    steps: int | None = None,
    seed: int = 0,
    batch: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Writes (or resumes) an atlas of ``{layer: filters}`` to ``out``.

    Every layer and filter is checked before the file is touched. Re-running the same
    call after a crash finishes the atlas; a different config is refused unless
    ``overwrite``.

    Returns:
      ``out``.
    """
    config = presets.get(preset)
    size = engine.check_size(model, size)
    if batch is not None:
        engine.check_batch(batch)
    wanted = {
        layer: engine.check_filters(model, layer, filters) for layer, filters in layers.items()
    }
    for layer in wanted:
        engine.check_runs(model, layer, size)
    provenance = {
        "model": model.name,
        "weights": model.info.to_dict() if model.info else {},
        "config": run_config(config, size=size, steps=steps, seed=seed, dtype=model.dtype),
        "device_kind": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"
        f" x{jax.device_count()}",
    }
    with AtlasWriter(out, provenance=provenance, overwrite=overwrite) as writer:
        writer.request(wanted, num_filters={la: model.num_filters(la) for la in wanted})
        todo = {}
        for layer, units in wanted.items():
            done = writer.done(layer)
            todo[layer] = np.array([u for u in units if int(u) not in done], np.int64)
        costs = {layer: dev.relative_cost(model, layer, size) for layer in todo}
        bar = Progress({la: len(u) for la, u in todo.items()}, enabled=progress, costs=costs)
        with bar:
            for layer, units in todo.items():
                _run_layer(
                    model,
                    writer,
                    bar,
                    layer,
                    units,
                    config,
                    size=size,
                    steps=steps,
                    seed=seed,
                    batch=batch,
                )
    return out


def _run_layer(model, writer, bar, layer, units, config, *, size, steps, seed, batch):
    bar.start_layer(layer)
    if len(units) == 0:
        return
    prog = engine.program(model, layer, size, config, steps=steps)
    chunk = dev.chunk_size(model, prog.ascent.stop_at, size, len(units), batch)
    for i in range(0, len(units), chunk):
        part = engine.run_chunk(prog, model.params, seed, layer, units[i : i + chunk], chunk)
        writer.write_chunk(
            layer,
            part["filters"],
            part["images"],
            part["objective"],
            part["history"],
            seconds=part["seconds"] + part["compile_seconds"],
            failed=part["failed"],
            num_filters_in_layer=model.num_filters(layer),
        )
        bar.advance(layer, len(units[i : i + chunk]))
