"""Attribution maps: gradient, SmoothGrad, Integrated Gradients, Grad-CAM, Grad-CAM++,
Score-CAM, guided backpropagation and guided Grad-CAM, batched (docs/attribution.md).

The core's names are imported on first use (PEP 562), so that reading a maps file
(``jaxvis.attribution.maps_file``) does not import jax.
"""

import importlib

__all__ = ["METHODS", "Attributor", "Target", "attribute", "parse_target", "prepare"]


def __getattr__(name: str):
    if name in __all__:
        value = getattr(importlib.import_module("jaxvis.attribution.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxvis.attribution' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
