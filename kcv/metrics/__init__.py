"""kcv.metrics: segmentation and detection metrics as `keras.metrics.Metric`."""

from kcv.metrics.segmentation import DiceCoefficient, MeanIoU
