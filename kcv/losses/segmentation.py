"""Segmentation losses: soft Dice and BCE + Dice.

Each loss is a function returning one value per image (`[B]`) and a serializable
`keras.losses.Loss` class applying the Keras reduction (mean over the batch by default).
"""

import keras
import tensorflow as tf

from kcv.losses._targets import dense_targets, spatial_axes

_EPSILON = 1e-7


def _check_weights(class_weights):
    if class_weights is None:
        return None
    weights = [float(w) for w in class_weights]
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            "`class_weights` must be non-negative numbers, one per class, not all zero. "
            f"Received: class_weights={class_weights!r}"
        )
    return weights


def _class_mean(per_class, class_weights):
    """Mean over the class axis (last), weighted by `class_weights` when given."""
    if class_weights is None:
        return tf.reduce_mean(per_class, axis=-1)
    w = tf.constant(class_weights, tf.float32)
    if per_class.shape[-1] is not None and per_class.shape[-1] != len(class_weights):
        raise ValueError(
            f"`class_weights` has {len(class_weights)} entries but the prediction has "
            f"{per_class.shape[-1]} classes. Received: class_weights={class_weights!r}"
        )
    return tf.reduce_sum(per_class * w, axis=-1) / tf.reduce_sum(w)


def dice_loss(y_true, y_pred, smooth=1.0, from_logits=False, class_weights=None,
              ignore_index=None):
    """Soft Dice loss, computed per image and per class, averaged over classes.

    Formula (per image b and class c, sums over pixels i):
        dice[b, c] = (2 * sum_i(p[b,i,c] * t[b,i,c]) + smooth) / (sum_i p[b,i,c] + sum_i t[b,i,c] + smooth)
        loss[b] = 1 - weighted_mean_c(dice[b, c])

    Args:
        y_true: sparse int labels `[B, H, W]`, one-hot `[B, H, W, C]`, or 0/1 `[B, H, W, 1]` for
            binary segmentation.
        y_pred: probabilities `[B, H, W, C]` (logits with `from_logits=True`).
        smooth: added to numerator and denominator (keeps empty classes at loss 0 and the
            gradient finite).
        from_logits: apply softmax (sigmoid for `C == 1`) to `y_pred` first.
        class_weights: optional per-class weights for the class average.
        ignore_index: label value of pixels to leave out (sparse/binary targets).

    Returns:
        float32 `[B]`: the loss of each image.

    Reference:
        Milletari, Navab & Ahmadi, "V-Net", 3DV 2016.
    """
    class_weights = _check_weights(class_weights)
    probs, onehot, _ = dense_targets(y_true, y_pred, from_logits, ignore_index)
    axes = spatial_axes(probs)
    intersection = tf.reduce_sum(probs * onehot, axis=axes)
    denominator = tf.reduce_sum(probs, axis=axes) + tf.reduce_sum(onehot, axis=axes)
    # With smooth=0, a class absent from both prediction and target gives 0/0: counted as 0.
    dice = tf.math.divide_no_nan(2.0 * intersection + smooth, denominator + smooth)
    return 1.0 - _class_mean(dice, class_weights)


def crossentropy_per_image(y_true, y_pred, from_logits=False, ignore_index=None):
    """Mean pixel cross-entropy per image: binary when `C == 1`, categorical otherwise.

    Returns:
        float32 `[B]`, averaged over the pixels that are not ignored.
    """
    y_pred32 = tf.cast(y_pred, tf.float32)
    probs, onehot, valid = dense_targets(y_true, y_pred, from_logits, ignore_index)
    if y_pred.shape[-1] == 1:
        if from_logits:
            ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=y_pred32)
        else:
            p = tf.clip_by_value(probs, _EPSILON, 1.0 - _EPSILON)
            ce = -(onehot * tf.math.log(p) + (1.0 - onehot) * tf.math.log(1.0 - p))
    else:
        if from_logits:
            ce = -tf.reduce_sum(onehot * tf.nn.log_softmax(y_pred32, axis=-1), axis=-1,
                                keepdims=True)
        else:
            p = tf.clip_by_value(probs, _EPSILON, 1.0)
            ce = -tf.reduce_sum(onehot * tf.math.log(p), axis=-1, keepdims=True)
    ce = ce * valid
    axes = list(range(1, ce.shape.rank))
    return tf.math.divide_no_nan(tf.reduce_sum(ce, axis=axes), tf.reduce_sum(valid, axis=axes))


def bce_dice_loss(y_true, y_pred, bce_weight=1.0, dice_weight=1.0, smooth=1.0, from_logits=False,
                  class_weights=None, ignore_index=None):
    """Cross-entropy plus soft Dice, per image: `bce_weight * CE + dice_weight * Dice`.

    The cross-entropy is binary for one output channel and categorical for several (the
    "BCE" of UNet++ generalised to softmax outputs). Arguments as `dice_loss`.

    Returns:
        float32 `[B]`.

    Reference:
        Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation", 2018.
    """
    ce = crossentropy_per_image(y_true, y_pred, from_logits, ignore_index)
    dice = dice_loss(y_true, y_pred, smooth, from_logits, class_weights, ignore_index)
    return bce_weight * ce + dice_weight * dice


@keras.saving.register_keras_serializable(package="kcv")
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss per image, averaged over the batch. See `dice_loss`.

    Args:
        smooth: smoothing constant (default 1.0).
        from_logits: whether predictions are logits.
        class_weights: optional per-class weights.
        ignore_index: label value to ignore.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> model.compile("adam", loss=kcv.losses.DiceLoss(from_logits=False))
    """

    def __init__(self, smooth=1.0, from_logits=False, class_weights=None, ignore_index=None,
                 reduction="sum_over_batch_size", name="dice_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.smooth = smooth
        self.from_logits = from_logits
        self.class_weights = class_weights
        self.ignore_index = ignore_index
        _check_weights(class_weights)

    def call(self, y_true, y_pred):
        return dice_loss(y_true, y_pred, self.smooth, self.from_logits, self.class_weights,
                         self.ignore_index)

    def get_config(self):
        return {
            **super().get_config(),
            "smooth": self.smooth,
            "from_logits": self.from_logits,
            "class_weights": self.class_weights,
            "ignore_index": self.ignore_index,
        }


@keras.saving.register_keras_serializable(package="kcv")
class BCEDiceLoss(keras.losses.Loss):
    """Cross-entropy + soft Dice per image. See `bce_dice_loss`.

    Args:
        bce_weight, dice_weight: weights of the two terms (default 1 and 1).
        smooth, from_logits, class_weights, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.
    """

    def __init__(self, bce_weight=1.0, dice_weight=1.0, smooth=1.0, from_logits=False,
                 class_weights=None, ignore_index=None, reduction="sum_over_batch_size",
                 name="bce_dice_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.from_logits = from_logits
        self.class_weights = class_weights
        self.ignore_index = ignore_index
        _check_weights(class_weights)

    def call(self, y_true, y_pred):
        return bce_dice_loss(y_true, y_pred, self.bce_weight, self.dice_weight, self.smooth,
                             self.from_logits, self.class_weights, self.ignore_index)

    def get_config(self):
        return {
            **super().get_config(),
            "bce_weight": self.bce_weight,
            "dice_weight": self.dice_weight,
            "smooth": self.smooth,
            "from_logits": self.from_logits,
            "class_weights": self.class_weights,
            "ignore_index": self.ignore_index,
        }
