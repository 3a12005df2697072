"""The compile cache is keyed on what the compiled code depends on, never on params: a
loop that loads fresh models keeps at most one model's weights alive, and shares one
compiled program between them."""

from __future__ import annotations

import gc
import weakref

import jaxvis
from jaxvis import engine, presets

RUN = {"size": 32, "steps": 2}


def test_cache_does_not_pin_weights_and_is_shared():
    models, kernels = [], []
    for seed in range(5):
        model = jaxvis.vgg16(None, seed=seed)
        jaxvis.visualize(model, "block1_conv1", [0], **RUN)
        models.append(weakref.ref(model))
        kernels.append(weakref.ref(model.params["block1_conv1"]["kernel"]))
        del model
    gc.collect()
    assert sum(ref() is not None for ref in models) <= 1
    assert sum(ref() is not None for ref in kernels) <= 1
    # The five models shared one program: same apply, layers, layer, size and recipe.
    first = jaxvis.vgg16(None, seed=7)
    second = jaxvis.vgg16(None, seed=8)
    lucid = presets.get("lucid")
    a = engine.program(first, "block1_conv1", 32, lucid, steps=2)
    assert engine.program(second, "block1_conv1", 32, lucid, steps=2) is a
    traces = a.traces
    jaxvis.visualize(second, "block1_conv1", [1], **RUN)
    assert a.traces == traces  # nothing traced again for a new model of the same shapes


def test_other_preprocessing_or_dtype_gets_its_own_program():
    lucid = presets.get("lucid")
    fp32 = jaxvis.vgg16(None)
    bf16 = jaxvis.vgg16(None, dtype="bfloat16")
    assert fp32.apply != bf16.apply
    a = engine.program(fp32, "block1_conv1", 32, lucid, steps=2)
    assert engine.program(bf16, "block1_conv1", 32, lucid, steps=2) is not a
