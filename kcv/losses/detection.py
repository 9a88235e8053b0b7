"""Box regression losses: IoU / GIoU / DIoU / CIoU and smooth L1 (function + `keras.losses.Loss`)."""

import keras
import tensorflow as tf

from custom_ops import boxes as box_ops
from kcv.losses._base import ArgumentLoss, check_number
from kcv.losses._targets import check_same_shape

__all__ = ["IoULoss", "SmoothL1Loss", "box_iou_loss", "smooth_l1_loss"]

_IOU_MODES = {
    "iou": box_ops.box_iou,
    "giou": box_ops.generalized_box_iou,
    "diou": box_ops.distance_box_iou,
    "ciou": box_ops.complete_box_iou,
}


def _float32_pair(y_true, y_pred):
    """`(y_true, y_pred)` as float32 tensors of one shape, and the float dtype to return."""
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    check_same_shape(y_true, y_pred)
    dtype = y_pred.dtype if y_pred.dtype.is_floating else tf.float32
    return tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32), dtype


def _check_mode(mode):
    if mode not in _IOU_MODES:
        raise ValueError(f"`mode` must be one of {tuple(_IOU_MODES)}. Received: mode={mode!r}")


def box_iou_loss(y_true, y_pred, mode="iou"):
    """`1 - IoU` (or GIoU, DIoU, CIoU) of matching yxyx boxes, one value per box.

    Formula:
        With C the smallest box enclosing both, rho the distance between the centres, c the
        diagonal of C, and v = 4 / pi^2 (atan(w_t / h_t) - atan(w_p / h_p))^2:

            iou:  1 - IoU
            giou: 1 - IoU + |C minus (A union B)| / |C|
            diou: 1 - IoU + rho^2 / c^2
            ciou: 1 - IoU + rho^2 / c^2 + alpha v,  alpha = v / (1 - IoU + v) (no gradient)

    Args:
        y_true: float Tensor `[..., 4]`, target boxes `[y1, x1, y2, x2]`.
        y_pred: float Tensor `[..., 4]`, predicted boxes, same shape.
        mode: "iou" (`1 - IoU`), "giou" (`1 - GIoU`, in [0, 2]: above 1 for disjoint boxes),
            "diou" (`1 - IoU + rho^2 / c^2`) or "ciou" (`1 - IoU + rho^2 / c^2 + alpha * v`,
            `alpha` without gradient), as the papers define them.

    Returns:
        float Tensor `[...]`, the loss of each box pair (no reduction).

    Example:
        >>> box_iou_loss([[0.0, 0.0, 1.0, 1.0]], [[0.0, 2.0, 1.0, 3.0]], mode="giou").numpy()
        array([1.3333334], dtype=float32)

    Reference:
        Yu et al., "UnitBox", ACM MM 2016 (IoU loss); Rezatofighi et al., "Generalized
        Intersection over Union", CVPR 2019; Zheng et al., "Distance-IoU Loss", AAAI 2020.
    """
    _check_mode(mode)
    y_true, y_pred, dtype = _float32_pair(y_true, y_pred)
    return tf.cast(1.0 - _IOU_MODES[mode](y_true, y_pred, aligned=True), dtype)


def smooth_l1_loss(y_true, y_pred, beta=1.0):
    """Smooth L1 loss per element (the Huber loss divided by `beta`).

    Formula:
        With `x = y_pred - y_true`: `0.5 x^2 / beta` where `|x| < beta`, else `|x| - 0.5 beta`
        (plain `|x|` for `beta = 0`).

    Args:
        y_true, y_pred: float Tensors of the same shape (e.g. box deltas `[..., 4]`).
        beta: the transition point (> 0, or 0 for plain L1), as torchvision's
            `smooth_l1_loss(beta=...)`.

    Returns:
        float Tensor, the shape of the inputs (no reduction).

    Example:
        >>> smooth_l1_loss([0.0, 0.0], [0.5, 3.0]).numpy()
        array([0.125, 2.5  ], dtype=float32)

    Reference:
        Girshick, "Fast R-CNN", ICCV 2015, eq. (3).
    """
    check_number(beta, "beta")
    y_true, y_pred, dtype = _float32_pair(y_true, y_pred)
    diff = tf.abs(y_pred - y_true)
    if beta == 0:
        return tf.cast(diff, dtype)
    return tf.cast(tf.where(diff < beta, 0.5 * tf.square(diff) / beta, diff - 0.5 * beta), dtype)


@keras.saving.register_keras_serializable(package="kcv")
class IoULoss(ArgumentLoss):
    """Box IoU-family loss with a Keras reduction over the boxes. See `box_iou_loss`.

    Formula:
        `loss[b, n] = 1 - IoU(y_true[b, n], y_pred[b, n])` (or the GIoU/DIoU/CIoU form of
        `box_iou_loss`), then the Keras reduction over all boxes.

    Args:
        mode: "iou", "giou", "diou" or "ciou" (default "iou").
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = IoULoss(mode="giou")
        >>> round(float(loss([[0.0, 0.0, 1.0, 1.0]], [[0.0, 2.0, 1.0, 3.0]])), 5)  # disjoint
        1.33333

    Reference:
        Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019; Zheng et al.,
        "Distance-IoU Loss", AAAI 2020.
    """

    _function = staticmethod(box_iou_loss)

    def __init__(self, mode="iou", reduction="sum_over_batch_size", name="iou_loss", dtype=None):
        _check_mode(mode)
        super().__init__(reduction=reduction, name=name, dtype=dtype, mode=mode)


@keras.saving.register_keras_serializable(package="kcv")
class SmoothL1Loss(ArgumentLoss):
    """Smooth L1 loss, averaged over the last axis, then reduced. See `smooth_l1_loss`.

    Formula:
        `loss[b] = mean_j smooth_l1(y_pred[b, j] - y_true[b, j])`, then the Keras reduction.

    Args:
        beta: transition point between the quadratic and linear parts (default 1.0;
            Detectron2's box heads use 1/9 or 0).
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = SmoothL1Loss(beta=1.0)
        >>> float(loss([[0.0, 0.0]], [[0.5, 3.0]]))  # mean of 0.125 and 2.5
        1.3125

    Reference:
        Girshick, "Fast R-CNN", ICCV 2015, eq. (3).
    """

    _function = staticmethod(smooth_l1_loss)

    def __init__(self, beta=1.0, reduction="sum_over_batch_size", name="smooth_l1_loss",
                 dtype=None):
        check_number(beta, "beta")
        super().__init__(reduction=reduction, name=name, dtype=dtype, beta=beta)

    def call(self, y_true, y_pred):
        return tf.reduce_mean(super().call(y_true, y_pred), axis=-1)
