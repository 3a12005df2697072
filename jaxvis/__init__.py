"""jaxvis: batched activation maximization for ConvNets in JAX/Flax.

Names backed by jax are imported on first use (PEP 562), so that ``import jaxvis.atlas``
and ``from jaxvis import open_atlas`` read atlases without importing jax.
"""

import importlib

from jaxvis.errors import JaxvisError

__version__ = "0.1.0"

__all__ = [
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

# Public name -> module that defines it, imported on first attribute access.
_LAZY = {
    "FeatureModel": "jaxvis.models",
    "LayerInfo": "jaxvis.models",
    "WeightsInfo": "jaxvis.models",
    "vgg16": "jaxvis.models",
    "alexnet": "jaxvis.models",
    "attribute": "jaxvis.attribution",
    "from_flax": "jaxvis.models.flax_model",
    "from_keras": "jaxvis.models.keras_model",
    "load_keras": "jaxvis.models.keras_model",
    "open_atlas": "jaxvis.atlas",
    "Config": "jaxvis.presets",
    "Visualization": "jaxvis.engine",
    "visualize": "jaxvis.engine",
    "generate_atlas": "jaxvis.scheduler",
}
# Submodules that are part of the public API (objectives, parameterizations, ...).
_SUBMODULES = ("objectives", "optim", "param", "transforms")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxvis.{name}")
    raise AttributeError(f"module 'jaxvis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
