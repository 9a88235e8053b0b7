"""kcv.models.detection: the pieces of two-stage detectors (anchors, matching, sampling, ...)."""

from kcv.models.detection.anchors import (
    AnchorGenerator,
    SingleLevelAnchorGenerator,
    generate_anchors,
)
from kcv.models.detection.cascade import CascadeRoIHeads
from kcv.models.detection.faster_rcnn import FasterRCNN
from kcv.models.detection.fpn import FPN
from kcv.models.detection.matcher import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    Matcher,
    matched_box_targets,
    pairwise_iou,
)
from kcv.models.detection.roi_heads import (
    RoIBoxHead,
    postprocess_detections,
    roi_loss,
    roi_targets,
    select_detections,
)
from kcv.models.detection.rpn import RPNHead, generate_proposals, rpn_loss, rpn_targets
from kcv.models.detection.sampler import (
    BalancedPositiveNegativeSampler,
    first_true_indices,
    image_seeds,
)
from kcv.models.detection.torchvision_finetune import torchvision_labels
from kcv.models.detection.torchvision_port import (
    TorchvisionFasterRCNN,
    faster_rcnn_from_torchvision,
)
