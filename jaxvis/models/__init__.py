"""Models: VGG16, AlexNet and the protocol the engine needs from any model."""

from jaxvis.models.feature_model import FeatureModel, LayerInfo
from jaxvis.models.model import alexnet, vgg16
from jaxvis.models.weights_info import WeightsInfo

__all__ = ["FeatureModel", "LayerInfo", "WeightsInfo", "alexnet", "vgg16"]
