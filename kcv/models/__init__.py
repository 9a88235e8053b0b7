"""kcv.models: functional model builders (backbones, segmentation, detection)."""

from kcv.models.segmentation import DeepLabV3, HRNet, UNet, UNetPlusPlus, prune
