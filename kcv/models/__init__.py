"""kcv.models: functional model builders (backbones, segmentation, detection)."""

from kcv.models.backbones import (
    VGG16,
    MobileNetV1,
    MobileNetV2,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
)
from kcv.models.pose import HRNetPose, OpenPose
from kcv.models.segmentation import DeepLabV3, HRNet, UNet, UNetPlusPlus, prune
from kcv.models.siamese import SiameseNetwork
