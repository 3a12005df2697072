"""The curated public API: the list is pinned, and every name resolves."""

import jaxvis

PUBLIC = [
    "Config",
    "FeatureModel",
    "JaxvisError",
    "LayerInfo",
    "Visualization",
    "WeightsInfo",
    "__version__",
    "alexnet",
    "attribute",
    "from_flax",
    "from_keras",
    "generate_atlas",
    "load_keras",
    "objectives",
    "open_atlas",
    "optim",
    "param",
    "transforms",
    "vgg16",
    "visualize",
]


def test_public_names_are_pinned_and_resolve():
    assert sorted(jaxvis.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(jaxvis, name) is not None, name
    assert callable(jaxvis.objectives.channel) and callable(jaxvis.param.fft_image)
