"""kcv.models: functional model builders (backbones, segmentation, detection)."""

from kcv.models.backbones import (MobileNetV1, MobileNetV2, ResNet18, ResNet34, ResNet50,
                                  ResNet101, ResNet152, VGG16)

from kcv.models.segmentation import DeepLabV3, HRNet, UNet, UNetPlusPlus, prune
