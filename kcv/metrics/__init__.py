"""kcv.metrics: segmentation and detection metrics as `keras.metrics.Metric`."""

from kcv.metrics.coco import COCOMeanAveragePrecision, coco_evaluate
from kcv.metrics.segmentation import DiceCoefficient, MeanIoU
