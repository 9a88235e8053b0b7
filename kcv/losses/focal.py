"""Focal loss (RetinaNet): a function giving the element-wise loss and a `keras.losses.Loss` class."""

import keras
import tensorflow as tf

from kcv.losses.segmentation import _check_alpha, dense_focal_loss

_MODES = ("sigmoid", "dense")


def _check_focal_args(alpha, gamma):
    if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"`alpha` must be None or in [0, 1]. Received: alpha={alpha!r}")
    if float(gamma) < 0:
        raise ValueError(f"`gamma` must be >= 0. Received: gamma={gamma!r}")


def sigmoid_focal_loss(y_true, logits, alpha=0.25, gamma=2.0, from_logits=True):
    """Binary (sigmoid) focal loss of RetinaNet, element-wise.

    Formula: with `p = sigmoid(logits)`, `p_t = p` where `y = 1` and `1 - p` where `y = 0`,
    `alpha_t = alpha` where `y = 1` and `1 - alpha` where `y = 0`:
    `FL = -alpha_t * (1 - p_t)**gamma * log(p_t)`. Soft targets in [0, 1] are allowed (the
    cross-entropy and the weights are then interpolated, as torchvision's `sigmoid_focal_loss`).

    Args:
        y_true: targets in {0, 1} (or [0, 1]), same shape as `logits`.
        logits: float Tensor of any shape (probabilities with `from_logits=False`).
        alpha: weight of the positive class in [0, 1], or None for no balancing.
        gamma: focusing parameter >= 0 (0 gives the (balanced) binary cross-entropy).
        from_logits: whether `logits` are logits (default) or probabilities.

    Returns:
        float Tensor, the shape of `logits`: the loss of each element (no reduction).

    Example:
        >>> sigmoid_focal_loss([[1.0, 0.0]], [[2.0, -1.0]]).numpy().round(5)
        array([[0.00045, 0.01699]], dtype=float32)

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, eq. (5).
    """
    _check_focal_args(alpha, gamma)
    logits = tf.convert_to_tensor(logits)
    dtype = logits.dtype if logits.dtype.is_floating else tf.float32
    x = tf.cast(logits, tf.float32)
    y = tf.cast(y_true, tf.float32)
    if from_logits:
        p = tf.sigmoid(x)
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.broadcast_to(y, tf.shape(x)), logits=x)
    else:
        eps = keras.backend.epsilon()
        p = tf.clip_by_value(x, eps, 1.0 - eps)
        ce = -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))
    p_t = p * y + (1.0 - p) * (1.0 - y)
    loss = ce * tf.pow(1.0 - p_t, gamma)
    if alpha is not None:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return tf.cast(loss, dtype)


@keras.saving.register_keras_serializable(package="kcv")
class FocalLoss(keras.losses.Loss):
    """Focal loss with a Keras reduction: RetinaNet's sigmoid form, or dense segmentation.

    `mode="sigmoid"` (default): the element-wise `sigmoid_focal_loss` (every output an
    independent binary problem, as in detection) averaged over the last axis (the classes), as
    Keras' binary losses do, and then reduced over the batch by `reduction`. With `alpha` set
    and `from_logits`, it equals `keras.losses.BinaryFocalCrossentropy(apply_class_balancing=
    True, alpha=alpha, gamma=gamma, from_logits=True)`. For detection one usually sums and
    divides by the number of positive anchors: `reduction="sum"` and scale by
    `1 / num_positives`.

    `mode="dense"`: segmentation, `kcv.losses.dense_focal_loss` per image. Multi-class
    predictions `[B, H, W, C]` use the softmax focal loss `-sum_c alpha_c t_c (1 - p_c)**gamma
    log p_c` against sparse `[B, H, W]` or one-hot targets; one sigmoid channel `[B, H, W, 1]`
    is binary (alpha on the foreground, `1 - alpha` on the background). `alpha` may be a list
    of per-class weights, and pixels labelled `ignore_index` are left out of the mean.

    Args:
        alpha: `mode="sigmoid"`: weight of the positive class in [0, 1], or None (no
            balancing). `mode="dense"`: also a list of non-negative per-class weights
            (binary: `[background, foreground]`). Default 0.25.
        gamma: focusing parameter >= 0. Default 2.
        from_logits: whether predictions are logits (default True).
        mode: `"sigmoid"` (default) or `"dense"`.
        ignore_index: `mode="dense"` only: the label value of pixels to leave out.
        reduction: Keras reduction ("sum_over_batch_size", "sum", "mean", "none", ...).
        name: loss name.
        dtype: loss dtype (Keras).

    Example:
        >>> loss = kcv.losses.FocalLoss(alpha=0.25, gamma=2.0)
        >>> labels, class_logits = tf.constant([[1.0, 0.0]]), tf.constant([[2.0, -2.0]])
        >>> value = loss(labels, class_logits)
        >>> value.shape
        TensorShape([])
        >>> seg = kcv.losses.FocalLoss(alpha=[0.1, 1.0, 1.0, 1.0], mode="dense", ignore_index=255)

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=True, mode="sigmoid",
                 ignore_index=None, reduction="sum_over_batch_size", name="focal_loss",
                 dtype=None):
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
        if mode == "dense" and isinstance(alpha, (list, tuple)):
            _check_alpha(alpha)
            _check_focal_args(None, gamma)
        else:
            _check_focal_args(alpha, gamma)
        if mode == "sigmoid" and ignore_index is not None:
            raise ValueError("`ignore_index` needs mode='dense'. "
                             f"Received: ignore_index={ignore_index!r}, mode={mode!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.alpha = alpha
        self.gamma = gamma
        self.from_logits = from_logits
        self.mode = mode
        self.ignore_index = ignore_index

    def call(self, y_true, y_pred):
        if self.mode == "dense":
            return dense_focal_loss(y_true, y_pred, self.gamma, self.alpha, self.from_logits,
                                    self.ignore_index)
        loss = sigmoid_focal_loss(y_true, y_pred, self.alpha, self.gamma, self.from_logits)
        return tf.reduce_mean(loss, axis=-1)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma,
                "from_logits": self.from_logits, "mode": self.mode,
                "ignore_index": self.ignore_index}
