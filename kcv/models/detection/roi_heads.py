"""The Fast R-CNN RoI head of Faster R-CNN: box head layer, training targets, losses, detections.

Semantics are torchvision's `torchvision.models.detection.roi_heads.RoIHeads` (defaults of
`fasterrcnn_resnet50_fpn`), batched over padded tensors. Internally label 0 is background and
data class `c` is label `c + 1` (kcv's data has no background id, docs/detection.md); the
detections come back in data classes.
"""


import math

import keras
import tensorflow as tf

from custom_ops import boxes as box_ops
from custom_ops._context import use_nested_xla
from custom_ops.nms import batched_nms
from kcv.layers._checks import check_positive_int
from kcv.layers.roi import MultiScaleRoIAlign, RoIPool
from kcv.losses.detection import box_iou_loss, smooth_l1_loss
from kcv.models._checks import check_one_of
from kcv.models.detection.matcher import (
    BETWEEN_THRESHOLDS,
    Matcher,
    matched_box_targets,
    pairwise_iou,
)
from kcv.models.detection.sampler import BalancedPositiveNegativeSampler, first_true_indices

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
POOLERS = ("roi_align", "roi_pool")
BOX_LOSSES = ("smooth_l1", "giou")
_SUM_SLACK = 1e-5  # float32 softmax probabilities of a row may sum to 1 + a few ulps


def softmax_classes_bound(score_threshold, num_classes):
    """How many classes of one RoI can pass `score > score_threshold` when its scores sum to 1.

    `k` classes above the threshold sum to more than `k * score_threshold`, and softmax
    probabilities (or their mean over Cascade R-CNN's stages) sum to at most 1, so
    `k < 1 / score_threshold`: at most 19 of torchvision's 90 COCO classes at the default
    0.05 (20 is returned: float32 sums may exceed 1 by a few ulps). Every (RoI, class) pair
    that can survive the threshold is then among the `bound` best classes of its RoI, so NMS
    over those alone gives the same detections.

    Args:
        score_threshold: the detection score threshold (a Python float; anything else, or a
            value <= 0, bounds nothing).
        num_classes: object classes `C`.

    Returns:
        int in `[1, num_classes]` (`num_classes` when nothing is bounded).

    Example:
        >>> softmax_classes_bound(0.05, 90), softmax_classes_bound(0.0, 90)
        (20, 90)
    """
    if (isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float))
            or not score_threshold > 0):
        return num_classes
    return max(1, min(num_classes, math.floor((1.0 + _SUM_SLACK) / score_threshold)))



@keras.saving.register_keras_serializable(package="kcv")
class RoIBoxHead(keras.layers.Layer):
    """Pools each RoI (FPN MultiScaleRoIAlign), a two-layer MLP, class scores and per-class boxes.

    torchvision's `MultiScaleRoIAlign(7, sampling_ratio=2)` (its `roi_align` without the
    half-pixel shift: `aligned=False`), `TwoMLPHead` (flatten, `fc6`, ReLU, `fc7`, ReLU) and
    `FastRCNNPredictor` (`cls_score` to `num_classes + 1` logits, background first, and
    `bbox_pred` to `(num_classes + 1) * 4` deltas `[dy, dx, dh, dw]`, class-major).

    Args:
        num_classes: object classes, without background.
        representation_size: width of the MLP (1024).
        output_size: RoIAlign bins per side (7).
        spatial_scales: scale of each input map, finest first (default P2..P5:
            `(1/4, 1/8, 1/16, 1/32)`).
        sampling_ratio: RoIAlign samples per bin side (2).
        aligned: RoIAlign half-pixel shift (default False, as torchvision's MultiScaleRoIAlign).
        pooler: `"roi_align"` (default, `MultiScaleRoIAlign` over the maps) or `"roi_pool"`
            (Fast R-CNN's `RoIPool` max pooling on a single map, `spatial_scales` of one
            entry, e.g. `(1 / 16,)` for VGG16 conv5_3; `sampling_ratio` and `aligned` unused).
        class_agnostic: one box for all classes (`bbox_pred` to 4 deltas, as the stages of
            Cascade R-CNN) instead of one per class (default False).
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `[map_0, ..., map_{L-1}, rois]`: maps `[B, H_l, W_l, C]`, `rois` `[B, R, 4]`
            yxyx image pixels (padded RoIs are pooled too and must be masked by the caller).

    Returns:
        `(class_logits [B, R, num_classes + 1], box_deltas [B, R, num_classes + 1, 4])`
        (`[B, R, 1, 4]` when `class_agnostic`).

    Example:
        >>> head = RoIBoxHead(3, representation_size=16, spatial_scales=(1 / 4,))
        >>> logits, deltas = head([tf.zeros([2, 8, 8, 4]), tf.zeros([2, 5, 4])])
        >>> tuple(logits.shape), tuple(deltas.shape)
        ((2, 5, 4), (2, 5, 4, 4))

    Reference:
        Girshick, "Fast R-CNN", ICCV 2015; He et al., "Mask R-CNN", ICCV 2017 (RoIAlign).
    """

    def __init__(self, num_classes, representation_size=1024, output_size=7,
                 spatial_scales=(0.25, 0.125, 0.0625, 0.03125), sampling_ratio=2, aligned=False,
                 pooler="roi_align", class_agnostic=False, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        check_positive_int("representation_size", representation_size)
        check_one_of("pooler", pooler, POOLERS)
        if pooler == "roi_pool" and len(spatial_scales) != 1:
            raise ValueError("`pooler='roi_pool'` pools a single feature map: `spatial_scales` "
                             f"needs one entry. Received: spatial_scales={spatial_scales!r}")
        self.num_classes = num_classes
        self.representation_size = representation_size
        self.output_size = output_size
        self.spatial_scales = spatial_scales
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.pooler = pooler
        if pooler == "roi_pool":
            self.roi_pool = RoIPool(output_size, spatial_scales[0], dtype=self.dtype_policy,
                                    name="roi_pool")
        else:
            self.roi_align = MultiScaleRoIAlign(output_size, spatial_scales, sampling_ratio,
                                                aligned, dtype=self.dtype_policy, name="roi_align")
        self.class_agnostic = class_agnostic
        self._box_classes = 1 if class_agnostic else num_classes + 1
        dense = dict(dtype=self.dtype_policy)
        self.fc6 = keras.layers.Dense(representation_size, activation="relu", name="fc6", **dense)
        self.fc7 = keras.layers.Dense(representation_size, activation="relu", name="fc7", **dense)
        self.cls_score = keras.layers.Dense(num_classes + 1, name="cls_score", **dense)
        self.bbox_pred = keras.layers.Dense(self._box_classes * 4, name="bbox_pred", **dense)
        self._convert_input_args = False  # RoIs stay float32 under mixed precision

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, (list, tuple)):  # arrays become tensors of their own dtype
            inputs = [x if tf.is_tensor(x) or isinstance(x, keras.KerasTensor)
                      else tf.convert_to_tensor(x) for x in inputs]
        return super().__call__(inputs, *args, **kwargs)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != len(
                self.spatial_scales) + 1:
            raise ValueError(
                f"RoIBoxHead expects [{len(self.spatial_scales)} feature maps, rois]. "
                f"Received: input_shape={input_shape}")
        channels = input_shape[0][-1]
        oh, ow = (self.output_size, self.output_size) if isinstance(
            self.output_size, int) else self.output_size
        self.fc6.build((None, oh * ow * channels))
        self.fc7.build((None, self.representation_size))
        self.cls_score.build((None, self.representation_size))
        self.bbox_pred.build((None, self.representation_size))

    def call(self, inputs):
        maps, rois = list(inputs[:-1]), tf.cast(inputs[-1], tf.float32)
        batch, num = tf.shape(rois)[0], tf.shape(rois)[1]
        flat = tf.reshape(rois, [-1, 4])
        indices = tf.repeat(tf.range(batch), num)
        pool = self.roi_pool if self.pooler == "roi_pool" else self.roi_align
        pooled = pool([*maps, flat, indices])
        x = tf.reshape(pooled, [tf.shape(pooled)[0], -1])
        x = self.fc7(self.fc6(x))
        logits = tf.reshape(self.cls_score(x), [batch, num, self.num_classes + 1])
        deltas = tf.reshape(self.bbox_pred(x), [batch, num, self._box_classes, 4])
        return logits, deltas

    def compute_output_shape(self, input_shape):
        b, r = input_shape[-1][0], input_shape[-1][1]
        return (b, r, self.num_classes + 1), (b, r, self._box_classes, 4)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "representation_size": self.representation_size,
                "output_size": self.output_size, "spatial_scales": self.spatial_scales,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned,
                "pooler": self.pooler, "class_agnostic": self.class_agnostic}


def trim_padded_rois(rois, num_rois):
    """The RoI slots up to the batch's largest valid count, when shapes may vary.

    Proposals come padded to a fixed count (`generate_proposals`' `post_nms_top_n`); the RoI
    head treats each slot on its own and the detections ignore slots past `num_rois`, so
    dropping the slots that are padding in every image of the batch changes no detection and
    saves their RoIAlign and MLP work (an untrained RPN, or a small image, may keep far fewer
    than 1000). Under XLA (`jit_compile=True`) and while writing a SavedModel/TFLite model
    (which want static shapes) the RoIs are returned unchanged. At least one slot is kept.

    Args:
        rois: `[B, R, 4]`; num_rois: int `[B]`, valid RoIs per image (the first ones).

    Returns:
        `rois[:, :max(1, max(num_rois))]`, or `rois` itself under XLA or export.

    Example:
        >>> trim_padded_rois(tf.zeros([2, 5, 4]), tf.constant([3, 1])).shape
        TensorShape([2, 3, 4])
    """
    if not use_nested_xla():
        return rois
    with tf.name_scope("trim_padded_rois"):
        return rois[:, :tf.maximum(tf.reduce_max(tf.cast(num_rois, tf.int32)), 1)]


def roi_targets(proposals, num_proposals, gt_boxes, gt_classes, seed, matcher=None,
                sampler=None, add_gt_boxes=True, weights=BOX_WEIGHTS):
    """Training RoIs and their targets, torchvision's `RoIHeads.select_training_samples`.

    The ground-truth boxes are appended to the proposals (`add_gt_boxes`), each candidate is
    matched (`Matcher(0.5, 0.5)`: IoU >= 0.5 object, else background), `sampler` draws 512 per
    image with at most 25% objects, and the regression targets are encoded with `weights`
    (10, 10, 5, 5).

    Args:
        proposals: float Tensor `[B, P, 4]` yxyx (e.g. from `generate_proposals`).
        num_proposals: int Tensor `[B]`, valid proposals per image (the first ones).
        gt_boxes: float Tensor `[B, M, 4]`, padded; `gt_classes`: int `[B, M]`, -1 padding.
        seed: int Tensor `[2]` (or `[B, 2]`, one per image) for the sampler.
        matcher: default `Matcher(0.5, 0.5, allow_low_quality_matches=False)`.
        sampler: default `BalancedPositiveNegativeSampler(512, 0.25)`.
        add_gt_boxes: append the GT boxes to the candidates (default True, as torchvision).
        weights: box coder weights of the targets (default (10, 10, 5, 5)).

    Returns:
        `(rois, labels, targets)`: `[B, S, 4]` sampled RoIs (`S = sampler.batch_size_per_image`),
        int32 `[B, S]` labels (0 background, `class + 1` object, -1 for empty slots when an
        image has fewer than `S` candidates) and `[B, S, 4]` regression targets (zeros
        unless the label is >= 1).

    Example:
        >>> rois, labels, targets = roi_targets(
        ...     tf.constant([[[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]]]), tf.constant([2]),
        ...     tf.constant([[[0.0, 0.0, 10.0, 12.0]]]), tf.constant([[2]]), seed=[0, 0],
        ...     sampler=BalancedPositiveNegativeSampler(4, 0.5))
        >>> labels.numpy()  # proposal 0 (IoU 0.83) and the appended GT: class 2 -> label 3
        array([[ 3,  0,  3, -1]], dtype=int32)
    """
    matcher = matcher or Matcher(0.5, 0.5, allow_low_quality_matches=False)
    sampler = sampler or BalancedPositiveNegativeSampler(512, 0.25)
    with tf.name_scope("roi_targets"):
        proposals = tf.cast(proposals, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_valid = gt_classes >= 0
        valid = tf.range(tf.shape(proposals)[1])[None] < tf.cast(num_proposals, tf.int32)[:, None]
        if add_gt_boxes:
            proposals = tf.concat([proposals, gt_boxes], axis=1)
            valid = tf.concat([valid, gt_valid], axis=1)
        matches = matcher(pairwise_iou(gt_boxes, proposals), gt_valid)
        matched_class = tf.gather(gt_classes, tf.maximum(matches, 0), batch_dims=1)
        labels = tf.where(matches >= 0, tf.cast(matched_class, tf.int32) + 1,
                          tf.where(matches == BETWEEN_THRESHOLDS, -1, 0))
        labels = tf.where(valid, labels, -1)
        pos, neg = sampler(labels, seed)
        index, taken = first_true_indices(pos | neg, sampler.batch_size_per_image)
        rois = tf.where(taken[..., None], tf.gather(proposals, index, batch_dims=1), 0.0)
        labels = tf.where(taken, tf.gather(labels, index, batch_dims=1), -1)
        matches = tf.where(taken, tf.gather(matches, index, batch_dims=1), -1)
        safe_rois = tf.where(taken[..., None], rois, tf.constant([0.0, 0.0, 1.0, 1.0]))
        targets = matched_box_targets(matches, gt_boxes, safe_rois, weights)
        return rois, labels, targets


def roi_loss(class_logits, box_deltas, labels, targets, beta=1.0 / 9, box_loss="smooth_l1",
             rois=None):
    """torchvision's `fastrcnn_loss` over the valid sampled RoIs of the batch.

    classifier = mean softmax cross-entropy over RoIs with `labels >= 0`; box = the box loss
    of the deltas predicted for the true class, summed over object RoIs and divided by the
    number of valid RoIs: smooth L1 (`beta`) of the deltas, or with `box_loss="giou"` the GIoU
    loss `1 - GIoU` (`kcv.losses.box_iou_loss`) between the predicted box (the deltas decoded
    on the RoI, weights (10, 10, 5, 5)) and the matched ground-truth box (the targets decoded
    on the same RoI), as torchvision's `_box_loss("giou", ...)`.

    Args:
        class_logits: `[B, S, num_classes + 1]`; box_deltas: `[B, S, num_classes + 1, 4]`.
        labels, targets: from `roi_targets` (-1 labels are left out).
        beta: smooth L1 transition point (1/9).
        box_loss: `"smooth_l1"` (default) or `"giou"`.
        rois: `[B, S, 4]` yxyx, the sampled RoIs the deltas refer to (from `roi_targets`);
            needed by `box_loss="giou"`.

    Returns:
        `(classifier_loss, box_loss)`, float32 scalars.

    Example:
        >>> logits = tf.constant([[[0.0, 0.0], [0.0, 0.0]]])
        >>> cls, box = roi_loss(logits, tf.zeros([1, 2, 2, 4]), tf.constant([[1, -1]]),
        ...                     tf.zeros([1, 2, 4]))
        >>> round(float(cls), 4), float(box)
        (0.6931, 0.0)
        >>> _, giou = roi_loss(logits, tf.zeros([1, 2, 2, 4]), tf.constant([[1, -1]]),
        ...                    tf.zeros([1, 2, 4]), box_loss="giou",
        ...                    rois=tf.constant([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]]))
        >>> float(giou)  # the predicted box is the target: 1 - GIoU = 0
        0.0

    Reference:
        Girshick, "Fast R-CNN", ICCV 2015; Rezatofighi et al., "Generalized Intersection over
        Union", CVPR 2019.
    """
    check_one_of("box_loss", box_loss, BOX_LOSSES)
    if box_loss == "giou" and rois is None:
        raise ValueError("`box_loss='giou'` decodes the deltas on their RoIs: pass `rois`. "
                         "Received: rois=None")
    with tf.name_scope("roi_loss"):
        class_logits = tf.cast(class_logits, tf.float32)
        box_deltas = tf.cast(box_deltas, tf.float32)
        valid = labels >= 0
        count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(labels, 0), class_logits)
        classifier = tf.reduce_sum(tf.where(valid, ce, 0.0)) / count
        own = tf.gather(box_deltas, tf.maximum(labels, 0), batch_dims=2)  # [B, S, 4]
        targets = tf.stop_gradient(tf.cast(targets, tf.float32))
        if box_loss == "giou":
            # Non-object slots get a unit box and zero deltas: finite values and gradients.
            objects = (labels >= 1)[..., None]
            safe_rois = tf.where(objects, tf.cast(rois, tf.float32),
                                 tf.constant([0.0, 0.0, 1.0, 1.0]))
            predicted = box_ops.decode_boxes(tf.where(objects, own, 0.0), safe_rois,
                                             weights=BOX_WEIGHTS)
            matched = box_ops.decode_boxes(tf.where(objects, targets, 0.0), safe_rois,
                                           weights=BOX_WEIGHTS)
            per_roi = box_iou_loss(matched, predicted, mode="giou")
        else:
            per_roi = tf.reduce_sum(smooth_l1_loss(targets, own, beta=beta), -1)
        box = tf.reduce_sum(tf.where(labels >= 1, per_roi, 0.0)) / count
        return classifier, box


def postprocess_detections(class_logits, box_deltas, rois, num_rois, image_shape,
                           score_threshold=0.05, nms_threshold=0.5, detections_per_image=100,
                           min_size=1e-2, classes_per_roi="auto"):
    """Detections from the RoI head, torchvision's `RoIHeads.postprocess_detections`, padded.

    Softmax over the classes, each RoI decoded once per class (weights (10, 10, 5, 5)),
    clipped to the image; background dropped; (box, class) pairs with score
    `<= score_threshold` or a side `< min_size` dropped; class-wise NMS at `nms_threshold`;
    the `detections_per_image` best kept. (`kcv.layers.DetectionPostProcess` decodes one box
    per anchor, so it does not fit the per-class boxes here.)

    Args:
        class_logits: `[B, R, C + 1]`; box_deltas: `[B, R, C + 1, 4]`.
        rois: `[B, R, 4]` yxyx, the boxes the deltas refer to; num_rois: int `[B]` valid ones.
        image_shape: `(height, width)` or int `[B, 2]`.
        score_threshold, nms_threshold, detections_per_image, min_size: torchvision's
            defaults 0.05, 0.5, 100, 1e-2.
        classes_per_roi: `"auto"` (default): only the `softmax_classes_bound(score_threshold,
            C)` best classes of each RoI (20 of 90 at 0.05) enter the NMS, which gives exactly
            torchvision's detections (softmax scores sum to 1, so no more classes can pass the
            threshold) for 4.5x fewer candidates; or as `select_detections`.

    Returns:
        dict `{"boxes" [B, D, 4], "scores" [B, D], "classes" [B, D] int32 (data classes,
        background removed), "num_detections" [B] int32}`, zeros past `num_detections`.

    Example:
        >>> logits = tf.constant([[[0.0, 5.0]]])  # one RoI, object class 0 at p = 0.993
        >>> out = postprocess_detections(logits, tf.zeros([1, 1, 2, 4]),
        ...                              tf.constant([[[2.0, 2.0, 8.0, 9.0]]]), tf.constant([1]),
        ...                              (16, 16), detections_per_image=3)
        >>> int(out["num_detections"][0]), out["boxes"][0, 0].numpy()
        (1, array([2., 2., 8., 9.], dtype=float32))
    """
    with tf.name_scope("postprocess_detections"):
        scores = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)[:, :, 1:]
        if classes_per_roi == "auto":
            classes_per_roi = softmax_classes_bound(score_threshold, scores.shape[-1])
        _check_detection_args(detections_per_image, classes_per_roi)
        deltas = tf.cast(box_deltas, tf.float32)[:, :, 1:]
        scores, classes = _best_classes(scores, classes_per_roi)
        if classes is not None:  # decode only the candidates' boxes
            deltas = tf.gather(deltas, classes, batch_dims=2)
        boxes = box_ops.decode_boxes(deltas, tf.cast(rois, tf.float32)[:, :, None],
                                     weights=BOX_WEIGHTS)  # [B, R, C or m, 4]
        return _detections(scores, boxes, classes, num_rois, image_shape, score_threshold,
                           nms_threshold, detections_per_image, min_size)


def _check_detection_args(detections_per_image, classes_per_roi):
    check_positive_int("detections_per_image", detections_per_image)
    if classes_per_roi is not None:
        check_positive_int("classes_per_roi", classes_per_roi)


def _best_classes(scores, classes_per_roi):
    """`(scores, classes)` of the `classes_per_roi` best classes per RoI, or `(scores, None)`.

    Among equal scores the lower class comes first (top_k is stable), so NMS breaks score ties
    by (RoI, class) exactly as over all pairs.
    """
    if classes_per_roi is None or classes_per_roi >= scores.shape[-1]:
        return scores, None
    scores = tf.where(tf.math.is_nan(scores), float("-inf"), scores)
    return tf.math.top_k(scores, k=classes_per_roi)


def select_detections(scores, boxes, num_rois, image_shape, score_threshold=0.05,
                      nms_threshold=0.5, detections_per_image=100, min_size=1e-2,
                      classes_per_roi=None):
    """The detection rule of `postprocess_detections` on decoded boxes and class probabilities.

    Boxes are clipped to the image; (box, class) pairs with score `<= score_threshold` or a
    side `< min_size` are dropped; class-wise NMS at `nms_threshold`; the
    `detections_per_image` best kept.

    Args:
        scores: `[B, R, C]` probabilities of the object classes (background removed).
        boxes: `[B, R, C, 4]` yxyx per-class boxes, or `[B, R, 1, 4]` (one box per RoI for
            every class, class-agnostic regression).
        num_rois: int `[B]`, valid RoIs (the first ones).
        image_shape, score_threshold, nms_threshold, detections_per_image, min_size: as
            `postprocess_detections`.
        classes_per_roi: None (default: every class of every RoI is a candidate) or an int
            `m`: only the `m` highest-scoring classes of each RoI (ties: the lower class) are
            candidates. The detections are the same whenever no RoI has more than `m` classes
            with `score > score_threshold`, e.g. for scores that sum to at most 1 per RoI with
            `m = softmax_classes_bound(score_threshold, C)` (as `postprocess_detections` and
            Cascade R-CNN's averaged softmax use it); an RoI with more loses its lower ones.

    Returns:
        The padded detections dict of `postprocess_detections`.

    Example:
        >>> out = select_detections(tf.constant([[[0.9, 0.2]]]),
        ...                         tf.constant([[[[2.0, 2.0, 8.0, 20.0]]]]), tf.constant([1]),
        ...                         (16, 16), detections_per_image=3)
        >>> out["classes"][0, :2].numpy(), out["boxes"][0, 1].numpy()
        (array([0, 1], dtype=int32), array([ 2.,  2.,  8., 16.], dtype=float32))
    """
    _check_detection_args(detections_per_image, classes_per_roi)
    with tf.name_scope("select_detections"):
        scores, classes = _best_classes(tf.cast(scores, tf.float32), classes_per_roi)
        boxes = tf.cast(boxes, tf.float32)
        if classes is not None and boxes.shape[2] != 1:  # one box per RoI: nothing to pick
            boxes = tf.gather(boxes, classes, batch_dims=2)
        return _detections(scores, boxes, classes, num_rois, image_shape, score_threshold,
                           nms_threshold, detections_per_image, min_size)


def _detections(scores, boxes, classes, num_rois, image_shape, score_threshold, nms_threshold,
                detections_per_image, min_size):
    """`select_detections` on candidates `[B, R, m]` of classes `classes` (None: all, in order)."""
    with tf.name_scope("detections"):
        boxes = tf.broadcast_to(boxes, tf.concat([tf.shape(scores), [4]], axis=0))
        shape = tf.cast(tf.convert_to_tensor(image_shape), tf.float32)
        if shape.shape.rank == 2:
            shape = shape[:, None, None, :]
        num_classes = scores.shape[-1]
        batch, num = tf.shape(scores)[0], tf.shape(scores)[1]
        if classes is None:
            classes = tf.broadcast_to(tf.range(num_classes), tf.shape(scores))
        boxes = box_ops.clip_boxes(boxes, shape)
        boxes = tf.reshape(boxes, [batch, -1, 4])
        classes = tf.reshape(classes, [batch, -1])
        roi_valid = tf.range(num)[None] < tf.cast(num_rois, tf.int32)[:, None]
        roi_valid = tf.reshape(tf.repeat(roi_valid, num_classes, axis=1), tf.shape(boxes)[:2])
        scores = tf.reshape(scores, [batch, -1])
        ok = (roi_valid & (boxes[..., 2] - boxes[..., 0] >= min_size)
              & (boxes[..., 3] - boxes[..., 1] >= min_size))
        keep, count = batched_nms(boxes, tf.where(ok, scores, float("-inf")), classes,
                                  nms_threshold, score_threshold, detections_per_image,
                                  pad_to_max_output_size=True)
        valid = tf.range(detections_per_image)[None] < count[:, None]
        return {
            "boxes": tf.where(valid[..., None], tf.gather(boxes, keep, batch_dims=1), 0.0),
            "scores": tf.where(valid, tf.gather(scores, keep, batch_dims=1), 0.0),
            "classes": tf.where(valid, tf.gather(classes, keep, batch_dims=1), 0),
            "num_detections": count,
        }
