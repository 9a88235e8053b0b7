"""Segmentation losses: Dice, Tversky, dense focal, Dice + focal, BCE + Dice, weighted CE.

Each loss is a function returning one value per image (`[B]`) and a serializable
`keras.losses.Loss` class applying the Keras reduction (mean over the batch by default).
Targets are sparse labels `[B, H, W]` (or `[B, H, W, 1]`), one-hot `[B, H, W, C]`, or for binary
segmentation 0/1 `[B, H, W, 1]` against one sigmoid channel; predictions are probabilities or,
with `from_logits=True`, logits. Which loss when (the seed notes): Dice for imbalanced
foreground, but unstable for small objects; Dice + focal for small organs; Tversky to trade
false positives against false negatives; weighted cross-entropy for known class frequencies.
"""

import keras
import tensorflow as tf

from kcv.losses._targets import dense_targets, spatial_axes

_EPSILON = 1e-7


def _check_weights(class_weights, name="class_weights"):
    if class_weights is None:
        return None
    try:
        weights = [float(w) for w in class_weights]
    except (TypeError, ValueError):
        weights = []
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"`{name}` must be non-negative numbers, one per class, not all zero. "
            f"Received: {name}={class_weights!r}"
        )
    return weights


def _check_alpha(alpha, name="alpha"):
    """Validates a focal/class weight: `None`, a non-negative number, or a list of them."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if alpha < 0:
            raise ValueError(f"`{name}` must be non-negative. Received: {name}={alpha!r}")
        return float(alpha)
    return _check_weights(alpha, name)


def _alpha_vector(alpha, num_classes, name="alpha"):
    """Per-class weights `[C']` (C' = 2 for binary): a float means (1 - a, a) for binary
    (the RetinaNet alpha on the foreground) and the same weight for every class otherwise."""
    if alpha is None:
        return None
    classes = 2 if num_classes == 1 else num_classes
    if isinstance(alpha, float):
        return [1.0 - alpha, alpha] if num_classes == 1 else [alpha] * classes
    if len(alpha) != classes:
        raise ValueError(
            f"`{name}` needs one weight per class ({classes}; binary segmentation has 2: "
            f"background, foreground). Received: {name}={alpha!r}"
        )
    return alpha


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
    return _focal_per_image(y_true, y_pred, 0.0, None, from_logits, ignore_index)


def _two_class(probs, log_p, log_1mp, onehot, valid):
    """Binary `[..., 1]` tensors as the two classes (background, foreground) on the last axis."""
    return (tf.concat([1.0 - probs, probs], -1), tf.concat([log_1mp, log_p], -1),
            tf.concat([(1.0 - onehot) * valid, onehot], -1))


def _focal_terms(y_true, y_pred, gamma, alpha, from_logits, ignore_index):
    """Per-pixel focal cross-entropy and per-pixel target weight.

    Binary predictions (`C == 1`) are treated as two classes (background, foreground), so one
    formula covers both: `loss = -sum_c alpha_c * t_c * (1 - p_c)**gamma * log(p_c)`.

    Returns:
        `(loss, weight, valid)`, float32 `[B, H, W]` each: the loss of each pixel, the alpha of
        its target class (1 without alpha), and 1 where the pixel counts.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    logits = tf.cast(y_pred, tf.float32)
    probs, onehot, valid = dense_targets(y_true, y_pred, from_logits, ignore_index)
    num_classes = y_pred.shape[-1]
    if num_classes == 1:
        if from_logits:
            log_p, log_1mp = tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)
        else:
            p = tf.clip_by_value(logits, _EPSILON, 1.0 - _EPSILON)
            log_p, log_1mp = tf.math.log(p), tf.math.log(1.0 - p)
        probs = tf.sigmoid(logits) if from_logits else logits
        probs, log_probs, onehot = _two_class(probs, log_p, log_1mp, onehot, valid)
    elif from_logits:
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        probs = tf.exp(log_probs)
    else:
        probs = tf.clip_by_value(logits, _EPSILON, 1.0)
        log_probs = tf.math.log(probs)
    terms = -onehot * log_probs
    if gamma:
        # Clipped so that the gradient of (1 - p)**gamma stays finite at p = 1 for gamma < 1.
        terms = terms * tf.pow(tf.maximum(1.0 - probs, _EPSILON), gamma)
    weight = tf.reduce_sum(onehot, axis=-1)
    if alpha is not None:
        alpha = tf.constant(alpha, tf.float32)
        terms = terms * alpha
        weight = tf.reduce_sum(onehot * alpha, axis=-1)
    return tf.reduce_sum(terms, axis=-1), weight, valid[..., 0]


def _focal_per_image(y_true, y_pred, gamma, alpha, from_logits, ignore_index):
    """Mean over the counted pixels of each image of the focal terms, `[B]`."""
    loss, _, valid = _focal_terms(y_true, y_pred, gamma, alpha, from_logits, ignore_index)
    axes = list(range(1, loss.shape.rank))
    return tf.math.divide_no_nan(tf.reduce_sum(loss, axis=axes), tf.reduce_sum(valid, axis=axes))


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


def tversky_loss(y_true, y_pred, alpha=0.5, beta=0.5, smooth=1.0, from_logits=False,
                 class_weights=None, ignore_index=None):
    """Tversky loss per image and class, averaged over classes; `alpha` weighs false positives.

    Formula (per image b and class c, sums over pixels, p predicted and t true):
        TP = sum(p * t), FP = sum(p * (1 - t)), FN = sum((1 - p) * t)
        TI[b, c] = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)
        loss[b] = 1 - weighted_mean_c(TI[b, c])

    As in the paper, `alpha` multiplies the false positives and `beta` the false negatives;
    `alpha = beta = 0.5` is the Dice loss, `alpha = beta = 1` the Jaccard (IoU) loss, and
    `beta > alpha` (the paper's best: alpha 0.3, beta 0.7) favours recall. Note: two well-known
    implementations swap the two, so their `alpha` weighs the false negatives: the seed notes'
    snippet (`alpha * false_neg + (1 - alpha) * false_pos`) and `keras.losses.Tversky` up to
    Keras 3.15 (fixed upstream in keras-team/keras PR #23333). `tversky_loss(alpha=a, beta=b)`
    equals those with `alpha=b, beta=a`.

    Args:
        y_true, y_pred, smooth, from_logits, class_weights, ignore_index: as `dice_loss`.
        alpha: weight of the false positives (default 0.5).
        beta: weight of the false negatives (default 0.5).

    Returns:
        float32 `[B]`: the loss of each image.

    Example:
        >>> masks = tf.constant([[[0, 1], [2, 3]]])  # [B, H, W] class ids
        >>> logits = tf.random.normal([1, 2, 2, 4])
        >>> probs = tf.nn.softmax(logits)
        >>> tversky_loss(masks, probs, alpha=0.3, beta=0.7).shape
        TensorShape([1])

    Reference:
        Salehi, Erdogmus & Gholipour, "Tversky loss function for image segmentation using 3D
        fully convolutional deep networks", MLMI 2017 (arXiv:1706.05721).
    """
    class_weights = _check_weights(class_weights)
    probs, onehot, _ = dense_targets(y_true, y_pred, from_logits, ignore_index)
    axes = spatial_axes(probs)
    tp = tf.reduce_sum(probs * onehot, axis=axes)
    fp = tf.reduce_sum(probs, axis=axes) - tp
    fn = tf.reduce_sum(onehot, axis=axes) - tp
    index = tf.math.divide_no_nan(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    return 1.0 - _class_mean(index, class_weights)


def dense_focal_loss(y_true, y_pred, gamma=2.0, alpha=None, from_logits=False, ignore_index=None):
    """Focal cross-entropy per pixel, averaged over the (not ignored) pixels of each image.

    Formula (per pixel, classes c, one-hot t, probabilities p):
        FL = -sum_c alpha_c * t_c * (1 - p_c)**gamma * log(p_c)
    With one sigmoid channel the two classes are background (1 - p) and foreground (p), which
    is the binary focal loss `-alpha_t (1 - p_t)**gamma log(p_t)` of RetinaNet. `gamma = 0` and
    no `alpha` is plain cross-entropy.

    Args:
        y_true, y_pred, from_logits, ignore_index: as `dice_loss`.
        gamma: focusing parameter (>= 0, default 2).
        alpha: `None` (no weighting), a float (binary: weight `alpha` on the foreground and
            `1 - alpha` on the background, as RetinaNet; multi-class: the same weight on every
            class, as `keras.losses.CategoricalFocalCrossentropy`), or one weight per class
            (binary: `[background, foreground]`).

    Returns:
        float32 `[B]`.

    Example:
        >>> masks = tf.constant([[[0, 1], [2, 3]]])  # [B, H, W] class ids
        >>> logits = tf.random.normal([1, 2, 2, 4])
        >>> probs = tf.nn.softmax(logits)
        >>> loss = dense_focal_loss(masks, logits, gamma=2.0, alpha=[0.1, 1.0, 1.0, 1.0],
        ...                         from_logits=True)

    Reference:
        Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """
    _check_gamma(gamma)
    alpha = _alpha_vector(_check_alpha(alpha), _channels(y_pred))
    return _focal_per_image(y_true, y_pred, gamma, alpha, from_logits, ignore_index)


def dice_focal_loss(y_true, y_pred, dice_weight=1.0, focal_weight=1.0, gamma=2.0, alpha=None,
                    smooth=1.0, from_logits=False, class_weights=None, ignore_index=None):
    """Soft Dice plus dense focal loss, per image: `dice_weight * Dice + focal_weight * FL`.

    The combination the seed notes recommend for small organs: the focal term keeps the
    gradient steady where Dice alone swings for small objects, the Dice term fights imbalance.

    Args:
        dice_weight, focal_weight: weights of the two terms (default 1 and 1).
        gamma, alpha: as `dense_focal_loss`.
        smooth, class_weights: of the Dice term, as `dice_loss`.
        y_true, y_pred, from_logits, ignore_index: as `dice_loss`.

    Returns:
        float32 `[B]`.

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

    Formula (per image, over the pixels i that are not ignored, w the weight of the true class):
        loss = sum_i w[t_i] * CE_i / sum_i w[t_i]
    which is what `torch.nn.CrossEntropyLoss(weight, ignore_index)` computes per image. Without
    `class_weights` it is the mean cross-entropy.

    Args:
        y_true, y_pred, from_logits, ignore_index: as `dice_loss`.
        class_weights: one non-negative weight per class (binary: `[background, foreground]`),
            e.g. inverse class frequencies.

    Returns:
        float32 `[B]`.

    Example:
        >>> masks = tf.constant([[[0, 1], [2, 3]]])  # [B, H, W] class ids
        >>> logits = tf.random.normal([1, 2, 2, 4])
        >>> probs = tf.nn.softmax(logits)
        >>> loss = weighted_crossentropy(masks, probs, class_weights=[0.2, 1.0, 1.0, 1.0])
    """
    weights = _alpha_vector(_check_weights(class_weights), _channels(y_pred), "class_weights")
    loss, weight, _ = _focal_terms(y_true, y_pred, 0.0, weights, from_logits, ignore_index)
    axes = list(range(1, loss.shape.rank))
    return tf.math.divide_no_nan(tf.reduce_sum(loss, axis=axes), tf.reduce_sum(weight, axis=axes))


def _check_gamma(gamma):
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise ValueError(f"`gamma` must be a non-negative number. Received: gamma={gamma!r}")


def _channels(y_pred):
    shape = y_pred.shape if hasattr(y_pred, "shape") else tf.convert_to_tensor(y_pred).shape
    if len(shape) < 2 or shape[-1] is None:
        raise ValueError(f"`y_pred` needs a known channel dimension. Received: y_pred.shape="
                         f"{tuple(shape)}")
    return int(shape[-1])


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
        >>> inputs = keras.Input((8, 8, 3))
        >>> model = keras.Model(inputs, keras.layers.Conv2D(4, 1, activation="softmax")(inputs))
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


class _ArgumentLoss(keras.losses.Loss):
    """A loss class around a per-image loss function: stores the function's keyword arguments,
    passes them on in `call` and returns them from `get_config`."""

    _function = None
    _arguments = ()

    def __init__(self, reduction, name, dtype, **arguments):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for key in self._arguments:
            setattr(self, key, arguments[key])

    def call(self, y_true, y_pred):
        return type(self)._function(y_true, y_pred,
                                    **{key: getattr(self, key) for key in self._arguments})

    def get_config(self):
        return {**super().get_config(), **{key: getattr(self, key) for key in self._arguments}}


@keras.saving.register_keras_serializable(package="kcv")
class TverskyLoss(_ArgumentLoss):
    """Tversky loss (Salehi et al. 2017) per image, averaged over the batch. See `tversky_loss`.

    `alpha` weighs false positives and `beta` false negatives, as in the paper; the seed notes'
    snippet and `keras.losses.Tversky` up to Keras 3.15 swap the two (keras-team/keras PR
    #23333 fixes Keras), so `TverskyLoss(alpha=a, beta=b)` equals their `alpha=b, beta=a`.

    Args:
        alpha: weight of false positives (default 0.5).
        beta: weight of false negatives (default 0.5).
        smooth, from_logits, class_weights, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> inputs = keras.Input((8, 8, 3))
        >>> model = keras.Model(inputs, keras.layers.Conv2D(4, 1, activation="softmax")(inputs))
        >>> model.compile("adam", loss=kcv.losses.TverskyLoss(alpha=0.3, beta=0.7))

    Reference:
        Salehi, Erdogmus & Gholipour, "Tversky loss function for image segmentation using 3D
        fully convolutional deep networks", MLMI 2017.
    """

    _function = tversky_loss
    _arguments = ("alpha", "beta", "smooth", "from_logits", "class_weights", "ignore_index")

    def __init__(self, alpha=0.5, beta=0.5, smooth=1.0, from_logits=False, class_weights=None,
                 ignore_index=None, reduction="sum_over_batch_size", name="tversky_loss",
                 dtype=None):
        for key, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{key}` must be a non-negative number. Received: {key}={value!r}")
        _check_weights(class_weights)
        super().__init__(reduction, name, dtype, alpha=alpha, beta=beta, smooth=smooth,
                         from_logits=from_logits, class_weights=class_weights,
                         ignore_index=ignore_index)


@keras.saving.register_keras_serializable(package="kcv")
class DiceFocalLoss(_ArgumentLoss):
    """Soft Dice + dense focal loss per image, averaged over the batch. See `dice_focal_loss`.

    Args:
        dice_weight, focal_weight: weights of the two terms (default 1 and 1).
        gamma, alpha: focal parameters, as `dense_focal_loss`.
        smooth, from_logits, class_weights, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = kcv.losses.DiceFocalLoss(gamma=2.0, alpha=[0.25, 1.0, 1.0, 1.0])

    Reference:
        Zhu et al., "AnatomyNet", Medical Physics 2019; Lin et al., "Focal Loss", ICCV 2017.
    """

    _function = dice_focal_loss
    _arguments = ("dice_weight", "focal_weight", "gamma", "alpha", "smooth", "from_logits",
                  "class_weights", "ignore_index")

    def __init__(self, dice_weight=1.0, focal_weight=1.0, gamma=2.0, alpha=None, smooth=1.0,
                 from_logits=False, class_weights=None, ignore_index=None,
                 reduction="sum_over_batch_size", name="dice_focal_loss", dtype=None):
        _check_gamma(gamma)
        _check_alpha(alpha)
        _check_weights(class_weights)
        super().__init__(reduction, name, dtype, dice_weight=dice_weight,
                         focal_weight=focal_weight, gamma=gamma, alpha=alpha, smooth=smooth,
                         from_logits=from_logits, class_weights=class_weights,
                         ignore_index=ignore_index)


@keras.saving.register_keras_serializable(package="kcv")
class WeightedCrossentropy(_ArgumentLoss):
    """Class-weighted pixel cross-entropy with `ignore_index`. See `weighted_crossentropy`.

    Args:
        class_weights: one weight per class (binary: `[background, foreground]`), or `None`.
        from_logits, ignore_index: as `DiceLoss`.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = kcv.losses.WeightedCrossentropy(class_weights=[0.2, 1, 1, 1], ignore_index=255)
    """

    _function = weighted_crossentropy
    _arguments = ("class_weights", "from_logits", "ignore_index")

    def __init__(self, class_weights=None, from_logits=False, ignore_index=None,
                 reduction="sum_over_batch_size", name="weighted_crossentropy", dtype=None):
        _check_weights(class_weights)
        super().__init__(reduction, name, dtype, class_weights=class_weights,
                         from_logits=from_logits, ignore_index=ignore_index)
