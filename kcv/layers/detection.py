"""Detection post-processing: decode box deltas, threshold, class-aware NMS, top-k, padded outputs."""

import keras
import tensorflow as tf

from custom_ops import boxes as box_ops
from custom_ops.nms import batched_nms
from kcv.layers._checks import check_positive_int

_ACTIVATIONS = ("sigmoid", "softmax", "none")


@keras.saving.register_keras_serializable(package="kcv")
class DetectionPostProcess(keras.layers.Layer):
    """Turns per-anchor box deltas and class scores into a fixed number of detections.

    For each image: decode the deltas against the anchors (`custom_ops.boxes.decode_boxes`),
    turn the class outputs into scores, keep the `pre_nms_top_k` best (anchor, class) pairs
    whose score is above `score_threshold`, run class-aware NMS (`custom_ops.batched_nms`) and
    return the `max_detections` best. Every output has a fixed shape, so the layer runs under
    XLA and converts to TFLite with builtin ops only (no `TFLite_Detection_PostProcess` custom
    op, no Flex `CombinedNonMaxSuppression`).

    Args:
        max_detections: number of detections returned per image (padded).
        iou_threshold: NMS IoU threshold (boxes of the same class with IoU greater than this
            are suppressed).
        score_threshold: pairs with score `<=` this are dropped before NMS.
        pre_nms_top_k: at most this many (anchor, class) pairs per image enter NMS.
        box_weights: `(wy, wx, wh, ww)` of the box coder, e.g. `(10, 10, 5, 5)` (SSD, Fast
            R-CNN head) or `(1, 1, 1, 1)`.
        score_activation: "sigmoid" (RetinaNet-style logits), "softmax" (one distribution per
            anchor) or "none" (the inputs are already scores).
        background_class: index of a background column to ignore (e.g. 0 with softmax), or None.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list `[box_deltas, class_outputs, anchors]`: `box_deltas` `[B, A, 4]`
            (`[dy, dx, dh, dw]`), `class_outputs` `[B, A, C]`, `anchors` `[B, A, 4]` or `[A, 4]`
            (yxyx, the boxes the deltas refer to).

    Returns:
        `(boxes, scores, classes, num_detections)`: `[B, max_detections, 4]` yxyx boxes,
        `[B, max_detections]` scores, `[B, max_detections]` int32 class ids (column index in
        `class_outputs`), `[B]` int32 counts; entries past `num_detections` are zeros.

    Example:
        >>> anchors = tf.constant([[0.0, 0.0, 10.0, 10.0], [0.0, 20.0, 10.0, 30.0]])
        >>> deltas = tf.constant([[[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])  # dy = 1 * h / 10
        >>> logits = tf.constant([[[4.0, -4.0], [-4.0, 3.0]]])  # anchor 0: class 0, 1: class 1
        >>> post = DetectionPostProcess(max_detections=3, box_weights=(10, 10, 5, 5))
        >>> boxes, scores, classes, num = post([deltas, logits, anchors])
        >>> num.numpy().tolist(), classes.numpy().tolist()
        ([2], [[0, 1, 0]])
        >>> boxes.numpy()[0].round(3).tolist()  # the third row is padding
        [[0.0, 0.0, 10.0, 10.0], [1.0, 20.0, 11.0, 30.0], [0.0, 0.0, 0.0, 0.0]]

    Reference:
        Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016; Lin et al., "Focal Loss for
        Dense Object Detection", ICCV 2017 (inference: top-k, threshold, class-wise NMS).
    """

    def __init__(self, max_detections=100, iou_threshold=0.5, score_threshold=0.05,
                 pre_nms_top_k=1000, box_weights=(1.0, 1.0, 1.0, 1.0), score_activation="sigmoid",
                 background_class=None, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("max_detections", max_detections)
        check_positive_int("pre_nms_top_k", pre_nms_top_k)
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"`iou_threshold` must be in [0, 1]. Received: iou_threshold={iou_threshold!r}")
        if score_activation not in _ACTIVATIONS:
            raise ValueError(
                f"`score_activation` must be one of {_ACTIVATIONS}. "
                f"Received: score_activation={score_activation!r}"
            )
        if background_class is not None and (not isinstance(background_class, int)
                                             or background_class < 0):
            raise ValueError(
                "`background_class` must be None or a non-negative int. "
                f"Received: background_class={background_class!r}"
            )
        self.max_detections = max_detections
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.pre_nms_top_k = pre_nms_top_k
        self.box_weights = box_weights
        self.score_activation = score_activation
        self.background_class = background_class
        box_ops._check_weights(box_weights)

    def _check_shapes(self, deltas_shape, scores_shape, anchors_shape):
        if len(deltas_shape) != 3 or deltas_shape[-1] != 4:
            raise ValueError(f"`box_deltas` must be [B, A, 4]. Received: shape={deltas_shape}")
        if len(scores_shape) != 3:
            raise ValueError(f"`class_outputs` must be [B, A, C]. Received: shape={scores_shape}")
        if len(anchors_shape) not in (2, 3) or anchors_shape[-1] != 4:
            raise ValueError(
                f"`anchors` must be [A, 4] or [B, A, 4]. Received: shape={anchors_shape}"
            )
        num_anchors = {deltas_shape[1], scores_shape[1], anchors_shape[-2]} - {None}
        if len(num_anchors) > 1:
            raise ValueError(
                "`box_deltas`, `class_outputs` and `anchors` must have the same number of anchors. "
                f"Received: shapes {deltas_shape}, {scores_shape}, {anchors_shape}"
            )
        classes = scores_shape[-1]
        if classes is None or (self.background_class is not None
                               and not self.background_class < classes):
            raise ValueError(
                "`class_outputs` needs a known number of classes larger than `background_class`. "
                f"Received: class_outputs shape={scores_shape}, background_class={self.background_class}"
            )
        if deltas_shape[1] is None:
            raise ValueError(
                f"The number of anchors must be static. Received: box_deltas shape={deltas_shape}"
            )

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
            raise ValueError(
                "`DetectionPostProcess` expects inputs [box_deltas, class_outputs, anchors]. "
                f"Received: input_shape={input_shape}"
            )
        self._check_shapes(*[tuple(s) for s in input_shape])

    def call(self, inputs):
        deltas, logits, anchors = (tf.cast(x, tf.float32) for x in inputs)
        if self.score_activation == "sigmoid":
            scores = tf.sigmoid(logits)
        elif self.score_activation == "softmax":
            scores = tf.nn.softmax(logits, axis=-1)
        else:
            scores = logits
        num_classes = logits.shape[-1]
        if self.background_class is not None:
            is_background = tf.range(num_classes) == self.background_class
            scores = tf.where(is_background, tf.constant(float("-inf")), scores)
        if anchors.shape.rank == 2:
            anchors = anchors[None]
        boxes = box_ops.decode_boxes(deltas, anchors, weights=self.box_weights)
        num_anchors = deltas.shape[1]
        flat = tf.reshape(scores, [-1, num_anchors * num_classes])
        k = min(self.pre_nms_top_k, num_anchors * num_classes)
        top_scores, top = tf.math.top_k(flat, k=k)
        top_boxes = tf.gather(boxes, top // num_classes, batch_dims=1)
        top_classes = top % num_classes
        keep, num = batched_nms(top_boxes, top_scores, top_classes, self.iou_threshold,
                                self.score_threshold, self.max_detections,
                                pad_to_max_output_size=True)
        valid = tf.range(self.max_detections)[None] < num[:, None]
        out_boxes = tf.where(valid[..., None], tf.gather(top_boxes, keep, batch_dims=1), 0.0)
        out_scores = tf.where(valid, tf.gather(top_scores, keep, batch_dims=1), 0.0)
        out_classes = tf.where(valid, tf.gather(top_classes, keep, batch_dims=1), 0)
        dtype = self.compute_dtype
        return (tf.cast(out_boxes, dtype), tf.cast(out_scores, dtype), out_classes, num)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        m = self.max_detections
        return (batch, m, 4), (batch, m), (batch, m), (batch,)

    def compute_output_spec(self, inputs):
        batch = inputs[0].shape[0]
        m = self.max_detections
        return (keras.KerasTensor((batch, m, 4), self.compute_dtype),
                keras.KerasTensor((batch, m), self.compute_dtype),
                keras.KerasTensor((batch, m), "int32"),
                keras.KerasTensor((batch,), "int32"))

    def get_config(self):
        return {
            **super().get_config(),
            "max_detections": self.max_detections,
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "pre_nms_top_k": self.pre_nms_top_k,
            "box_weights": list(self.box_weights),
            "score_activation": self.score_activation,
            "background_class": self.background_class,
        }
