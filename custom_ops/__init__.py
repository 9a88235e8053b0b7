"""custom_ops: stateless TensorFlow ops with hand-written gradients (no Keras)."""

from custom_ops.deform_conv import deform_conv2d
from custom_ops.roi_align import roi_align
from custom_ops.roi_pool import roi_pool
