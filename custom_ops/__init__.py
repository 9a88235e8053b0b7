"""custom_ops: stateless TensorFlow ops with hand-written gradients (no Keras).

The ops are functions of this package (`custom_ops.roi_align`, `custom_ops.nms`, ...). Where a
function has the name of the module that defines it (`roi_align`, `roi_pool`, `nms`), the package
attribute is the function, so the module's other functions are exported here too:
`custom_ops.multiscale_roi_align`, `custom_ops.fpn_levels`, `custom_ops.batched_nms`, ...
`custom_ops.boxes` is the module of box utilities (`custom_ops.boxes.box_iou`, ...).
"""

from custom_ops import boxes
from custom_ops.deform_conv import deform_conv2d
from custom_ops.nms import batched_nms, diou_nms, nms, soft_nms, weighted_nms
from custom_ops.roi_align import fpn_levels, multiscale_roi_align, roi_align
from custom_ops.roi_pool import roi_pool

__all__ = ["batched_nms", "boxes", "deform_conv2d", "diou_nms", "fpn_levels",
           "multiscale_roi_align", "nms", "roi_align", "roi_pool", "soft_nms", "weighted_nms"]
