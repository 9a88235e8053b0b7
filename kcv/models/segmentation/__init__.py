"""Segmentation models."""

from kcv.models.segmentation.deeplab import DeepLabV3
from kcv.models.segmentation.hrnet import HRNet
from kcv.models.segmentation.unet import UNet
from kcv.models.segmentation.unet_plus_plus import UNetPlusPlus, prune
