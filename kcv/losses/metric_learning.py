"""Metric-learning losses: contrastive, triplet (batch-hard, semi-hard), AM-Softmax, ArcFace.

Each loss is a function returning one value per sample (`[B]`: per pair, per anchor, per
embedding) and a serializable `keras.losses.Loss` class applying the Keras reduction (mean over
the batch by default). The triplet loss mines its triplets inside the batch (each sample is an
anchor), so its batches need several images per label.

There is no `from_logits` argument: the inputs are distances (contrastive), embeddings
(triplet) or cosine similarities in [-1, 1] (AM-Softmax, ArcFace, e.g. the output of
`kcv.layers.CosineClassifier`), never probabilities or logits.
"""

import math

import keras
import tensorflow as tf

from kcv.layers.distance import safe_sqrt
from kcv.losses._base import ArgumentLoss, check_number

_MINING = ("batch_hard", "semi_hard")
_SIN_EPSILON = 1e-7  # keeps d sqrt(1 - c^2) / dc finite at c = +-1


def _check_positive(value, name):
    check_number(value, name)
    if value == 0:
        raise ValueError(f"`{name}` must be a number > 0. Received: {name}={value!r}")


def _check_triplet_args(margin, mining):
    check_number(margin, "margin")
    if mining not in _MINING:
        raise ValueError(f"`mining` must be one of {_MINING}. Received: mining={mining!r}")


def _check_margin_softmax_args(scale, margin, angular=False):
    _check_positive(scale, "scale")
    check_number(margin, "margin")
    if angular and margin > math.pi / 2:
        raise ValueError(f"`margin` must be in [0, pi / 2] radians. Received: margin={margin!r}")


def _flat(x, name, dtype=tf.float32):
    """`[B]` or `[B, 1]` -> `[B]`."""
    x = tf.convert_to_tensor(x)
    if x.shape.rank == 2 and x.shape[-1] == 1:
        x = x[:, 0]
    if x.shape.rank != 1:
        raise ValueError(f"`{name}` must have shape [B] or [B, 1]. Received: {name}.shape="
                         f"{tuple(x.shape)}")
    return tf.cast(x, dtype)


def contrastive_loss(y_true, y_pred, margin=1.0):
    """Contrastive loss of pairs given their distance, one value per pair.

    **Label convention: `y_true = 1` means a SIMILAR pair (same identity) and `y_true = 0` a
    DISSIMILAR pair**, as in tensorflow-addons' `contrastive_loss`. Hadsell, Chopra & LeCun
    (2006) and some Keras examples use the opposite (`Y = 0` for similar pairs): with labels
    in that convention, pass `1 - y_true`.

    Formula (per pair, d the distance, y the label):
        loss = y * d^2 + (1 - y) * max(margin - d, 0)^2
    (Hadsell et al. write both terms with a factor 1/2; tensorflow-addons and kcv leave it out.)
    Similar pairs are pulled together; dissimilar pairs cost nothing once they are `margin` apart.

    Args:
        y_true: `[B]` or `[B, 1]`, 1 for a similar pair, 0 for a dissimilar one (floats in
            [0, 1] interpolate the two terms).
        y_pred: `[B]` or `[B, 1]` non-negative distances, e.g. the output of
            `kcv.models.SiameseNetwork`.
        margin: distance beyond which a dissimilar pair costs 0 (> 0, default 1.0).

    Returns:
        float32 `[B]`: the loss of each pair.

    Example:
        >>> contrastive_loss([1.0, 0.0, 0.0], [0.5, 0.25, 2.0]).numpy()
        array([0.25  , 0.5625, 0.    ], dtype=float32)

    Reference:
        Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
        CVPR 2006, eq. (4).
    """
    _check_positive(margin, "margin")
    y = _flat(y_true, "y_true")
    d = _flat(y_pred, "y_pred")
    return y * tf.square(d) + (1.0 - y) * tf.square(tf.maximum(margin - d, 0.0))


def pairwise_distances(embeddings, squared=False):
    """Euclidean distances between all rows of `embeddings`, `[B, B]`, zero on the diagonal.

    Computed as `|a|^2 + |b|^2 - 2 a.b` clipped at 0 (as tensorflow-addons' `pairwise_distance`;
    memory `[B, B]`, not `[B, B, D]`), with the diagonal set to exactly 0. The square root is
    taken only where the squared distance is positive, so the gradient is never infinite or NaN.
    Equal embeddings in different rows get a squared distance of float32 rounding size
    (about `1e-7 |x|^2`), not exactly 0.

    Args:
        embeddings: float `[B, D]`.
        squared: return squared distances.

    Returns:
        float32 `[B, B]`.
    """
    x = tf.cast(embeddings, tf.float32)
    norms = tf.reduce_sum(tf.square(x), axis=1)
    d2 = norms[:, None] + norms[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True)
    d2 = tf.maximum(d2, 0.0) * (1.0 - tf.eye(tf.shape(x)[0]))
    return d2 if squared else safe_sqrt(d2)


def triplet_loss(y_true, y_pred, margin=1.0, mining="batch_hard", squared=False):
    """Triplet loss with the triplets mined inside the batch, one value per anchor.

    Formula: `max(d(a, p) - d(a, n) + margin, 0)` for anchor a, positive p (same label, p != a)
    and negative n (other label), with d the Euclidean (or, `squared=True`, squared Euclidean)
    distance between embeddings. Every sample of the batch is an anchor. Mining:

    - `"batch_hard"` (Hermans, Beyer & Leibe 2017, eq. (5)): the anchor's farthest positive and
      nearest negative in the batch: `loss[a] = max(max_p d(a, p) - min_n d(a, n) + margin, 0)`.
    - `"semi_hard"` (Schroff, Kalenichenko & Philbin 2015, as tensorflow-addons'
      `triplet_semihard_loss`): for each positive p of the anchor, the nearest negative farther
      from the anchor than p (`d(a, n) > d(a, p)`; it costs something only when it also lies
      within the margin: FaceNet's semi-hard negative) or, if no negative is farther, the
      farthest negative; `loss[a]` is the mean over the anchor's positives. tensorflow-addons
      returns the mean over all (anchor, positive) pairs instead, which is the mean of `loss[a]`
      when every label has the same number of images in the batch (P labels x K images); its
      `distance_metric="L_2"` is `squared=True` here.

    An anchor without a positive or without a negative in the batch forms no triplet: its loss
    is 0, and it still counts in the batch mean of the Keras reduction. Sample P labels x K
    images per batch (Hermans et al.), so that every anchor has both. Memory: `[B, B]` for
    batch-hard, `[B, B, B]` for semi-hard (as tensorflow-addons).

    Args:
        y_true: int labels `[B]` (or `[B, 1]`).
        y_pred: float embeddings `[B, D]`, usually L2-normalised.
        margin: the margin (>= 0, default 1.0).
        mining: `"batch_hard"` (default) or `"semi_hard"`.
        squared: use squared Euclidean distances (FaceNet, tensorflow-addons) instead of
            Euclidean ones (Hermans et al.; default).

    Returns:
        float32 `[B]`: the loss of each anchor.

    Example:
        >>> labels = [0, 0, 1, 1]
        >>> points = [[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]]
        >>> triplet_loss(labels, points, margin=1.0).numpy()
        array([0.5, 1.5, 2. , 0.5], dtype=float32)
        >>> triplet_loss(labels, points, margin=1.0, mining="semi_hard").numpy()
        array([0.5, 0. , 1. , 0.5], dtype=float32)

    Reference:
        Schroff, Kalenichenko & Philbin, "FaceNet: A Unified Embedding for Face Recognition and
        Clustering", CVPR 2015; Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for
        Person Re-Identification", arXiv:1703.07737, 2017.
    """
    _check_triplet_args(margin, mining)
    labels = _flat(y_true, "y_true", tf.int64)
    y_pred = tf.convert_to_tensor(y_pred)
    if y_pred.shape.rank != 2:
        raise ValueError(f"`y_pred` must be embeddings [B, D]. Received: y_pred.shape="
                         f"{tuple(y_pred.shape)}")
    dist = pairwise_distances(y_pred, squared)
    same = tf.equal(labels[:, None], labels[None, :])
    positive = tf.logical_and(same, tf.logical_not(tf.cast(tf.eye(tf.shape(dist)[0]), tf.bool)))
    negative = tf.logical_not(same)
    has_negative = tf.reduce_any(negative, axis=1)
    big = tf.reduce_max(dist) + 1.0
    if mining == "batch_hard":
        hardest_positive = tf.reduce_max(tf.where(positive, dist, -1.0), axis=1)
        nearest_negative = tf.reduce_min(tf.where(negative, dist, big), axis=1)
        loss = tf.maximum(hardest_positive - nearest_negative + margin, 0.0)
        valid = tf.logical_and(tf.reduce_any(positive, axis=1), has_negative)
        return tf.where(valid, loss, 0.0)
    # semi-hard: [anchor, positive, negative] with d(a, n) > d(a, p).
    farther = tf.logical_and(negative[:, None, :], dist[:, None, :] > dist[:, :, None])
    nearest_farther = tf.reduce_min(tf.where(farther, dist[:, None, :], big), axis=2)
    farthest_negative = tf.reduce_max(tf.where(negative, dist, -1.0), axis=1)
    chosen = tf.where(tf.reduce_any(farther, axis=2), nearest_farther, farthest_negative[:, None])
    pairs = tf.cast(tf.logical_and(positive, has_negative[:, None]), tf.float32)
    loss = tf.maximum(dist - chosen + margin, 0.0) * pairs
    return tf.math.divide_no_nan(tf.reduce_sum(loss, axis=1), tf.reduce_sum(pairs, axis=1))


def _target_mask(y_true, y_pred):
    """One-hot `[B, C]` float32 from sparse `[B]`/`[B, 1]` labels or one-hot `[B, C]` targets."""
    y_true = tf.convert_to_tensor(y_true)
    num_classes = y_pred.shape[-1]
    if y_pred.shape.rank != 2 or num_classes is None:
        raise ValueError(f"`y_pred` must be cosine similarities [B, C] with C known. Received: "
                         f"y_pred.shape={tuple(y_pred.shape)}")
    if y_true.shape.rank == 2 and y_true.shape[-1] == num_classes and num_classes > 1:
        return tf.cast(y_true, tf.float32)
    return tf.one_hot(tf.cast(_flat(y_true, "y_true"), tf.int32), num_classes)


def _margin_softmax(onehot, cosines, target, scale):
    """Softmax cross-entropy of `scale * cos` with the target cosine replaced by `target`."""
    logits = scale * (onehot * target + (1.0 - onehot) * cosines)
    return tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=logits)


def am_softmax_loss(y_true, y_pred, scale=30.0, margin=0.35):
    """Additive-margin softmax (AM-Softmax, also CosFace) on cosine similarities, per sample.

    Formula (per sample, c_j the cosine to class j, t the target class, s the scale, m the
    margin):
        loss = -log( exp(s (c_t - m)) / (exp(s (c_t - m)) + sum_{j != t} exp(s c_j)) )
    The margin is only applied in the loss: at inference the cosines themselves are the scores.

    Args:
        y_true: int class labels `[B]` (or `[B, 1]`), or one-hot `[B, C]`.
        y_pred: cosine similarities `[B, C]` in [-1, 1] between L2-normalised embeddings and
            L2-normalised class weights (`kcv.layers.CosineClassifier`).
        scale: the scale s (> 0, default 30, the paper's).
        margin: the additive cosine margin m (>= 0, default 0.35, the paper's).

    Returns:
        float32 `[B]`.

    Example:
        >>> cosines = [[0.9, 0.1, -0.2]]
        >>> round(float(am_softmax_loss([0], cosines, scale=10.0, margin=0.3)[0]), 5)
        0.00705

    Reference:
        Wang, Cheng, Liu & Liu, "Additive Margin Softmax for Face Verification", IEEE Signal
        Processing Letters 2018 (arXiv:1801.05599), eq. (6); Wang et al., "CosFace", CVPR 2018.
    """
    _check_margin_softmax_args(scale, margin)
    cosines = tf.cast(tf.convert_to_tensor(y_pred), tf.float32)
    onehot = _target_mask(y_true, cosines)
    return _margin_softmax(onehot, cosines, cosines - margin, scale)


def arcface_loss(y_true, y_pred, scale=64.0, margin=0.5):
    """ArcFace: additive angular margin softmax on cosine similarities, per sample.

    Formula (per sample, c_t = cos(theta_t) the target cosine, s the scale, m the margin):
        target = cos(theta_t + m)          if cos(theta_t) > cos(pi - m)
                 cos(theta_t) - m sin(m)   otherwise
        loss = softmax cross-entropy of s * (target on class t, c_j on the other classes)
    with `cos(theta + m) = c cos(m) - sqrt(1 - c^2) sin(m)`. The second branch keeps the target
    logit decreasing in theta where `theta + m` would pass pi (insightface's
    `easy_margin=False`, `recognition/arcface_torch/losses.py`, where the constant
    `sin(pi - m) * m` equals `m sin(m)`). The margin is only applied in the loss: at
    inference the cosines themselves are the scores.

    Args:
        y_true: int class labels `[B]` (or `[B, 1]`), or one-hot `[B, C]`.
        y_pred: cosine similarities `[B, C]` in [-1, 1] (`kcv.layers.CosineClassifier`).
        scale: the scale s (> 0, default 64, the paper's).
        margin: the additive angular margin m in radians (in [0, pi / 2], default 0.5, the
            paper's).

    Returns:
        float32 `[B]`.

    Example:
        >>> cosines = [[0.9, 0.1, -0.2]]
        >>> round(float(arcface_loss([0], cosines, scale=10.0, margin=0.3)[0]), 5)
        0.00191

    Reference:
        Deng, Guo, Xue & Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face
        Recognition", CVPR 2019 (arXiv:1801.07698).
    """
    _check_margin_softmax_args(scale, margin, angular=True)
    cosines = tf.cast(tf.convert_to_tensor(y_pred), tf.float32)
    onehot = _target_mask(y_true, cosines)
    sines = tf.sqrt(tf.clip_by_value(1.0 - tf.square(cosines), _SIN_EPSILON, 1.0))
    shifted = cosines * math.cos(margin) - sines * math.sin(margin)
    target = tf.where(cosines > math.cos(math.pi - margin), shifted,
                      cosines - margin * math.sin(margin))
    return _margin_softmax(onehot, cosines, target, scale)


@keras.saving.register_keras_serializable(package="kcv")
class ContrastiveLoss(ArgumentLoss):
    """Contrastive loss of distances; `y_true = 1` marks a SIMILAR pair. See `contrastive_loss`.

    Hadsell et al. (2006) and some Keras examples label similar pairs 0: pass `1 - y_true`.

    Args:
        margin: distance beyond which a dissimilar pair costs 0 (default 1.0).
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = ContrastiveLoss(margin=1.0)
        >>> float(loss([1.0, 0.0], [0.5, 0.25]))  # (0.25 + 0.5625) / 2
        0.40625
    """

    _function = staticmethod(contrastive_loss)

    def __init__(self, margin=1.0, reduction="sum_over_batch_size", name="contrastive_loss",
                 dtype=None):
        _check_positive(margin, "margin")
        super().__init__(reduction=reduction, name=name, dtype=dtype, margin=margin)


@keras.saving.register_keras_serializable(package="kcv")
class TripletLoss(ArgumentLoss):
    """Triplet loss with batch-hard or semi-hard mining. See `triplet_loss`.

    `y_true` are int labels `[B]`, `y_pred` the embeddings `[B, D]`; the function gives one
    value per anchor and the Keras reduction averages them over the batch (by default).

    Args:
        margin: the margin (default 1.0).
        mining: `"batch_hard"` (default) or `"semi_hard"`.
        squared: squared Euclidean distances instead of Euclidean ones.
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = TripletLoss(margin=1.0, mining="semi_hard")
        >>> float(loss([0, 0, 1, 1], [[0.0, 0.0], [0.0, 1.0], [0.0, 1.5], [0.0, 3.0]]))
        0.5
    """

    _function = staticmethod(triplet_loss)

    def __init__(self, margin=1.0, mining="batch_hard", squared=False,
                 reduction="sum_over_batch_size", name="triplet_loss", dtype=None):
        _check_triplet_args(margin, mining)
        super().__init__(reduction=reduction, name=name, dtype=dtype, margin=margin,
                         mining=mining, squared=squared)


@keras.saving.register_keras_serializable(package="kcv")
class AMSoftmaxLoss(ArgumentLoss):
    """Additive-margin softmax (AM-Softmax / CosFace) on cosines. See `am_softmax_loss`.

    Args:
        scale: the scale s (default 30).
        margin: the additive cosine margin m (default 0.35).
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = AMSoftmaxLoss(scale=10.0, margin=0.3)
        >>> round(float(loss([0, 1], [[0.9, 0.1, -0.2], [0.9, 0.1, -0.2]])), 4)  # mean of 2
        5.5035
    """

    _function = staticmethod(am_softmax_loss)

    def __init__(self, scale=30.0, margin=0.35, reduction="sum_over_batch_size",
                 name="am_softmax_loss", dtype=None):
        _check_margin_softmax_args(scale, margin)
        super().__init__(reduction=reduction, name=name, dtype=dtype, scale=scale, margin=margin)


@keras.saving.register_keras_serializable(package="kcv")
class ArcFaceLoss(ArgumentLoss):
    """ArcFace additive angular margin softmax on cosines. See `arcface_loss`.

    Args:
        scale: the scale s (default 64).
        margin: the additive angular margin m in radians (default 0.5).
        reduction, name, dtype: as `keras.losses.Loss`.

    Example:
        >>> loss = ArcFaceLoss(scale=10.0, margin=0.3)
        >>> round(float(loss([0], [[0.9, 0.1, -0.2]])), 5)
        0.00191
    """

    _function = staticmethod(arcface_loss)

    def __init__(self, scale=64.0, margin=0.5, reduction="sum_over_batch_size",
                 name="arcface_loss", dtype=None):
        _check_margin_softmax_args(scale, margin, angular=True)
        super().__init__(reduction=reduction, name=name, dtype=dtype, scale=scale, margin=margin)
