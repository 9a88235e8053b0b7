"""kcv.losses: losses as a function plus a serializable `keras.losses.Loss` class."""

from kcv.losses.detection import IoULoss, SmoothL1Loss, box_iou_loss, smooth_l1_loss
from kcv.losses.focal import FocalLoss, dense_focal_loss, sigmoid_focal_loss
from kcv.losses.generative import (
    AdversarialLoss,
    CycleConsistencyLoss,
    adversarial_loss,
    cycle_consistency_loss,
    gaussian_kl,
)
from kcv.losses.keypoints import MaskedL2Loss, masked_l2_loss, stage_losses
from kcv.losses.metric_learning import (
    AMSoftmaxLoss,
    ArcFaceLoss,
    ContrastiveLoss,
    TripletLoss,
    am_softmax_loss,
    arcface_loss,
    contrastive_loss,
    pairwise_distances,
    triplet_loss,
)
from kcv.losses.segmentation import (
    BCEDiceLoss,
    DiceFocalLoss,
    DiceLoss,
    TverskyLoss,
    WeightedCrossentropy,
    bce_dice_loss,
    dice_focal_loss,
    dice_loss,
    tversky_loss,
    weighted_crossentropy,
)
