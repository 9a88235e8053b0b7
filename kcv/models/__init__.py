"""kcv.models: functional model builders (backbones, segmentation, detection)."""

from kcv.models.segmentation import UNet, UNetPlusPlus, prune
