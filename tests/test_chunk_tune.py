"""The per-CPU chunk choice (jaxvis/chunk_tune.py): measured once, cached, then read."""

import json

import pytest

import jaxvis
from jaxvis import chunk_tune, devices, engine, presets, scheduler

SIZE, STEPS, LAYER = 32, 2, "block1_conv1"


@pytest.fixture(scope="module")
def model():
    return jaxvis.vgg16(None)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "chunks.json"
    monkeypatch.setenv("JAXVIS_CHUNK_CACHE", str(path))
    return path


def _prog(model):
    return engine.program(model, LAYER, SIZE, presets.get("keras-vis"), steps=STEPS)


def _fake_rates(monkeypatch, rates):
    calls = []

    def rate(prog, params, layer, chunk, repeats=2):
        calls.append(chunk)
        return rates[chunk]

    monkeypatch.setattr(chunk_tune, "rate", rate)
    return calls


def test_a_small_job_is_not_measured(model, cache, monkeypatch):
    calls = _fake_rates(monkeypatch, {1: 1.0, 2: 1.0, 4: 1.0})
    assert chunk_tune.choose(model, _prog(model), LAYER, SIZE, 8) is None
    assert calls == [] and not cache.exists()


@pytest.mark.parametrize(
    "rates, chosen",
    [
        ({1: 10.0, 2: 10.2, 4: 13.0}, 4),
        ({1: 10.0, 2: 10.2, 4: 10.25}, 1),  # within the margin: the smaller chunk
        ({1: 10.0, 2: 12.0, 4: 11.0}, 2),
    ],
)
def test_measures_once_then_reads_the_cache(model, cache, monkeypatch, rates, chosen):
    monkeypatch.setattr(chunk_tune, "MIN_WORK", 1)
    calls = _fake_rates(monkeypatch, rates)
    notes = []
    assert chunk_tune.choose(model, _prog(model), LAYER, SIZE, 64, notes.append) == chosen
    assert calls == [1, 2, 4] and len(notes) == 2
    entry = json.loads(cache.read_text())[
        chunk_tune.key(model, LAYER, SIZE, _prog(model).ascent.recipe)
    ]
    assert entry["chunk"] == chosen
    calls.clear()
    assert chunk_tune.choose(model, _prog(model), LAYER, SIZE, 64) == chosen
    assert calls == []  # read, not measured again
    assert chunk_tune.choose(model, _prog(model), LAYER, SIZE, 3) == min(chosen, 3)


def test_another_cpu_or_jax_measures_again(model, cache, monkeypatch):
    monkeypatch.setattr(chunk_tune, "MIN_WORK", 1)
    calls = _fake_rates(monkeypatch, {1: 1.0, 2: 5.0, 4: 1.0})
    assert chunk_tune.choose(model, _prog(model), LAYER, SIZE, 64) == 2
    monkeypatch.setattr(chunk_tune, "cpu_signature", lambda: "another cpu [avx2] x2")
    assert chunk_tune.tuned(model, LAYER, SIZE, _prog(model).ascent.recipe) is None
    calls.clear()
    chunk_tune.choose(model, _prog(model), LAYER, SIZE, 64)
    assert calls == [1, 2, 4]
    assert len(json.loads(cache.read_text())) == 2  # both CPUs kept


def test_cpus_of_one_model_name_are_told_apart_by_family_and_model(tmp_path):
    # The project's VM has been Zen 3, Zen 4 and Zen 5 EPYCs, all named "AMD EPYC".
    def info(family, model, flags):
        text = (
            f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\n"
            f"model\t\t: {model}\nmodel name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: {flags}\n"
        )
        path = tmp_path / f"cpuinfo-{family}-{model}"
        path.write_text(text + text.replace(": 0", ": 1", 1))
        return str(path)

    zen3 = chunk_tune.cpu_signature(info(25, 1, "sse avx2 fma"))
    zen4 = chunk_tune.cpu_signature(info(25, 17, "sse avx2 fma avx512f"))
    zen5 = chunk_tune.cpu_signature(info(26, 2, "sse avx2 fma avx512f"))
    assert zen3.startswith("AMD EPYC (family 25 model 1) [avx2,fma] x")
    assert len({zen3, zen4, zen5}) == 3
    assert zen4.replace("25 model 17", "26 model 2") == zen5


def test_a_broken_cache_file_is_ignored_and_rewritten(model, cache, monkeypatch):
    cache.write_text("{not json")
    monkeypatch.setattr(chunk_tune, "MIN_WORK", 1)
    _fake_rates(monkeypatch, {1: 1.0, 2: 1.0, 4: 9.0})
    assert chunk_tune.choose(model, _prog(model), LAYER, SIZE, 64) == 4
    assert len(json.loads(cache.read_text())) == 1


def test_rate_times_the_real_block(model):
    assert chunk_tune.rate(_prog(model), model.params, LAYER, 2, repeats=1) > 0


def test_the_atlas_runs_at_the_tuned_chunk(model, cache, monkeypatch, tmp_path):
    recipe = _prog(model).ascent.recipe
    key = chunk_tune.key(model, LAYER, SIZE, recipe)
    cache.write_text(json.dumps({key: {"chunk": 2}}))
    seen = []
    real = devices.chunk_size

    def spy(model_, stop_at, size, n_units, batch):
        seen.append(batch)
        return real(model_, stop_at, size, n_units, batch)

    monkeypatch.setattr(devices, "chunk_size", spy)
    layers = {LAYER: [0, 1, 2, 3]}
    common = dict(preset="keras-vis", size=SIZE, steps=STEPS, progress=False)
    scheduler.generate_atlas(model, str(tmp_path / "a.h5"), layers, tune_chunks=True, **common)
    assert seen[-1] == 2  # the chunk loop ran with the cached choice
    seen.clear()
    scheduler.generate_atlas(model, str(tmp_path / "b.h5"), layers, **common)
    assert seen[-1] is None  # off: the device rule


def test_an_unwritable_cache_folder_keeps_the_choice_for_the_run(model, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("JAXVIS_CHUNK_CACHE", str(blocker / "sub" / "chunks.json"))  # no folder
    monkeypatch.setattr(chunk_tune, "MIN_WORK", 1)
    _fake_rates(monkeypatch, {1: 1.0, 2: 5.0, 4: 1.0})
    notes = []
    assert chunk_tune.choose(model, _prog(model), LAYER, SIZE, 64, notes.append) == 2
    assert "could not write" in notes[-1] and sorted(p.name for p in tmp_path.iterdir()) == [
        "a-file"
    ]
