"""Models: VGG16 and the protocol the engine needs from any model."""

from jaxvis.models.model import FeatureModel, vgg16
from jaxvis.models.vgg16 import LayerInfo
from jaxvis.models.weights import WeightsInfo

__all__ = ["FeatureModel", "LayerInfo", "WeightsInfo", "vgg16"]
