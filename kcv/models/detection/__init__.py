"""kcv.models.detection: the pieces of two-stage detectors (anchors, matching, sampling, ...)."""

from kcv.models.detection.anchors import AnchorGenerator, generate_anchors
