"""Focal losses (RetinaNet): the element-wise sigmoid form for detection, the dense (per-image)
form for segmentation, and the `FocalLoss` class with both.

The dense per-pixel terms (`focal_terms`) with `gamma = 0` are the pixel cross-entropy, which
the segmentation losses (`bce_dice_loss`, `weighted_crossentropy`) build on.
"""

import keras
import tensorflow as tf

from kcv.losses._base import ArgumentLoss, check_alpha, check_number
from kcv.losses._targets import check_same_shape, class_weight_vector, dense_targets, num_channels

__all__ = ["FocalLoss", "dense_focal_loss", "sigmoid_focal_loss"]

_EPSILON = 1e-7
_MODES = ("sigmoid", "dense")


def _check_sigmoid_alpha(alpha):
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not 0.0 <= alpha <= 1.0):
        raise ValueError(f"`alpha` must be None or in [0, 1]. Received: alpha={alpha!r}")


def _binary_log_probs(x, from_logits):
    """`(p, log p, log(1 - p))` of float32 logits (or probabilities, clipped away from 0 and 1)."""
    if from_logits:
        return tf.sigmoid(x), tf.math.log_sigmoid(x), tf.math.log_sigmoid(-x)
    p = tf.clip_by_value(x, _EPSILON, 1.0 - _EPSILON)
    return x, tf.math.log(p), tf.math.log(1.0 - p)


def _modulating_factor(one_minus_p_t, gamma):
    """`(1 - p_t)**gamma`, clipped so that its gradient stays finite at `p_t = 1` for gamma < 1."""
    return tf.pow(tf.maximum(one_minus_p_t, _EPSILON), gamma)


def sigmoid_focal_loss(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False):
    """Binary (sigmoid) focal loss of RetinaNet, element-wise.

    Formula:
        With `p` the predicted probability (`sigmoid(y_pred)` with `from_logits=True`),
        `p_t = p` where `y = 1` and `1 - p` where `y = 0`, and `alpha_t = alpha` where `y = 1`
        and `1 - alpha` where `y = 0`:

            FL = -alpha_t * (1 - p_t)**gamma * log(p_t)

        Soft targets in [0, 1] interpolate the cross-entropy and the weights, as torchvision's
        `sigmoid_focal_loss`.

    Args:
        y_true: targets in {0, 1} (or [0, 1]), the shape of `y_pred`.
        y_pred: float Tensor of any shape: probabilities, or logits with `from_logits=True`.
        alpha: weight of the positive class in [0, 1], or None for no balancing (default 0.25).
        gamma: focusing parameter >= 0 (default 2; 0 gives the (balanced) binary
            cross-entropy).
        from_logits: whether `y_pred` holds logits (default False, the Keras convention).

    Returns:
        float Tensor, the shape and float dtype of `y_pred`: the loss of each element (no
        reduction).

    Example:
        >>> sigmoid_focal_loss([[1.0, 0.0]], [[2.0, -1.0]], from_logits=True).numpy().round(5)
        array([[0.00045, 0.01699]], dtype=float32)
        >>> sigmoid_focal_loss([[1.0, 0.0]], [[0.9, 0.2]], gamma=0.0).numpy().round(5)
        array([[0.02634, 0.16736]], dtype=float32)

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, eq. (5).
    """
    _check_sigmoid_alpha(alpha)
    check_number(gamma, "gamma")
    y_pred = tf.convert_to_tensor(y_pred)
    dtype = y_pred.dtype if y_pred.dtype.is_floating else tf.float32
    y_true = tf.convert_to_tensor(y_true)
    check_same_shape(y_true, y_pred)
    y = tf.cast(y_true, tf.float32)
    p, log_p, log_1mp = _binary_log_probs(tf.cast(y_pred, tf.float32), from_logits)
    ce = -(y * log_p + (1.0 - y) * log_1mp)
    p_t = p * y + (1.0 - p) * (1.0 - y)
    loss = ce * _modulating_factor(1.0 - p_t, gamma) if gamma else ce
    if alpha is not None:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return tf.cast(loss, dtype)


def focal_terms(y_true, y_pred, gamma, alpha, from_logits, ignore_index):
    """Per-pixel focal cross-entropy and per-pixel target weight of dense predictions.

    Binary predictions (`C == 1`) are the two classes (background, foreground), so one formula
    covers both: `loss = -sum_c alpha_c * t_c * (1 - p_c)**gamma * log(p_c)`; `gamma = 0` is the
    (class-weighted) cross-entropy.

    Args:
        y_true, y_pred, from_logits, ignore_index: as `dense_focal_loss`.
        gamma: focusing parameter (0 for cross-entropy).
        alpha: `None` or a list of per-class weights (two for binary), from
            `class_weight_vector`.

    Returns:
        `(loss, weight, valid)`, float32 `[B, H, W]` each: the loss of each pixel, the alpha of
        its target class (1 without alpha), and 1 where the pixel counts.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    logits = tf.cast(y_pred, tf.float32)
    probs, onehot, valid = dense_targets(y_true, y_pred, from_logits, ignore_index)
    if y_pred.shape[-1] == 1:
        p, log_p, log_1mp = _binary_log_probs(logits, from_logits)
        probs = tf.concat([1.0 - p, p], -1)
        log_probs = tf.concat([log_1mp, log_p], -1)
        onehot = tf.concat([(1.0 - onehot) * valid, onehot], -1)
    elif from_logits:
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        probs = tf.exp(log_probs)
    else:
        probs = tf.clip_by_value(logits, _EPSILON, 1.0)
        log_probs = tf.math.log(probs)
    terms = -onehot * log_probs
    if gamma:
        terms = terms * _modulating_factor(1.0 - probs, gamma)
    weight = tf.reduce_sum(onehot, axis=-1)
    if alpha is not None:
        alpha = tf.constant(alpha, tf.float32)
        terms = terms * alpha
        weight = tf.reduce_sum(onehot * alpha, axis=-1)
    return tf.reduce_sum(terms, axis=-1), weight, valid[..., 0]


def per_image_mean(values, weights):
    """`sum(values) / sum(weights)` over all but the batch axis, `[B]` (0 for an empty image)."""
    axes = list(range(1, values.shape.rank))
    return tf.math.divide_no_nan(tf.reduce_sum(values, axis=axes),
                                 tf.reduce_sum(weights, axis=axes))


def dense_focal_loss(y_true, y_pred, gamma=2.0, alpha=None, from_logits=False, ignore_index=None):
    """Focal cross-entropy per pixel, averaged over the (not ignored) pixels of each image.

    Formula:
        Per pixel, with classes c, one-hot target t and probabilities p:

            FL = -sum_c alpha_c * t_c * (1 - p_c)**gamma * log(p_c)

        and `loss[b]` the mean of FL over the counted pixels of image b. With one sigmoid
        channel the two classes are background (`1 - p`) and foreground (`p`): the binary
        focal loss `-alpha_t (1 - p_t)**gamma log(p_t)` of RetinaNet. `gamma = 0` and no
        `alpha` is plain cross-entropy.

    Args:
        y_true: sparse int labels `[B, H, W]` in `[0, C)`, one-hot `[B, H, W, C]`, or 0/1
            `[B, H, W, 1]` for binary segmentation.
        y_pred: probabilities `[B, H, W, C]` (logits with `from_logits=True`).
        gamma: focusing parameter (>= 0, default 2).
        alpha: `None` (no weighting), a float (binary: weight `alpha` on the foreground and
            `1 - alpha` on the background, as RetinaNet; multi-class: the same weight on every
            class, as `keras.losses.CategoricalFocalCrossentropy`), or one weight per class
            (binary: `[background, foreground]`).
        from_logits: apply softmax (sigmoid for `C == 1`) to `y_pred` first (default False).
        ignore_index: label value of pixels to leave out (sparse/binary targets).

    Returns:
        float32 `[B]`.

    Example:
        >>> labels = [[[0, 1], [2, 255]]]  # p_t = e^2 / (e^2 + 2) on the 3 counted pixels
        >>> logits = [[[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]]]
        >>> dense_focal_loss(labels, logits, from_logits=True, ignore_index=255).numpy().round(5)
        array([0.01087], dtype=float32)

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """
    check_number(gamma, "gamma")
    alpha = class_weight_vector(check_alpha(alpha), num_channels(y_pred))
    loss, _, valid = focal_terms(y_true, y_pred, gamma, alpha, from_logits, ignore_index)
    return per_image_mean(loss, valid)


@keras.saving.register_keras_serializable(package="kcv")
class FocalLoss(ArgumentLoss):
    """Focal loss with a Keras reduction: RetinaNet's sigmoid form, or dense segmentation.

    `mode="sigmoid"` (default): the element-wise `sigmoid_focal_loss` (every output an
    independent binary problem, as in detection) averaged over the last axis (the classes), as
    Keras' binary losses do, and then reduced over the batch by `reduction`. With `alpha` set it
    equals `keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=alpha,
    gamma=gamma)`. For detection one usually sums and divides by the number of positive
    anchors: `reduction="sum"` and scale by `1 / num_positives`.

    `mode="dense"`: segmentation, `dense_focal_loss` per image. Multi-class predictions
    `[B, H, W, C]` use the softmax focal loss against sparse `[B, H, W]` or one-hot targets;
    one sigmoid channel `[B, H, W, 1]` is binary (alpha on the foreground, `1 - alpha` on the
    background). `alpha` may be a list of per-class weights, and pixels labelled
    `ignore_index` are left out of the mean.

    Formula:
        `mode="sigmoid"`: `loss[b] = mean_j -alpha_t (1 - p_t)**gamma log(p_t)` over the last
        axis j. `mode="dense"`: `loss[b] = mean_pixels -sum_c alpha_c t_c (1 - p_c)**gamma
        log(p_c)`.

    Args:
        alpha: `mode="sigmoid"`: weight of the positive class in [0, 1], or None (no
            balancing). `mode="dense"`: also a list of non-negative per-class weights
            (binary: `[background, foreground]`). Default 0.25.
        gamma: focusing parameter >= 0. Default 2.
        from_logits: whether predictions are logits (default False, the Keras convention;
            detection heads usually output logits: pass `from_logits=True`).
        mode: `"sigmoid"` (default) or `"dense"`.
        ignore_index: `mode="dense"` only: the label value of pixels to leave out.
        reduction: Keras reduction ("sum_over_batch_size", "sum", "mean", "none", ...).
        name: loss name.
        dtype: loss dtype (Keras).

    Example:
        >>> loss = FocalLoss(alpha=0.25, gamma=2.0, from_logits=True)
        >>> round(float(loss([[1.0, 0.0]], [[2.0, -1.0]])), 5)  # mean of 0.00045 and 0.01699
        0.00872
        >>> seg = FocalLoss(alpha=[0.1, 1.0, 1.0, 1.0], mode="dense", ignore_index=255)

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, mode="sigmoid",
                 ignore_index=None, reduction="sum_over_batch_size", name="focal_loss",
                 dtype=None):
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
        if mode == "dense" and isinstance(alpha, (list, tuple)):
            check_alpha(alpha)
        else:
            _check_sigmoid_alpha(alpha)
        check_number(gamma, "gamma")
        if mode == "sigmoid" and ignore_index is not None:
            raise ValueError("`ignore_index` needs mode='dense'. "
                             f"Received: ignore_index={ignore_index!r}, mode={mode!r}")
        super().__init__(reduction=reduction, name=name, dtype=dtype, alpha=alpha, gamma=gamma,
                         from_logits=from_logits, mode=mode, ignore_index=ignore_index)

    def call(self, y_true, y_pred):
        if self.mode == "dense":
            return dense_focal_loss(y_true, y_pred, self.gamma, self.alpha, self.from_logits,
                                    self.ignore_index)
        loss = sigmoid_focal_loss(y_true, y_pred, self.alpha, self.gamma, self.from_logits)
        return tf.reduce_mean(loss, axis=-1)
