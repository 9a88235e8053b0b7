"""kcv.models: functional model builders (backbones, segmentation, detection)."""

from kcv.models.segmentation import HRNet, UNet, UNetPlusPlus, prune
