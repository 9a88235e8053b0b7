"""Box regression losses: IoU / GIoU / DIoU / CIoU and smooth L1 (function + `keras.losses.Loss`)."""

import keras
import tensorflow as tf

from custom_ops import boxes as box_ops

_IOU_MODES = {
    "iou": box_ops.box_iou,
    "giou": box_ops.generalized_box_iou,
    "diou": box_ops.distance_box_iou,
    "ciou": box_ops.complete_box_iou,
}


def _check_mode(mode):
    if mode not in _IOU_MODES:
        raise ValueError(f"`mode` must be one of {tuple(_IOU_MODES)}. Received: mode={mode!r}")


def box_iou_loss(y_true, y_pred, mode="iou"):
    """`1 - IoU` (or GIoU, DIoU, CIoU) of matching yxyx boxes, one value per box.

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
    y_pred = tf.convert_to_tensor(y_pred)
    dtype = y_pred.dtype if y_pred.dtype.is_floating else tf.float32
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    if y_true.shape.rank is not None and y_pred.shape.rank is not None and (
            not y_true.shape.is_compatible_with(y_pred.shape)):
        raise ValueError(
            "`y_true` and `y_pred` must have the same shape [..., 4]. "
            f"Received: y_true.shape={y_true.shape}, y_pred.shape={y_pred.shape}"
        )
    return tf.cast(1.0 - _IOU_MODES[mode](y_true, y_pred, aligned=True), dtype)


def smooth_l1_loss(y_true, y_pred, beta=1.0):
    """Smooth L1 (Huber with slope 1) per element: `0.5 x^2 / beta` if `|x| < beta`, else `|x| - 0.5 beta`.

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
    if float(beta) < 0:
        raise ValueError(f"`beta` must be >= 0. Received: beta={beta!r}")
    y_pred = tf.convert_to_tensor(y_pred)
    dtype = y_pred.dtype if y_pred.dtype.is_floating else tf.float32
    diff = tf.abs(tf.cast(y_pred, tf.float32) - tf.cast(y_true, tf.float32))
    if beta == 0:
        return tf.cast(diff, dtype)
    return tf.cast(tf.where(diff < beta, 0.5 * tf.square(diff) / beta, diff - 0.5 * beta), dtype)


@keras.saving.register_keras_serializable(package="kcv")
class IoULoss(keras.losses.Loss):
    """Box IoU-family loss with a Keras reduction over the boxes. See `box_iou_loss`.

    Args:
        mode: "iou", "giou", "diou" or "ciou".
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = kcv.losses.IoULoss(mode="ciou")
        >>> gt_boxes = tf.constant([[[0.0, 0.0, 10.0, 10.0]]])  # [B, N, 4]
        >>> float(loss(gt_boxes, gt_boxes))  # the same boxes: no loss
        0.0

    Reference:
        Zheng et al., "Distance-IoU Loss", AAAI 2020.
    """

    def __init__(self, mode="iou", reduction="sum_over_batch_size", name="iou_loss", dtype=None):
        _check_mode(mode)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.mode = mode

    def call(self, y_true, y_pred):
        return box_iou_loss(y_true, y_pred, self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="kcv")
class SmoothL1Loss(keras.losses.Loss):
    """Smooth L1 loss, averaged over the last axis, then reduced. See `smooth_l1_loss`.

    Args:
        beta: transition point between the quadratic and linear parts (default 1.0;
            Detectron2's box heads use 1/9 or 0).
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = kcv.losses.SmoothL1Loss(beta=1.0 / 9)
        >>> target_deltas = tf.zeros([1, 4])
        >>> predicted_deltas = tf.constant([[0.5, 0.5, 0.5, 0.5]])
        >>> value = loss(target_deltas, predicted_deltas)  # |x| >= beta: |x| - beta / 2
        >>> value.shape
        TensorShape([])

    Reference:
        Girshick, "Fast R-CNN", ICCV 2015.
    """

    def __init__(self, beta=1.0, reduction="sum_over_batch_size", name="smooth_l1_loss",
                 dtype=None):
        if float(beta) < 0:
            raise ValueError(f"`beta` must be >= 0. Received: beta={beta!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.beta = beta

    def call(self, y_true, y_pred):
        return tf.reduce_mean(smooth_l1_loss(y_true, y_pred, self.beta), axis=-1)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}
