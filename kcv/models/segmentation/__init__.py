"""Segmentation models."""

from kcv.models.segmentation.unet import UNet
