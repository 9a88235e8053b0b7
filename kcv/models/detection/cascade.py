"""Cascade R-CNN: a sequence of RoI box heads, each trained on the previous one's boxes.

Stage `t` pools the boxes refined by stage `t - 1`, matches them to the ground truth at its own
IoU threshold (0.5, 0.6, 0.7), and regresses class-agnostic deltas with its own box coder weights
((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)); the stage losses are weighted
(1, 0.5, 0.25). At test time the class probabilities of the stages are averaged and the boxes of
the last stage kept. Training follows mmdetection's `CascadeRoIHead`: every stage appends the
ground truth to its candidates and samples its own 512 RoIs (at most 25% objects), the appended
GT boxes of the previous stage being left out of the refined candidates.
"""

import keras
import tensorflow as tf

from custom_ops import boxes as box_ops
from kcv.layers._checks import check_positive_int
from kcv.models.detection.matcher import Matcher
from kcv.models.detection.roi_heads import RoIBoxHead, roi_loss, roi_targets
from kcv.models.detection.sampler import BalancedPositiveNegativeSampler, first_true_indices

CASCADE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
CASCADE_STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
_MIN_SIZE = 1e-3


def refine_boxes(deltas, rois, weights, image_shape):
    """A stage's boxes: class-agnostic `deltas` decoded on `rois`, clipped, without gradient.

    Args:
        deltas: `[B, R, 1, 4]` or `[B, R, 4]` `[dy, dx, dh, dw]`.
        rois: `[B, R, 4]` yxyx, the boxes the deltas refer to.
        weights: the stage's box coder weights.
        image_shape: `(height, width)` or int `[B, 2]`.

    Returns:
        float32 `[B, R, 4]` yxyx boxes in the image.

    Example:
        >>> refine_boxes(tf.constant([[[2.0, 0.0, 0.0, 0.0]]]),
        ...              tf.constant([[[0.0, 0.0, 10.0, 10.0]]]), (10, 10, 5, 5), (32, 32))[0]
        <tf.Tensor: shape=(1, 4), dtype=float32, numpy=array([[ 2.,  0., 12., 10.]], dtype=float32)>
    """
    with tf.name_scope("refine_boxes"):
        deltas = tf.cast(deltas, tf.float32)
        if deltas.shape.rank == 4:
            deltas = deltas[:, :, 0]
        boxes = box_ops.decode_boxes(deltas, tf.cast(rois, tf.float32), weights=weights)
        shape = tf.cast(tf.convert_to_tensor(image_shape), tf.float32)
        if shape.shape.rank == 2:
            shape = shape[:, None, :]
        return tf.stop_gradient(box_ops.clip_boxes(boxes, shape))


def next_stage_candidates(rois, labels, refined, gt_boxes, gt_classes, min_size=_MIN_SIZE):
    """The refined boxes that enter the next stage, packed first (mmdetection's `refine_bboxes`).

    A slot is kept when it held a sampled RoI (`labels >= 0`), the RoI was not one of the GT
    boxes `roi_targets` appended (the next stage appends them again), and its refined box has
    both sides `>= min_size`.

    Args:
        rois: `[B, S, 4]` the stage's sampled RoIs; labels: int `[B, S]` (-1 empty slot).
        refined: `[B, S, 4]` the stage's boxes for them (`refine_boxes`).
        gt_boxes: `[B, M, 4]`; gt_classes: int `[B, M]`, -1 padding.
        min_size: smallest box side kept (1e-3 pixels).

    Returns:
        `(candidates [B, S, 4], num_candidates int32 [B])`, zeros past `num_candidates`.

    Example:
        >>> gt = tf.constant([[[0.0, 0.0, 10.0, 10.0]]])
        >>> rois = tf.constant([[[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0], [0.0] * 4]])
        >>> cand, num = next_stage_candidates(rois, tf.constant([[1, 1, -1]]), rois + 1.0, gt,
        ...                                   tf.constant([[0]]))
        >>> int(num[0]), cand[0, 0].numpy()  # the appended GT and the empty slot are dropped
        (1, array([ 2.,  2., 10., 10.], dtype=float32))
    """
    with tf.name_scope("next_stage_candidates"):
        rois, refined = tf.cast(rois, tf.float32), tf.cast(refined, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes, labels = tf.convert_to_tensor(gt_classes), tf.convert_to_tensor(labels)
        same = tf.reduce_all(tf.equal(rois[:, :, None], gt_boxes[:, None]), axis=-1)
        is_gt = tf.reduce_any(same & (gt_classes >= 0)[:, None], axis=-1)
        keep = ((labels >= 0) & ~is_gt & (refined[..., 2] - refined[..., 0] >= min_size)
                & (refined[..., 3] - refined[..., 1] >= min_size))
        index, taken = first_true_indices(keep, refined.shape[1] or tf.shape(refined)[1])
        candidates = tf.where(taken[..., None], tf.gather(refined, index, batch_dims=1), 0.0)
        return candidates, tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)


@keras.saving.register_keras_serializable(package="kcv")
class CascadeRoIHeads(keras.layers.Layer):
    """The RoI stages of Cascade R-CNN, each a `RoIBoxHead` with class-agnostic regression.

    Each stage is MultiScaleRoIAlign 7x7, a two-layer MLP, class logits and one box per RoI
    (mmdetection's `Shared2FCBBoxHead` with `reg_class_agnostic=True`). `call` runs the stages
    one after the other on the proposals (stage `t` pools the boxes of stage `t - 1`) and returns
    the class probabilities averaged over the stages (the paper's and Detectron2's ensemble;
    mmdetection averages the logits instead) with the last stage's boxes. `compute_losses` is
    the training path (module docstring).

    Args:
        num_classes: object classes, without background.
        iou_thresholds: the foreground IoU of each stage (0.5, 0.6, 0.7); one stage per entry.
        box_weights: box coder weights per stage (default `CASCADE_BOX_WEIGHTS`, three stages).
        stage_loss_weights: weight of each stage's losses (default (1, 0.5, 0.25)).
        representation_size, output_size, spatial_scales, sampling_ratio: as `RoIBoxHead`.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `[map_0, ..., map_{L-1}, proposals]`, proposals `[B, R, 4]` yxyx image pixels.
        image_shape: `(height, width)` or int `[B, 2]`, to clip the boxes.

    Returns:
        `(scores [B, R, num_classes + 1], boxes [B, R, 4])`: mean softmax probabilities
        (background first) and the last stage's boxes, float32.

    Example:
        >>> heads = CascadeRoIHeads(3, representation_size=16, spatial_scales=(1 / 4,))
        >>> scores, boxes = heads([tf.zeros([1, 8, 8, 4]), tf.zeros([1, 5, 4])],
        ...                       image_shape=(32, 32))
        >>> tuple(scores.shape), tuple(boxes.shape), len(heads.stages)
        ((1, 5, 4), (1, 5, 4), 3)

    Reference:
        Cai and Vasconcelos, "Cascade R-CNN: Delving into High Quality Object Detection",
        CVPR 2018.
    """

    def __init__(self, num_classes, iou_thresholds=(0.5, 0.6, 0.7), box_weights=None,
                 stage_loss_weights=CASCADE_STAGE_LOSS_WEIGHTS, representation_size=1024,
                 output_size=7, spatial_scales=(0.25, 0.125, 0.0625, 0.03125), sampling_ratio=2,
                 **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_classes", num_classes)
        iou_thresholds = tuple(float(t) for t in _sequence("iou_thresholds", iou_thresholds))
        if not iou_thresholds or any(not 0.0 < t <= 1.0 for t in iou_thresholds):
            raise ValueError("`iou_thresholds` must be IoUs in (0, 1], one per stage. "
                             f"Received: iou_thresholds={iou_thresholds!r}")
        box_weights = CASCADE_BOX_WEIGHTS if box_weights is None else box_weights
        box_weights = tuple(tuple(float(v) for v in w)
                            for w in _sequence("box_weights", box_weights))
        stage_loss_weights = tuple(float(w) for w in
                                   _sequence("stage_loss_weights", stage_loss_weights))
        for name, value in (("box_weights", box_weights),
                            ("stage_loss_weights", stage_loss_weights)):
            if len(value) != len(iou_thresholds):
                raise ValueError(f"`{name}` needs one entry per stage ({len(iou_thresholds)} "
                                 f"`iou_thresholds`). Received: {name}={value!r}")
        self.num_classes = num_classes
        self.iou_thresholds = iou_thresholds
        self.box_weights = box_weights
        self.stage_loss_weights = stage_loss_weights
        self.representation_size = representation_size
        self.output_size = output_size
        self.spatial_scales = tuple(spatial_scales)
        self.sampling_ratio = sampling_ratio
        self.stages = [
            RoIBoxHead(num_classes, representation_size, output_size, self.spatial_scales,
                       sampling_ratio, aligned=False, class_agnostic=True,
                       dtype=self.dtype_policy, name=f"stage{t + 1}")
            for t in range(len(iou_thresholds))]
        self._convert_input_args = False  # proposals stay float32 under mixed precision

    def build(self, input_shape):
        for stage in self.stages:
            stage.build(input_shape)

    def call(self, inputs, image_shape):
        maps, rois = list(inputs[:-1]), tf.cast(inputs[-1], tf.float32)
        probabilities = []
        for stage, weights in zip(self.stages, self.box_weights):
            logits, deltas = stage([*maps, rois])
            probabilities.append(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1))
            rois = refine_boxes(deltas, rois, weights, image_shape)
        return tf.add_n(probabilities) / len(probabilities), rois

    def compute_losses(self, maps, proposals, num_proposals, gt_boxes, gt_classes, image_shape,
                       seed, sampler=None, training=True):
        """The RoI losses of the cascade for a batch.

        Args:
            maps: the feature maps `[B, H_l, W_l, C]`, finest first.
            proposals: `[B, P, 4]` RPN proposals; num_proposals: int `[B]` valid ones.
            gt_boxes: `[B, M, 4]`; gt_classes: int `[B, M]`, -1 padding.
            image_shape: `(height, width)` or int `[B, 2]`.
            seed: int Tensor `[2]`; stage `t` samples with `seed + t`.
            sampler: RoI sampler of every stage (default `BalancedPositiveNegativeSampler(512,
                0.25)`).
            training: passed to the stages.

        Returns:
            dict: `classifier` and `box_reg`, the stage losses (`roi_loss`) summed with
            `stage_loss_weights`, and the unweighted `classifier_stage{t}` / `box_reg_stage{t}`
            for `t = 1..T` (for monitoring; already inside the two sums).
        """
        sampler = sampler or BalancedPositiveNegativeSampler(512, 0.25)
        if not self.built:
            self.build([m.shape for m in maps] + [proposals.shape])
        seed = tf.cast(seed, tf.int32)
        candidates, num = proposals, num_proposals
        losses = {}
        for t, (stage, threshold, weights) in enumerate(
                zip(self.stages, self.iou_thresholds, self.box_weights)):
            rois, labels, targets = roi_targets(
                candidates, num, gt_boxes, gt_classes, seed + t,
                matcher=Matcher(threshold, threshold), sampler=sampler, weights=weights)
            logits, deltas = stage([*maps, rois], training=training)
            deltas = tf.broadcast_to(deltas, tf.concat([tf.shape(logits), [4]], axis=0))
            losses[f"classifier_stage{t + 1}"], losses[f"box_reg_stage{t + 1}"] = roi_loss(
                logits, deltas, labels, targets)
            if t + 1 < len(self.stages):
                refined = refine_boxes(deltas[:, :, :1], rois, weights, image_shape)
                candidates, num = next_stage_candidates(rois, labels, refined, gt_boxes,
                                                        gt_classes)
        for name in ("classifier", "box_reg"):
            losses[name] = tf.add_n([w * losses[f"{name}_stage{t + 1}"]
                                     for t, w in enumerate(self.stage_loss_weights)])
        return losses

    def loss_names(self):
        """The per-stage names `compute_losses` returns besides `classifier` and `box_reg`."""
        return [f"{name}_stage{t + 1}" for t in range(len(self.stages))
                for name in ("classifier", "box_reg")]

    def compute_output_shape(self, input_shape):
        b, r = input_shape[-1][0], input_shape[-1][1]
        return (b, r, self.num_classes + 1), (b, r, 4)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "iou_thresholds": self.iou_thresholds, "box_weights": self.box_weights,
                "stage_loss_weights": self.stage_loss_weights,
                "representation_size": self.representation_size,
                "output_size": self.output_size, "spatial_scales": self.spatial_scales,
                "sampling_ratio": self.sampling_ratio}


def _sequence(name, value):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"`{name}` must be a sequence. Received: {name}={value!r}")
    return value
