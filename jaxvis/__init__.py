"""jaxvis: batched activation maximization for ConvNets in JAX/Flax."""

from jaxvis.errors import JaxvisError
from jaxvis.models import FeatureModel, LayerInfo, WeightsInfo, vgg16

__version__ = "0.1.0"

__all__ = [
    "FeatureModel",
    "JaxvisError",
    "LayerInfo",
    "WeightsInfo",
    "__version__",
    "vgg16",
]
