"""Region Proposal Network: the head, proposal generation, anchor targets and the RPN loss.

Semantics are torchvision's `torchvision.models.detection.rpn` (defaults of
`fasterrcnn_resnet50_fpn`), written batched over padded tensors: proposals come out as
`[B, post_nms_top_n, 4]` plus a valid count, ground truth goes in padded with class -1.
Box deltas are kcv's `[dy, dx, dh, dw]` (torchvision's `[dx, dy, dw, dh]` reordered), channel
`4 * a + j` of the regression map being coordinate `j` of anchor `a`, as torchvision.
"""

import numbers

import keras
import tensorflow as tf

from custom_ops import boxes as box_ops
from custom_ops.nms import batched_nms
from kcv.losses.detection import smooth_l1_loss
from kcv.models.detection.matcher import Matcher, matched_box_targets, pairwise_iou
from kcv.models.detection.sampler import BalancedPositiveNegativeSampler


@keras.saving.register_keras_serializable(package="kcv")
class RPNHead(keras.layers.Layer):
    """The RPN head: a shared 3x3 conv + ReLU, then 1x1 convs to objectness and box deltas.

    The same weights run on every level; the outputs are flattened location-major then anchor,
    the order of `AnchorGenerator` / `generate_anchors`.

    Args:
        num_anchors: anchors per location `A` (e.g. 3 with FPN, 9 for the paper's anchors).
        conv_depth: number of 3x3 conv + ReLU layers before the predictors (default 1).
        kernel_initializer: initializer of every conv (default normal, std 0.01, as
            torchvision; biases are zeros).
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: a feature map `[B, H, W, C]` or a list of them (one per level, same `C`).

    Returns:
        `(objectness, deltas)`: lists with one entry per level, `[B, H_l * W_l * A]` logits
        and `[B, H_l * W_l * A, 4]` `[dy, dx, dh, dw]` deltas (two Tensors for a single map
        given as a Tensor).

    Example:
        >>> head = RPNHead(3)
        >>> logits, deltas = head([tf.zeros([1, 8, 8, 16]), tf.zeros([1, 4, 4, 16])])
        >>> [tuple(x.shape) for x in logits + deltas]
        [(1, 192), (1, 48), (1, 192, 4), (1, 48, 4)]

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015 (section 3.1); torchvision's `RPNHead`.
    """

    def __init__(self, num_anchors, conv_depth=1, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_anchors", num_anchors), ("conv_depth", conv_depth)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
        self.num_anchors = num_anchors
        self.conv_depth = conv_depth
        self.kernel_initializer = kernel_initializer

    def _initializer(self):
        if self.kernel_initializer is None:
            return keras.initializers.RandomNormal(stddev=0.01)
        return keras.initializers.get(self.kernel_initializer)

    def build(self, input_shape):
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        channels = {s[-1] for s in shapes}
        if len(channels) != 1 or None in channels:
            raise ValueError("RPNHead needs feature maps with the same known number of channels. "
                             f"Received: input_shape={input_shape}")
        (c,) = channels
        conv = dict(padding="same", kernel_initializer=self._initializer(),
                    bias_initializer="zeros", dtype=self.dtype_policy)
        self.convs = [keras.layers.Conv2D(c, 3, activation="relu", name=f"conv_{i}", **conv)
                      for i in range(self.conv_depth)]
        self.cls_logits = keras.layers.Conv2D(self.num_anchors, 1, name="cls_logits", **conv)
        self.bbox_pred = keras.layers.Conv2D(4 * self.num_anchors, 1, name="bbox_pred", **conv)
        shape = (None, None, None, c)
        for layer in self.convs:
            layer.build(shape)
        self.cls_logits.build(shape)
        self.bbox_pred.build(shape)

    def call(self, inputs):
        features = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        logits, deltas = [], []
        for x in features:
            for layer in self.convs:
                x = layer(x)
            batch = tf.shape(x)[0]
            logits.append(tf.reshape(self.cls_logits(x), [batch, -1]))
            deltas.append(tf.reshape(self.bbox_pred(x), [batch, -1, 4]))
        if not isinstance(inputs, (list, tuple)):
            return logits[0], deltas[0]
        return logits, deltas

    def compute_output_shape(self, input_shape):
        shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape]
        logits, deltas = [], []
        for s in shapes:
            n = None if s[1] is None or s[2] is None else s[1] * s[2] * self.num_anchors
            logits.append((s[0], n))
            deltas.append((s[0], n, 4))
        if not isinstance(input_shape[0], (list, tuple)):
            return logits[0], deltas[0]
        return logits, deltas

    def get_config(self):
        init = self.kernel_initializer
        if init is not None and not isinstance(init, str):
            init = keras.initializers.serialize(keras.initializers.get(init))
        return {**super().get_config(), "num_anchors": self.num_anchors,
                "conv_depth": self.conv_depth, "kernel_initializer": init}


def _as_levels(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _clip_to_images(boxes, image_shape):
    """Clips `[B, N, 4]` boxes to `(height, width)` or per-image `[B, 2]` sizes."""
    shape = tf.cast(tf.convert_to_tensor(image_shape), boxes.dtype)
    if shape.shape.rank == 2:
        shape = shape[:, None, :]
    return box_ops.clip_boxes(boxes, shape)


def generate_proposals(objectness, deltas, anchors, image_shape, pre_nms_top_n=1000,
                       post_nms_top_n=1000, nms_threshold=0.7, min_size=1e-3,
                       score_threshold=0.0):
    """RPN proposals, torchvision's `RegionProposalNetwork.filter_proposals`, batched and padded.

    Per image and level: the `pre_nms_top_n` highest objectness logits; their anchors decoded
    with weights (1, 1, 1, 1) (log-size deltas clipped at `log(1000 / 16)`), clipped to the
    image, boxes with a side `< min_size` and sigmoid scores `< score_threshold` dropped; then
    NMS at `nms_threshold` within each level (`batched_nms` with the level as the class) over
    the levels together, and the `post_nms_top_n` best kept, by descending score.

    Args:
        objectness: logits `[B, A_l]` per level (a list, or one Tensor for a single level).
        deltas: `[B, A_l, 4]` per level, `[dy, dx, dh, dw]`.
        anchors: `[A_l, 4]` yxyx per level (shared by the batch), or one `[A, 4]` Tensor
            for a single level.
        image_shape: `(height, width)` of the images, or an int Tensor `[B, 2]` per image
            (the sizes before batch padding).
        pre_nms_top_n: boxes per level entering NMS (torchvision: 2000 train, 1000 test).
        post_nms_top_n: proposals per image (torchvision: 2000 train, 1000 test), a Python int.
        nms_threshold: IoU above which a lower-scoring box of the same level is removed.
        min_size: minimum box side in pixels.
        score_threshold: minimum sigmoid objectness (torchvision: 0.0).

    Returns:
        `(boxes, scores, num_valid)`: `[B, post_nms_top_n, 4]` yxyx proposals (no gradient),
        `[B, post_nms_top_n]` sigmoid scores, int32 `[B]`; entries past `num_valid` are zeros.

    Example:
        >>> anchors = tf.constant([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0]])  # IoU 0.91
        >>> boxes, scores, num = generate_proposals(
        ...     tf.constant([[2.0, 1.0]]), tf.zeros([1, 2, 4]), anchors, (32, 32),
        ...     post_nms_top_n=4)
        >>> int(num[0]), boxes[0, 0].numpy()
        (1, array([ 0.,  0., 10., 10.], dtype=float32))

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015 (section 3.3); torchvision's
        `RegionProposalNetwork`.
    """
    if (isinstance(post_nms_top_n, bool) or not isinstance(post_nms_top_n, numbers.Integral)
            or post_nms_top_n < 1):
        raise ValueError("`post_nms_top_n` must be a positive int. "
                         f"Received: post_nms_top_n={post_nms_top_n!r}")
    if isinstance(pre_nms_top_n, bool) or not isinstance(pre_nms_top_n, numbers.Integral) \
            or pre_nms_top_n < 1:
        raise ValueError("`pre_nms_top_n` must be a positive int. "
                         f"Received: pre_nms_top_n={pre_nms_top_n!r}")
    objectness, deltas, anchors = _as_levels(objectness), _as_levels(deltas), _as_levels(anchors)
    if not len(objectness) == len(deltas) == len(anchors):
        raise ValueError("`objectness`, `deltas` and `anchors` need one entry per level. "
                         f"Received: {len(objectness)}, {len(deltas)}, {len(anchors)} levels")
    with tf.name_scope("generate_proposals"):
        all_boxes, all_logits, all_levels = [], [], []
        for level, (logits, d, a) in enumerate(zip(objectness, deltas, anchors)):
            logits = tf.stop_gradient(tf.cast(logits, tf.float32))
            d = tf.stop_gradient(tf.cast(d, tf.float32))
            n = logits.shape[1]
            k = pre_nms_top_n if n is None else min(pre_nms_top_n, n)
            if n is None:
                k = tf.minimum(k, tf.shape(logits)[1])
            top_logits, top = tf.math.top_k(logits, k=k)
            boxes = box_ops.decode_boxes(tf.gather(d, top, batch_dims=1),
                                         tf.gather(tf.cast(a, tf.float32), top))
            all_boxes.append(boxes)
            all_logits.append(top_logits)
            all_levels.append(tf.fill(tf.shape(top), level))
        boxes = _clip_to_images(tf.concat(all_boxes, 1), image_shape)
        scores = tf.sigmoid(tf.concat(all_logits, 1))
        levels = tf.concat(all_levels, 1)
        big = ((boxes[..., 2] - boxes[..., 0] >= min_size)
               & (boxes[..., 3] - boxes[..., 1] >= min_size) & (scores >= score_threshold))
        keep, num = batched_nms(boxes, tf.where(big, scores, float("-inf")), levels,
                                nms_threshold, max_output_size=post_nms_top_n,
                                pad_to_max_output_size=True)
        valid = tf.range(post_nms_top_n)[None] < num[:, None]
        out_boxes = tf.where(valid[..., None], tf.gather(boxes, keep, batch_dims=1), 0.0)
        out_scores = tf.where(valid, tf.gather(scores, keep, batch_dims=1), 0.0)
        return out_boxes, out_scores, num


def rpn_targets(anchors, gt_boxes, gt_classes, matcher=None):
    """Anchor labels and regression targets, torchvision's `assign_targets_to_anchors`.

    Args:
        anchors: float Tensor `[A, 4]` yxyx (all levels concatenated).
        gt_boxes: float Tensor `[B, M, 4]` yxyx, padded.
        gt_classes: int Tensor `[B, M]`, -1 for padding (only the validity is used).
        matcher: a `Matcher`; default `Matcher(0.7, 0.3, allow_low_quality_matches=True)`.

    Returns:
        `(labels, targets)`: int32 `[B, A]` (1 object, 0 background, -1 ignored: between the
        thresholds) and float32 `[B, A, 4]` deltas (weights (1, 1, 1, 1)) to the matched GT,
        zeros where the label is not 1.

    Example:
        >>> labels, targets = rpn_targets(
        ...     tf.constant([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
        ...     tf.constant([[[0.0, 0.0, 10.0, 20.0]]]), tf.constant([[0]]))
        >>> labels.numpy()
        array([[1, 0]], dtype=int32)
    """
    matcher = matcher or Matcher(0.7, 0.3, allow_low_quality_matches=True)
    with tf.name_scope("rpn_targets"):
        anchors = tf.cast(anchors, tf.float32)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        matches = matcher(pairwise_iou(gt_boxes, anchors), gt_classes >= 0)
        labels = tf.where(matches >= 0, 1, tf.where(matches == -2, -1, 0))
        targets = matched_box_targets(matches, gt_boxes, anchors[None], (1.0, 1.0, 1.0, 1.0))
        return labels, targets


def rpn_loss(objectness, deltas, labels, targets, seed, sampler=None, beta=1.0 / 9):
    """RPN losses as torchvision's `RegionProposalNetwork.compute_loss`.

    `sampler` picks anchors per image (default 256, at most half positive); over the whole
    batch: objectness = mean binary cross-entropy (logits) over the sampled anchors, box =
    smooth L1 (`beta`, default 1/9) summed over the sampled positives' 4 deltas, divided by the
    number of sampled anchors.

    Args:
        objectness: logits `[B, A]` (levels concatenated, the order of the anchors).
        deltas: `[B, A, 4]` predicted `[dy, dx, dh, dw]`.
        labels, targets: from `rpn_targets`.
        seed: int Tensor `[2]` (or `[B, 2]`, one per image) for the sampler.
        sampler: a `BalancedPositiveNegativeSampler`; default `(256, 0.5)`.
        beta: smooth L1 transition point.

    Returns:
        `(objectness_loss, box_loss)`, float32 scalars.

    Example:
        >>> labels = tf.constant([[1, 0, -1]])
        >>> obj, box = rpn_loss(tf.zeros([1, 3]), tf.zeros([1, 3, 4]), labels,
        ...                     tf.zeros([1, 3, 4]), seed=[0, 0])
        >>> round(float(obj), 4), float(box)  # log(2), perfect deltas
        (0.6931, 0.0)

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015, eq. (1).
    """
    sampler = sampler or BalancedPositiveNegativeSampler(256, 0.5)
    with tf.name_scope("rpn_loss"):
        objectness = tf.cast(objectness, tf.float32)
        deltas = tf.cast(deltas, tf.float32)
        pos, neg = sampler(labels, seed)
        sampled = pos | neg
        count = tf.maximum(tf.reduce_sum(tf.cast(sampled, tf.float32)), 1.0)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(pos, tf.float32), objectness)
        objectness_loss = tf.reduce_sum(tf.where(sampled, bce, 0.0)) / count
        l1 = tf.reduce_sum(smooth_l1_loss(tf.stop_gradient(targets), deltas, beta=beta), -1)
        box_loss = tf.reduce_sum(tf.where(pos, l1, 0.0)) / count
        return objectness_loss, box_loss
