"""Models: VGG16 and the protocol the engine needs from any model."""

from jaxvis.models.feature_model import FeatureModel, LayerInfo
from jaxvis.models.model import vgg16
from jaxvis.models.weights_info import WeightsInfo

__all__ = ["FeatureModel", "LayerInfo", "WeightsInfo", "vgg16"]
