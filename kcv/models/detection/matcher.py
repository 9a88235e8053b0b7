"""torchvision's `Matcher`, batched over padded ground truth: each anchor/proposal gets a GT index.

Ground truth follows kcv's detection convention (docs/detection.md): `[B, M, 4]` boxes padded
with class -1; padded rows never match. Everything is tensor ops on `[B, M, N]` (no Python
loop over images or boxes), so it runs under XLA.
"""

import numbers

import tensorflow as tf

from custom_ops import boxes as box_ops

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def pairwise_iou(gt_boxes, boxes):
    """IoU of every GT box with every box, per image: `[B, M, 4] x [B or 1, N, 4] -> [B, M, N]`.

    Args:
        gt_boxes: float Tensor `[B, M, 4]` yxyx.
        boxes: float Tensor `[B, N, 4]` or `[N, 4]` (shared, e.g. anchors) yxyx.

    Returns:
        float Tensor `[B, M, N]` (`custom_ops.boxes.box_iou`; zero-area boxes give 0).

    Example:
        >>> gt = tf.constant([[[0.0, 0.0, 2.0, 2.0]]])
        >>> pairwise_iou(gt, tf.constant([[1.0, 0.0, 3.0, 2.0]])).numpy()
        array([[[0.33333334]]], dtype=float32)
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes)
    boxes = tf.cast(boxes, gt_boxes.dtype)
    if boxes.shape.rank == 2:
        boxes = boxes[None]
    return box_ops.box_iou(gt_boxes[:, :, None, :], boxes[:, None, :, :], aligned=True)


def matched_box_targets(matches, gt_boxes, reference_boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets (`encode_boxes`) of each item's matched GT box, zeros where unmatched.

    Args:
        matches: int Tensor `[B, N]` from a `Matcher` (negative: unmatched).
        gt_boxes: float Tensor `[B, M, 4]`.
        reference_boxes: float Tensor `[B or 1, N, 4]`, the anchors/RoIs (positive sizes).
        weights: the box coder weights.

    Returns:
        float Tensor `[B, N, 4]`, finite everywhere (unmatched items never reach `log(0)` of a
        padded GT box).

    Example:
        >>> matched_box_targets(tf.constant([[0, -1]]), tf.constant([[[0.0, 0.0, 20.0, 10.0]]]),
        ...                     tf.constant([[[0.0, 0.0, 10.0, 10.0]] * 2])).numpy()[0]
        array([[0.5      , 0.       , 0.6931472, 0.       ],
               [0.       , 0.       , 0.       , 0.       ]], dtype=float32)
    """
    matched = tf.gather(gt_boxes, tf.maximum(matches, 0), batch_dims=1)
    positive = (matches >= 0)[..., None]
    matched = tf.where(positive, matched, reference_boxes)
    return tf.where(positive, box_ops.encode_boxes(matched, reference_boxes, weights), 0.0)


class Matcher:
    """Assigns each prediction (anchor or proposal) the ground truth it overlaps most.

    For prediction `j` with best quality `q_j = max_i Q[i, j]` (over valid GTs `i`):
    `match_j = argmax_i Q[i, j]` if `q_j >= high_threshold`, `BETWEEN_THRESHOLDS` (-2) if
    `low_threshold <= q_j < high_threshold`, `BELOW_LOW_THRESHOLD` (-1) if `q_j < low_threshold`
    or the image has no GT. With `allow_low_quality_matches=True` every prediction that
    achieves some GT's highest quality (all ties) gets back its argmax match even when below
    the thresholds, as in torchvision (the Faster R-CNN paper's condition (i) for RPN
    positives). One deliberate difference: a GT whose highest quality is 0 (it overlaps no
    prediction) adds no low-quality matches; torchvision would then match every prediction
    with quality 0 to that GT.

    Args:
        high_threshold: quality at or above which a match is kept (0.7 for RPN, 0.5 for the
            RoI head).
        low_threshold: quality below which a prediction is background (0.3 for RPN; equal to
            `high_threshold` for the RoI head).
        allow_low_quality_matches: keep each GT's best predictions (RPN: True).

    Call arguments:
        match_quality: float Tensor `[B, M, N]` (GT x predictions), e.g. `pairwise_iou`.
        gt_valid: bool Tensor `[B, M]`, False for padded GT rows (e.g. `classes >= 0`);
            None means every row is valid.

    Returns:
        int32 Tensor `[B, N]`: the matched GT index in `[0, M)`, or -1 / -2.

    Example:
        >>> q = tf.constant([[[0.9, 0.5, 0.1, 0.2]]])
        >>> Matcher(0.7, 0.3, allow_low_quality_matches=False)(q).numpy()
        array([[ 0, -2, -1, -1]], dtype=int32)

    Reference:
        torchvision.models.detection._utils.Matcher; Ren et al., "Faster R-CNN", NeurIPS 2015
        (section 3.1.2).
    """

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False):
        for name, value in (("high_threshold", high_threshold), ("low_threshold", low_threshold)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
        if low_threshold > high_threshold:
            raise ValueError(
                "`low_threshold` must be <= `high_threshold`. Received: "
                f"low_threshold={low_threshold!r}, high_threshold={high_threshold!r}")
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, match_quality, gt_valid=None):
        with tf.name_scope("matcher"):
            quality = tf.convert_to_tensor(match_quality)
            if quality.shape.rank != 3:
                raise ValueError("`match_quality` must be [B, M, N] (GT x predictions). "
                                 f"Received: match_quality.shape={quality.shape}")
            if gt_valid is None:
                gt_valid = tf.ones(tf.shape(quality)[:2], tf.bool)
            gt_valid = tf.cast(gt_valid, tf.bool)
            # Padded rows get -1 (below any IoU): never the max for a prediction.
            quality = tf.where(gt_valid[:, :, None], quality, tf.constant(-1.0, quality.dtype))
            matched_vals = tf.reduce_max(quality, axis=1)  # [B, N]
            all_matches = tf.argmax(quality, axis=1, output_type=tf.int32)  # first max on ties
            matches = tf.where(
                matched_vals < self.low_threshold, BELOW_LOW_THRESHOLD,
                tf.where(matched_vals < self.high_threshold, BETWEEN_THRESHOLDS, all_matches))
            if self.allow_low_quality_matches:
                best_per_gt = tf.reduce_max(quality, axis=2, keepdims=True)  # [B, M, 1]
                is_best = (tf.equal(quality, best_per_gt) & gt_valid[:, :, None]
                           & (best_per_gt > 0))
                matches = tf.where(tf.reduce_any(is_best, axis=1), all_matches, matches)
            return matches
