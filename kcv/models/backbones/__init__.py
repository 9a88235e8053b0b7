"""Backbones: MobileNet v1/v2 (keras.applications-exact), ResNet v1/v2, VGG16."""

from kcv.models.backbones.mobilenet import MobileNetV1, MobileNetV2
from kcv.models.backbones.resnet import ResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152
from kcv.models.backbones.torchvision_resnet import (
    FrozenBatchNormalization,
    resnet_from_torchvision,
    torchvision_resnet,
)
from kcv.models.backbones.vgg import VGG16

__all__ = ["MobileNetV1", "MobileNetV2", "ResNet", "ResNet18", "ResNet34", "ResNet50",
           "ResNet101", "ResNet152", "VGG16", "FrozenBatchNormalization", "resnet_from_torchvision", "torchvision_resnet"]
