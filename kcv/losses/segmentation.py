"""Segmentation losses: Dice, Tversky, Dice + focal, BCE + Dice, weighted cross-entropy.

Each loss is a function returning one value per image (`[B]`) and a serializable
`keras.losses.Loss` class applying the Keras reduction (mean over the batch by default); the
dense focal loss they build on is in `kcv.losses.focal`. Targets are sparse labels `[B, H, W]`
(or `[B, H, W, 1]`) in `[0, C)`, one-hot `[B, H, W, C]`, or for binary segmentation 0/1
`[B, H, W, 1]` against one sigmoid channel; predictions are probabilities or, with
`from_logits=True`, logits. A sparse label outside the classes is an error unless it equals
`ignore_index`.

Which loss when, as the papers argue: Dice (Milletari et al. 2016) for a foreground much
smaller than the background, though its gradient swings for small objects; Dice + focal (Zhu et
al. 2019) for small organs; Tversky (Salehi et al. 2017) to trade false positives against false
negatives; class-weighted cross-entropy for known class frequencies.
"""

import keras
import tensorflow as tf

from kcv.losses._base import ArgumentLoss, check_alpha, check_number, check_weights
from kcv.losses._targets import class_weight_vector, dense_targets, num_channels, spatial_axes
from kcv.losses.focal import dense_focal_loss, focal_terms, per_image_mean

__all__ = [
    "BCEDiceLoss", "DiceFocalLoss", "DiceLoss", "TverskyLoss", "WeightedCrossentropy",
    "bce_dice_loss", "dice_focal_loss", "dice_loss", "tversky_loss", "weighted_crossentropy",
]


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


def _overlap(y_true, y_pred, from_logits, ignore_index):
    """Soft true positives, predicted and true sums per image and class, `[B, C]` each."""
    probs, onehot, _ = dense_targets(y_true, y_pred, from_logits, ignore_index)
    axes = spatial_axes(probs)
    return (tf.reduce_sum(probs * onehot, axis=axes), tf.reduce_sum(probs, axis=axes),
            tf.reduce_sum(onehot, axis=axes))


def dice_loss(y_true, y_pred, smooth=1.0, from_logits=False, class_weights=None,
              ignore_index=None):
    """Soft Dice loss, computed per image and per class, averaged over classes.

    Formula:
        Per image b and class c, sums over the pixels i, p predicted and t true:

            dice[b, c] = (2 * sum_i p[b,i,c] t[b,i,c] + smooth)
                         / (sum_i p[b,i,c] + sum_i t[b,i,c] + smooth)
            loss[b] = 1 - weighted_mean_c(dice[b, c])

    Args:
        y_true: sparse int labels `[B, H, W]` in `[0, C)`, one-hot `[B, H, W, C]`, or 0/1
            `[B, H, W, 1]` for binary segmentation.
        y_pred: probabilities `[B, H, W, C]` (logits with `from_logits=True`).
        smooth: added to numerator and denominator (keeps empty classes at loss 0 and the
            gradient finite). Default 1.
        from_logits: apply softmax (sigmoid for `C == 1`) to `y_pred` first (default False).
        class_weights: optional per-class weights for the class average.
        ignore_index: label value of pixels to leave out (sparse/binary targets).

    Returns:
        float32 `[B]`: the loss of each image.

    Raises:
        ValueError: when `y_true` and `y_pred` do not fit together, or (eagerly) a sparse
            label lies outside `[0, C)` and is not `ignore_index`; inside `tf.function` that
            is an `InvalidArgumentError` from a `tf.debugging` assertion.

    Example:
        >>> y_true = [[[[1.0], [1.0]], [[0.0], [0.0]]]]   # one 2x2 image, top row foreground
        >>> y_pred = [[[[0.5], [1.0]], [[0.0], [0.0]]]]   # intersection 1.5, sums 1.5 and 2
        >>> dice_loss(y_true, y_pred).numpy().round(5)    # 1 - (3 + 1) / (3.5 + 1) = 1/9
        array([0.11111], dtype=float32)

    Reference:
        Milletari, Navab & Ahmadi, "V-Net", 3DV 2016.
    """
    class_weights = check_weights(class_weights)
    tp, predicted, true = _overlap(y_true, y_pred, from_logits, ignore_index)
    # With smooth=0, a class absent from both prediction and target gives 0/0: counted as 0.
    dice = tf.math.divide_no_nan(2.0 * tp + smooth, predicted + true + smooth)
    return 1.0 - _class_mean(dice, class_weights)


def tversky_loss(y_true, y_pred, alpha=0.5, beta=0.5, smooth=1.0, from_logits=False,
                 class_weights=None, ignore_index=None):
    """Tversky loss per image and class, averaged over classes; `alpha` weighs false positives.

    Formula:
        Per image b and class c, sums over pixels, p predicted and t true:

            TP = sum(p * t), FP = sum(p * (1 - t)), FN = sum((1 - p) * t)
            TI[b, c] = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)
            loss[b] = 1 - weighted_mean_c(TI[b, c])

    This is the paper's convention (Salehi et al., eq. 3): `alpha` multiplies the false
    positives and `beta` the false negatives; `alpha = beta = 0.5` is the Dice loss,
    `alpha = beta = 1` the Jaccard (IoU) loss, and `beta > alpha` (the paper's best: alpha
    0.3, beta 0.7) favours recall. `keras.losses.Tversky` up to Keras 3.15 swaps the two (its
    `alpha` weighs the false negatives; fixed upstream in keras-team/keras PR #23333), so
    `tversky_loss(alpha=a, beta=b)` equals Keras 3.15's `Tversky(alpha=b, beta=a)`.

    Args:
        y_true, y_pred, smooth, from_logits, class_weights, ignore_index: as `dice_loss`.
        alpha: weight of the false positives (default 0.5).
        beta: weight of the false negatives (default 0.5).

    Returns:
        float32 `[B]`: the loss of each image.

    Example:
        >>> y_true = [[[[1.0], [1.0]], [[0.0], [0.0]]]]
        >>> y_pred = [[[[0.5], [1.0]], [[1.0], [0.0]]]]   # TP 1.5, FP 1, FN 0.5
        >>> tversky_loss(y_true, y_pred, 0.3, 0.7, smooth=0.0).numpy().round(5)  # 1 - 1.5/2.15
        array([0.30233], dtype=float32)

    Reference:
        Salehi, Erdogmus & Gholipour, "Tversky loss function for image segmentation using 3D
        fully convolutional deep networks", MLMI 2017 (arXiv:1706.05721).
    """
    class_weights = check_weights(class_weights)
    tp, predicted, true = _overlap(y_true, y_pred, from_logits, ignore_index)
    fp, fn = predicted - tp, true - tp
    index = tf.math.divide_no_nan(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    return 1.0 - _class_mean(index, class_weights)


def _crossentropy_per_image(y_true, y_pred, from_logits, ignore_index):
    """Mean pixel cross-entropy per image (binary for `C == 1`, categorical otherwise), `[B]`."""
    loss, _, valid = focal_terms(y_true, y_pred, 0.0, None, from_logits, ignore_index)
    return per_image_mean(loss, valid)


def bce_dice_loss(y_true, y_pred, bce_weight=1.0, dice_weight=1.0, smooth=1.0, from_logits=False,
                  class_weights=None, ignore_index=None):
    """Cross-entropy plus soft Dice, per image.

    The cross-entropy is binary for one output channel and categorical for several (the
    "BCE" of UNet++ generalised to softmax outputs), averaged over the counted pixels.

    Formula:
        `loss[b] = bce_weight * mean_i CE[b, i] + dice_weight * dice_loss[b]`.

    Args:
        bce_weight, dice_weight: weights of the two terms (default 1 and 1).
        y_true, y_pred, smooth, from_logits, class_weights, ignore_index: as `dice_loss`
            (`class_weights` weighs the Dice class average only).

    Returns:
        float32 `[B]`.

    Example:
        >>> y_true = [[[[1.0], [1.0]], [[0.0], [0.0]]]]
        >>> y_pred = [[[[0.5], [1.0]], [[0.0], [0.0]]]]   # CE: log(2) / 4 (clipped log 1 = 0)
        >>> bce_dice_loss(y_true, y_pred).numpy().round(5)  # log(2) / 4 + 1/9
        array([0.2844], dtype=float32)

    Reference:
        Zhou et al., "UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
        DLMIA 2018.
    """
    ce = _crossentropy_per_image(y_true, y_pred, from_logits, ignore_index)
    dice = dice_loss(y_true, y_pred, smooth, from_logits, class_weights, ignore_index)
    return bce_weight * ce + dice_weight * dice


def dice_focal_loss(y_true, y_pred, dice_weight=1.0, focal_weight=1.0, gamma=2.0, alpha=None,
                    smooth=1.0, from_logits=False, class_weights=None, ignore_index=None):
    """Soft Dice plus dense focal loss, per image.

    AnatomyNet's combination for small organs: the focal term keeps the gradient steady where
    Dice alone swings for small objects, the Dice term counters the class imbalance.

    Formula:
        `loss[b] = dice_weight * dice_loss[b] + focal_weight * dense_focal_loss[b]`.

    Args:
        dice_weight, focal_weight: weights of the two terms (default 1 and 1).
        gamma, alpha: as `dense_focal_loss` (default 2 and None).
        smooth, class_weights: of the Dice term, as `dice_loss`.
        y_true, y_pred, from_logits, ignore_index: as `dice_loss`.

    Returns:
        float32 `[B]`.

    Example:
        >>> y_true = [[[[1.0], [1.0]], [[0.0], [0.0]]]]
        >>> y_pred = [[[[0.5], [1.0]], [[0.0], [0.0]]]]
        >>> dice_focal_loss(y_true, y_pred).numpy().round(5)  # 1/9 + 0.5^2 log(2) / 4
        array([0.15443], dtype=float32)

    Reference:
        Zhu et al., "AnatomyNet: Deep learning for fast and fully automated whole-volume
        segmentation of head and neck anatomy", Medical Physics 2019.
    """
    focal = dense_focal_loss(y_true, y_pred, gamma, alpha, from_logits, ignore_index)
    dice = dice_loss(y_true, y_pred, smooth, from_logits, class_weights, ignore_index)
    return dice_weight * dice + focal_weight * focal


def weighted_crossentropy(y_true, y_pred, class_weights=None, from_logits=False,
                          ignore_index=None):
    """Class-weighted pixel cross-entropy per image, normalised by the weights.

    Formula:
        Per image, over the pixels i that are not ignored, w the weight of the true class:

            loss = sum_i w[t_i] * CE_i / sum_i w[t_i]

        which is what `torch.nn.CrossEntropyLoss(weight, ignore_index)` computes per image.
        Without `class_weights` it is the mean cross-entropy.

    Args:
        y_true, y_pred, from_logits, ignore_index: as `dice_loss`.
        class_weights: one non-negative weight per class (binary: `[background, foreground]`),
            e.g. inverse class frequencies; None for equal weights.

    Returns:
        float32 `[B]`.

    Example:
        >>> labels = [[[0, 1]]]                       # one 1x2 image
        >>> probs = [[[[0.5, 0.5], [0.5, 0.5]]]]      # CE log(2) on both pixels
        >>> weighted_crossentropy(labels, probs, class_weights=[1.0, 3.0]).numpy().round(5)
        array([0.69315], dtype=float32)
    """
    weights = class_weight_vector(check_weights(class_weights), num_channels(y_pred),
                                  "class_weights")
    loss, weight, _ = focal_terms(y_true, y_pred, 0.0, weights, from_logits, ignore_index)
    return per_image_mean(loss, weight)


@keras.saving.register_keras_serializable(package="kcv")
class DiceLoss(ArgumentLoss):
    """Soft Dice loss per image, averaged over the batch. See `dice_loss`.

    Formula:
        `loss[b] = 1 - mean_c (2 sum(p t) + smooth) / (sum p + sum t + smooth)`, then the
        Keras reduction over b.

    Args:
        smooth: smoothing constant (default 1.0).
        from_logits: whether predictions are logits (default False).
        class_weights: optional per-class weights.
        ignore_index: label value to ignore.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 1)])
        >>> model.compile("adam", loss=DiceLoss(from_logits=True))

    Reference:
        Milletari, Navab & Ahmadi, "V-Net", 3DV 2016.
    """

    _function = staticmethod(dice_loss)

    def __init__(self, smooth=1.0, from_logits=False, class_weights=None, ignore_index=None,
                 reduction="sum_over_batch_size", name="dice_loss", dtype=None):
        check_weights(class_weights)
        super().__init__(reduction=reduction, name=name, dtype=dtype, smooth=smooth,
                         from_logits=from_logits, class_weights=class_weights,
                         ignore_index=ignore_index)


@keras.saving.register_keras_serializable(package="kcv")
class BCEDiceLoss(ArgumentLoss):
    """Cross-entropy + soft Dice per image, averaged over the batch. See `bce_dice_loss`.

    Formula:
        `loss[b] = bce_weight * CE[b] + dice_weight * Dice[b]`, then the Keras reduction.

    Args:
        bce_weight, dice_weight: weights of the two terms (default 1 and 1).
        smooth, from_logits, class_weights, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = BCEDiceLoss(bce_weight=0.5, dice_weight=1.0)

    Reference:
        Zhou et al., "UNet++", DLMIA 2018.
    """

    _function = staticmethod(bce_dice_loss)

    def __init__(self, bce_weight=1.0, dice_weight=1.0, smooth=1.0, from_logits=False,
                 class_weights=None, ignore_index=None, reduction="sum_over_batch_size",
                 name="bce_dice_loss", dtype=None):
        check_weights(class_weights)
        super().__init__(reduction=reduction, name=name, dtype=dtype, bce_weight=bce_weight,
                         dice_weight=dice_weight, smooth=smooth, from_logits=from_logits,
                         class_weights=class_weights, ignore_index=ignore_index)


@keras.saving.register_keras_serializable(package="kcv")
class TverskyLoss(ArgumentLoss):
    """Tversky loss per image, averaged over the batch. See `tversky_loss`.

    `alpha` weighs false positives and `beta` false negatives, as in the paper (Salehi et al.
    2017, eq. 3); `keras.losses.Tversky` up to Keras 3.15 swaps the two (keras-team/keras PR
    #23333 fixes Keras), so `TverskyLoss(alpha=a, beta=b)` equals its `alpha=b, beta=a`.

    Formula:
        `loss[b] = 1 - mean_c (TP + smooth) / (TP + alpha FP + beta FN + smooth)`, then the
        Keras reduction.

    Args:
        alpha: weight of false positives (default 0.5).
        beta: weight of false negatives (default 0.5).
        smooth, from_logits, class_weights, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7)  # the paper's recall-favouring weights

    Reference:
        Salehi, Erdogmus & Gholipour, "Tversky loss function for image segmentation using 3D
        fully convolutional deep networks", MLMI 2017.
    """

    _function = staticmethod(tversky_loss)

    def __init__(self, alpha=0.5, beta=0.5, smooth=1.0, from_logits=False, class_weights=None,
                 ignore_index=None, reduction="sum_over_batch_size", name="tversky_loss",
                 dtype=None):
        check_number(alpha, "alpha")
        check_number(beta, "beta")
        check_weights(class_weights)
        super().__init__(reduction=reduction, name=name, dtype=dtype, alpha=alpha, beta=beta,
                         smooth=smooth, from_logits=from_logits, class_weights=class_weights,
                         ignore_index=ignore_index)


@keras.saving.register_keras_serializable(package="kcv")
class DiceFocalLoss(ArgumentLoss):
    """Soft Dice + dense focal loss per image, averaged over the batch. See `dice_focal_loss`.

    Formula:
        `loss[b] = dice_weight * Dice[b] + focal_weight * FL[b]`, then the Keras reduction.

    Args:
        dice_weight, focal_weight: weights of the two terms (default 1 and 1).
        gamma, alpha: focal parameters, as `dense_focal_loss` (default 2 and None).
        smooth, from_logits, class_weights, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = DiceFocalLoss(gamma=2.0, alpha=[0.25, 1.0, 1.0, 1.0], ignore_index=255)

    Reference:
        Zhu et al., "AnatomyNet", Medical Physics 2019; Lin et al., "Focal Loss", ICCV 2017.
    """

    _function = staticmethod(dice_focal_loss)

    def __init__(self, dice_weight=1.0, focal_weight=1.0, gamma=2.0, alpha=None, smooth=1.0,
                 from_logits=False, class_weights=None, ignore_index=None,
                 reduction="sum_over_batch_size", name="dice_focal_loss", dtype=None):
        check_number(gamma, "gamma")
        check_alpha(alpha)
        check_weights(class_weights)
        super().__init__(reduction=reduction, name=name, dtype=dtype, dice_weight=dice_weight,
                         focal_weight=focal_weight, gamma=gamma, alpha=alpha, smooth=smooth,
                         from_logits=from_logits, class_weights=class_weights,
                         ignore_index=ignore_index)


@keras.saving.register_keras_serializable(package="kcv")
class WeightedCrossentropy(ArgumentLoss):
    """Class-weighted pixel cross-entropy with `ignore_index`. See `weighted_crossentropy`.

    Formula:
        `loss[b] = sum_i w[t_i] CE_i / sum_i w[t_i]` over the counted pixels, then the Keras
        reduction.

    Args:
        class_weights: one weight per class (binary: `[background, foreground]`), or `None`.
        from_logits, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = WeightedCrossentropy(class_weights=[0.2, 1, 1, 1], ignore_index=255)
    """

    _function = staticmethod(weighted_crossentropy)

    def __init__(self, class_weights=None, from_logits=False, ignore_index=None,
                 reduction="sum_over_batch_size", name="weighted_crossentropy", dtype=None):
        check_weights(class_weights)
        super().__init__(reduction=reduction, name=name, dtype=dtype,
                         class_weights=class_weights, from_logits=from_logits,
                         ignore_index=ignore_index)
