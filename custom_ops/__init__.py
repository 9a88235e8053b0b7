"""custom_ops: stateless TensorFlow ops with hand-written gradients (no Keras)."""

from custom_ops import boxes
from custom_ops.deform_conv import deform_conv2d
from custom_ops.nms import batched_nms, diou_nms, nms, soft_nms, weighted_nms
from custom_ops.roi_align import roi_align
from custom_ops.roi_pool import roi_pool
