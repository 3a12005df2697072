"""Filter and layer specs: the forms users type, and one-line errors for the rest."""

from __future__ import annotations

import pytest

from jaxvis.errors import JaxvisError
from jaxvis.filterspec import parse_filters, parse_layers, select
from jaxvis.models.vgg16 import FEATURE_LAYERS


@pytest.mark.parametrize(
    "spec, want",
    [
        ("all", list(range(8))),
        ("0-3", [0, 1, 2, 3]),
        ("3,7,1", [1, 3, 7]),
        ("0-2,6", [0, 1, 2, 6]),
        (" 5 , 2-3 ", [2, 3, 5]),
        ("1,1,0-2", [0, 1, 2]),  # duplicates are fine and dropped
        ("7", [7]),
    ],
)
def test_forms(spec, want):
    assert parse_filters(spec, 8) == want


def test_random_is_reproducible_per_seed_and_layer_and_nested():
    a = parse_filters("random:6", 64, seed=0, layer="block1_conv1")
    assert a == sorted(a) and len(set(a)) == 6 and all(0 <= i < 64 for i in a)
    assert a == parse_filters("random:6", 64, seed=0, layer="block1_conv1")
    assert a != parse_filters("random:6", 64, seed=1, layer="block1_conv1")
    assert a != parse_filters("random:6", 64, seed=0, layer="block1_conv2")
    assert set(a) <= set(parse_filters("random:12", 64, seed=0, layer="block1_conv1"))
    assert parse_filters("random:64", 64) == list(range(64))


def test_random_is_pinned():
    # Pinned values: Python's salted hash() or a numpy stream change would move them.
    assert parse_filters("random:3", 10, seed=0, layer="x") == [0, 3, 9]
    assert parse_filters("random:4", 512, seed=0, layer="block5_conv3") == [244, 351, 388, 481]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty filter spec"),
        ("1,,2", "empty filter spec"),
        ("5-2", "runs backwards; write 2-5"),
        ("0-64", "layer 'conv' has 64 filters"),
        ("64", "out of range"),
        ("a", "'a' is not a non-negative integer"),
        ("1.5", "not a non-negative integer"),
        ("-3", "'-3' is negative; filters are 0 to"),
        ("random:0", "K must be 1 to 64"),
        ("random:65", "K must be 1 to 64"),
        ("random:x", "not a non-negative integer"),
        ("all,3", "stand alone"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(JaxvisError, match=match) as err:
        parse_filters(spec, 64, layer="conv")
    assert "\n" not in str(err.value)


class FakeModel:
    """The part of FeatureModel that parse_layers uses, without loading weights."""

    name = "vgg16"
    layers = FEATURE_LAYERS
    conv_layers = [la.name for la in FEATURE_LAYERS if la.kind == "conv"]
    unavailable = {"fc1": "needs the classifier head"}

    def layer(self, name):
        if name in self.unavailable:
            raise JaxvisError(f"layer {name!r} {self.unavailable[name]}")
        return next(la for la in self.layers if la.name == name)

    def num_filters(self, name):
        return self.layer(name).filters


def test_layers():
    m = FakeModel()
    assert parse_layers("block3_conv1,block1_conv2", m) == ["block3_conv1", "block1_conv2"]
    assert parse_layers("all-conv", m) == m.conv_layers and len(m.conv_layers) == 13
    assert parse_layers("conv,block1_conv1", m) == m.conv_layers
    with pytest.raises(
        JaxvisError,
        match="unknown layer 'block6_conv1' for vgg16; valid layers: all-conv, block1_conv1",
    ):
        parse_layers("block1_conv1,block6_conv1", m)
    with pytest.raises(JaxvisError, match="needs the classifier head"):
        parse_layers("fc1", m)
    with pytest.raises(JaxvisError, match="empty layer spec"):
        parse_layers("", m)


def test_select_draws_per_layer():
    chosen = select(FakeModel(), "block1_conv1,block5_conv1", "random:4", seed=3)
    assert list(chosen) == ["block1_conv1", "block5_conv1"]
    assert all(len(v) == 4 for v in chosen.values())
    assert max(chosen["block5_conv1"]) < 512
    assert chosen["block1_conv1"] == parse_filters("random:4", 64, seed=3, layer="block1_conv1")


def test_non_ascii_digits_are_a_clean_error():
    with pytest.raises(JaxvisError):
        parse_filters("²", 64)
    with pytest.raises(JaxvisError):
        parse_filters("1-²", 64)
