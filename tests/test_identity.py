"""An atlas's identity is built from what each part of the recipe says about itself, so a
resume with any single knob changed is refused, naming the field, before anything is
written; and the unchanged run resumes."""

from __future__ import annotations

import dataclasses
import hashlib

import optax
import pytest

import jaxvis
from jaxvis import objectives, optim, presets, transforms
from jaxvis import param as jparam
from jaxvis.atlas import open_atlas
from jaxvis.errors import JaxvisError
from jaxvis.scheduler import generate_atlas

LAYER = "block1_conv1"
RUN = {"size": 32, "steps": 2, "seed": 0}
LUCID = presets.get("lucid")
KERAS_VIS = presets.get("keras-vis")


def lucid_with(**kw):
    return dataclasses.replace(LUCID, **kw)


def keras_vis_with(**kw):
    return dataclasses.replace(KERAS_VIS, **kw)


def unfused(size):
    return transforms.standard_transforms(fused=False)


def wider_jitter(size):
    return transforms.standard_transforms(jitters=(8, 2))


def narrower_scales(size):
    return transforms.standard_transforms(scales=(0.95, 1.0, 1.05))


def no_rotation(size):
    return transforms.standard_transforms(angles=(0.0,))


def other_scales(size):
    return transforms.compose(
        transforms.pad(12), transforms.jitter(4), transforms.random_scale([0.9, 1.1])
    )


def more_jitter(size):
    return transforms.compose(
        transforms.pad(12), transforms.jitter(8), transforms.random_scale([0.9, 1.1])
    )


def keras_vis_heavier_tv(layer):
    return objectives.channel(layer, pre=False) - 20 * objectives.total_variation(beta=2.0)


@pytest.fixture(scope="module")
def model():
    return jaxvis.vgg16(None)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _atlas(model, path, preset, **run):
    return generate_atlas(
        model, str(path), {LAYER: [0]}, preset=preset, progress=False, **{**RUN, **run}
    )


LUCID_KNOBS = [
    (
        "learning rate",
        {"preset": lucid_with(optimizer=optim.spec(optax.adam, learning_rate=0.1))},
        "config.optimizer",
    ),
    (
        "adam b2",
        {"preset": lucid_with(optimizer=optim.spec(optax.adam, learning_rate=0.05, b2=0.99))},
        "config.optimizer",
    ),
    (
        "adam eps",
        {"preset": lucid_with(optimizer=optim.spec(optax.adam, learning_rate=0.05, eps=1e-6))},
        "config.optimizer",
    ),
    ("fused transforms", {"preset": lucid_with(transforms=unfused)}, "config.transforms"),
    ("jitter", {"preset": lucid_with(transforms=wider_jitter)}, "config.transforms"),
    ("scale set", {"preset": lucid_with(transforms=narrower_scales)}, "config.transforms"),
    ("angles", {"preset": lucid_with(transforms=no_rotation)}, "config.transforms"),
    (
        "param",
        {"preset": lucid_with(param=lambda s: jparam.fft_image(s, decorrelate=False))},
        "config.param",
    ),
    (
        "objective",
        {
            "preset": lucid_with(
                objective=lambda la: objectives.channel(la.removesuffix(":pre"), pre=False)
            )
        },
        f"layers.{LAYER}.objective",
    ),
    ("steps", {"steps": 3}, "config.steps"),
    ("size", {"size": 40}, "config.size"),
    ("seed", {"seed": 1}, "config.seed"),
]
KERAS_VIS_KNOBS = [
    (
        "learning rate",
        {
            "preset": keras_vis_with(
                optimizer=optim.spec(optim.keras_vis_rmsprop, learning_rate=2.0)
            )
        },
        "config.optimizer",
    ),
    (
        "rmsprop eps",
        {"preset": keras_vis_with(optimizer=optim.spec(optim.keras_vis_rmsprop, eps=1e-5))},
        "config.optimizer",
    ),
    (
        "rmsprop decay",
        {"preset": keras_vis_with(optimizer=optim.spec(optim.keras_vis_rmsprop, decay=0.9))},
        "config.optimizer",
    ),
    (
        "grad norm",
        {"preset": keras_vis_with(optimizer=optim.spec(optim.keras_vis_rmsprop, grad_norm="l2"))},
        "config.optimizer",
    ),
    (
        "jitter",
        {"preset": keras_vis_with(transforms=lambda s: transforms.roll_jitter(8))},
        "config.transforms",
    ),
    ("keep_best", {"preset": keras_vis_with(keep_best=False)}, "config.keep_best"),
    (
        "objective weights",
        {"preset": keras_vis_with(objective=keras_vis_heavier_tv)},
        f"layers.{LAYER}.objective",
    ),
    ("steps", {"steps": 3}, "config.steps"),
    ("size", {"size": 40}, "config.size"),
    ("seed", {"seed": 1}, "config.seed"),
]


@pytest.fixture(scope="module")
def atlases(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("identity")
    return {
        "lucid": _atlas(model, folder / "lucid.h5", "lucid"),
        "keras-vis": _atlas(model, folder / "keras-vis.h5", "keras-vis"),
    }


def _refused(atlases, model, preset, change, field):
    path = atlases[preset]
    before = _digest(path)
    run = {"preset": preset, **change}
    with pytest.raises(JaxvisError) as err:
        _atlas(model, path, **run)
    message = str(err.value)
    assert field in message and "--overwrite" in message and "\n" not in message, message
    assert _digest(path) == before


@pytest.mark.parametrize("name, change, field", LUCID_KNOBS, ids=[k[0] for k in LUCID_KNOBS])
def test_lucid_knob_refused_on_resume(atlases, model, name, change, field):
    _refused(atlases, model, "lucid", change, field)


@pytest.mark.parametrize(
    "name, change, field", KERAS_VIS_KNOBS, ids=[k[0] for k in KERAS_VIS_KNOBS]
)
def test_keras_vis_knob_refused_on_resume(atlases, model, name, change, field):
    _refused(atlases, model, "keras-vis", change, field)


def test_more_jitter_and_other_scales_differ():
    """Jitter and the scale set appear, with their values, in the transforms' description."""
    assert transforms.describe(more_jitter(32)) != transforms.describe(other_scales(32))
    assert "0.9" in transforms.describe(other_scales(32))


@pytest.mark.parametrize("preset", ["lucid", "keras-vis"])
def test_model_dtype_and_weights_refused(atlases, model, preset):
    path = atlases[preset]
    for other, field in [
        (jaxvis.vgg16(None, dtype="bfloat16"), "config.dtype"),
        (jaxvis.vgg16(None, seed=1), "weights.seed"),
        (dataclasses.replace(model, name="vgg16-copy"), "model"),
    ]:
        with pytest.raises(JaxvisError, match=field.replace(".", r"\.")):
            _atlas(other, path, preset)


def test_same_run_resumes_and_config_has_no_placeholder(atlases, model):
    path = atlases["lucid"]
    generate_atlas(model, path, {LAYER: [0, 1]}, preset="lucid", progress=False, **RUN)
    with open_atlas(path) as atlas:
        assert sorted(atlas[LAYER].filters.tolist()) == [0, 1]
        config = atlas.config
        assert "{layer}" not in str(config) and "objective" not in config
        assert "learning_rate=0.05" in config["optimizer"] and "b2=0.999" in config["optimizer"]
        assert atlas[LAYER].objective_description == f"channel({LAYER}:pre)"
        assert atlas[LAYER].output_kind == "map"


def test_optimizer_spec_describes_every_argument():
    spec = optim.spec(optim.keras_vis_rmsprop, decay=0.9)
    assert spec.description == (
        "keras_vis_rmsprop(learning_rate=1.0, decay=0.9, eps=1e-07, grad_norm='rms')"
    )
    with pytest.raises(JaxvisError, match="bad arguments for adam"):
        optim.spec(optax.adam, learnin_rate=0.1)
