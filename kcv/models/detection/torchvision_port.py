"""torchvision's Faster R-CNN (`fasterrcnn_resnet50_fpn` and `_v2`) in Keras, from its state dicts.

`faster_rcnn_from_torchvision` builds `TorchvisionFasterRCNN` from a torchvision checkpoint and
reproduces torchvision's inference stage by stage (checked against torchvision 0.29.1 in float64
by tests/kcv/models/detection/test_torchvision_port.py; docs/detection.md):

1. `GeneralizedRCNNTransform`: normalise with `image_mean`/`image_std`, resize by
   `scale = min(min_size / short side, max_size / long side)` to `floor(side * scale)` with
   PyTorch's bilinear interpolation (`align_corners=False`, source index clamped at 0), zero-pad
   bottom/right to a multiple of 32.
2. torchvision's ResNet-50 (`kcv.models.backbones.torchvision_resnet`) and FPN with
   `LastLevelMaxPool` (kcv's `FPN`, which is torchvision's).
3. RPN: kcv's `RPNHead` and `AnchorGenerator` (both torchvision's), then torchvision's
   `filter_proposals`: top `rpn_pre_nms_top_n_test` logits per level, `BoxCoder((1, 1, 1, 1))`
   decoding with `log(1000 / 16)` clamping, clipping, `remove_small_boxes(1e-3)`, sigmoid
   `>= rpn_score_thresh`, NMS per level, best `rpn_post_nms_top_n_test`.
4. `MultiScaleRoIAlign(7, sampling_ratio=2)` (`aligned=False`, `LevelMapper(2, 5, 224, 4,
   eps=1e-6)`), `TwoMLPHead`, `FastRCNNPredictor`, `postprocess_detections` (softmax,
   `BoxCoder((10, 10, 5, 5))`, clip, score `> box_score_thresh`, `remove_small_boxes(1e-2)`,
   NMS per class, best `box_detections_per_img`) and `resize_boxes` back to the input size.

Inside, boxes are torchvision's `[x1, y1, x2, y2]` (the model outputs kcv's `[y1, x1, y2, x2]`).
RoIAlign is kcv's `custom_ops.multiscale_roi_align` (`aligned=False`, the levels of
`level_mapper` in the model's dtype). The rest of steps 3-4 is written here rather than taken
from kcv's `generate_proposals`, `postprocess_detections` and `batched_nms`, which compute in
float32 (and test IoU as `inter > t / (1 + t) * (area_a + area_b)`) and need static map sizes:
here every op keeps the model's dtype (float64 proves the port) and follows torchvision's
arithmetic (IoU `inter / (area_a + area_b - inter) > t`), on maps of any size. Every op is
static-shaped or a `tf.while_loop` of TFLite builtins, so the model exports like kcv's own
detectors (`serving_signature`; at a fixed `input_shape` for TFLite).
"""

import math
import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from custom_ops import boxes as box_ops
from custom_ops import multiscale_roi_align as _shared_multiscale_roi_align
from kcv.models.backbones.torchvision_resnet import (
    FrozenBatchNormalization,
    resnet_config_from_state_dict,
    resnet_weight_map,
    torchvision_resnet,
)
from kcv.models.detection.anchors import AnchorGenerator
from kcv.models.detection.fpn import FPN, _upsample_nearest
from kcv.models.detection.rpn import RPNHead
from kcv.models.detection.serving import DETECTION_OUTPUTS, serving_signature
from kcv.models.detection.torchvision_finetune import (
    BOX_PREDICTOR_KEYS,
    TRAINING_DEFAULTS,
    TorchvisionTraining,
    box_predictor_initializers,
)

ARCHITECTURES = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2")
_NORM_EPSILON = {"fasterrcnn_resnet50_fpn": 0.0,  # torchvision overwrites it for COCO_V1
                 "fasterrcnn_resnet50_fpn_v2": 1e-5}  # BatchNorm2d's default
_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
_ASPECT_RATIOS = (0.5, 1.0, 2.0)
_RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_BBOX_XFORM_CLIP = math.log(1000.0 / 16)
_SIZE_DIVISIBLE = 32
_RPN_MIN_SIZE = 1e-3
_BOX_MIN_SIZE = 1e-2
_ROI_OUTPUT = 7
_ROI_SAMPLING = 2
_ROI_SCALES = (0.25, 0.125, 0.0625, 0.03125)

_DEFAULTS = {  # torchvision's FasterRCNN defaults (test-time values)
    "min_size": 800, "max_size": 1333, "image_mean": (0.485, 0.456, 0.406),
    "image_std": (0.229, 0.224, 0.225), "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000, "rpn_nms_thresh": 0.7, "rpn_score_thresh": 0.0,
    "box_score_thresh": 0.05, "box_nms_thresh": 0.5, "box_detections_per_img": 100,
}


# ---------------------------------------------------------------------------------------------
# torchvision's ops, in the dtype of their inputs


def resize_size(height, width, min_size, max_size):
    """torchvision's resized `(height, width)`: `floor(side * min(min_size / short, max_size / long))`.

    Python ints in, Python ints out when given Python ints (else int32 Tensors), computed in
    float64 as torchvision's Python code does.

    Example:
        >>> resize_size(480, 640, 800, 1333)
        (800, 1066)
    """
    if isinstance(height, numbers.Integral) and isinstance(width, numbers.Integral):
        scale = min(min_size / min(height, width), max_size / max(height, width))
        return int(height * scale), int(width * scale)
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    scale = tf.minimum(min_size / tf.minimum(h, w), max_size / tf.maximum(h, w))
    return tf.cast(tf.floor(h * scale), tf.int32), tf.cast(tf.floor(w * scale), tf.int32)


def _bilinear_axis(in_size, out_size, dtype):
    """PyTorch's `upsample_bilinear2d` (align_corners=False) indices and weights on one axis."""
    dst = tf.cast(tf.range(out_size), dtype)
    scale = tf.cast(in_size, dtype) / tf.cast(out_size, dtype)
    src = tf.maximum(scale * (dst + 0.5) - 0.5, 0.0)
    low = tf.minimum(tf.cast(tf.floor(src), tf.int32), in_size - 1)
    lam = tf.clip_by_value(src - tf.cast(low, dtype), 0.0, 1.0)
    high = low + tf.cast(low < in_size - 1, tf.int32)
    return low, high, 1.0 - lam, lam


def resize_bilinear(images, size):
    """PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` on NHWC images.

    Computed in the dtype of `images` (torchvision's arithmetic order: the width interpolation
    inside, the height outside). `size` is `(height, width)`.

    Example:
        >>> resize_bilinear(tf.constant([[[[0.0], [1.0]]]]), (1, 4))[0, 0, :, 0].numpy()
        array([0.  , 0.25, 0.75, 1.  ], dtype=float32)
    """
    dtype = images.dtype
    shape = tf.shape(images)
    h0, h1, wh0, wh1 = _bilinear_axis(shape[1], size[0], dtype)
    w0, w1, ww0, ww1 = _bilinear_axis(shape[2], size[1], dtype)
    ww0, ww1 = ww0[None, None, :, None], ww1[None, None, :, None]

    def along_width(rows):
        return tf.gather(rows, w0, axis=2) * ww0 + tf.gather(rows, w1, axis=2) * ww1

    return (along_width(tf.gather(images, h0, axis=1)) * wh0[None, :, None, None]
            + along_width(tf.gather(images, h1, axis=1)) * wh1[None, :, None, None])


def _swap_xy(t):
    """xyxy <-> yxyx (and `(dx, dy, dw, dh)` <-> `(dy, dx, dh, dw)`): an exact permutation."""
    return tf.gather(t, [1, 0, 3, 2], axis=-1)


def decode_boxes(deltas, boxes, weights):
    """torchvision's `BoxCoder.decode_single`: `[..., 4]` xyxy from `(dx, dy, dw, dh)` deltas
    (kcv's `decode_boxes`, which works in yxyx, with torchvision's `log(1000 / 16)` clamp)."""
    wx, wy, ww, wh = weights
    return _swap_xy(box_ops.decode_boxes(_swap_xy(deltas), _swap_xy(boxes), (wy, wx, wh, ww),
                                         clip=_BBOX_XFORM_CLIP))


def _clip_xyxy(boxes, image_hw):
    """torchvision's `clip_boxes_to_image`: x in [0, width], y in [0, height]."""
    return _swap_xy(box_ops.clip_boxes(_swap_xy(boxes), image_hw))


def _not_small(boxes, min_size):
    """torchvision's `remove_small_boxes` as a mask: both sides `>= min_size`."""
    return ((boxes[..., 2] - boxes[..., 0] >= min_size)
            & (boxes[..., 3] - boxes[..., 1] >= min_size))


def greedy_nms(boxes, scores, valid, groups, iou_threshold, max_output_size):
    """Greedy NMS within groups, batched, with torchvision's IoU in the boxes' dtype.

    Repeatedly keeps the best remaining box (the lowest index among equal scores) and removes
    the boxes of its group with `inter / (area_kept + area - inter) > iou_threshold` (NaN
    from two empty boxes removes nothing), as torchvision's CPU `nms` does; the kept boxes come
    out by descending score, which is `batched_nms(...)[:max_output_size]`.

    Args:
        boxes: `[B, N, 4]` xyxy; scores: `[B, N]`; valid: bool `[B, N]` (others take no part);
        groups: int `[B, N]` (boxes suppress only their group: level or class).
        iou_threshold: Python float; max_output_size: Python int.

    Returns:
        `(indices [B, max_output_size] int32, count [B] int32)`, indices past `count` are 0.

    Example:
        >>> boxes = tf.constant([[[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]]])
        >>> keep, n = greedy_nms(boxes, tf.constant([[0.9, 0.8, 0.7]]),
        ...                      tf.ones([1, 3], bool), tf.zeros([1, 3], tf.int32), 0.5, 3)
        >>> keep.numpy(), n.numpy()
        (array([[0, 2, 0]], dtype=int32), array([2], dtype=int32))
    """
    return _greedy_nms(boxes, scores, valid, groups, float(iou_threshold), int(max_output_size))


@tf.function(reduce_retracing=True)
def _greedy_nms(boxes, scores, valid, groups, iou_threshold, max_output_size):
    # a tf.function: eagerly, tf.while_loop would run its body as a Python loop
    with tf.name_scope("greedy_nms"):
        dtype = boxes.dtype
        neg_inf = tf.constant(-np.inf, dtype)
        alive = tf.where(valid, scores, neg_inf)
        x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
        areas = (x2 - x1) * (y2 - y1)
        positions = tf.range(tf.shape(scores)[1])[None]
        slots = tf.range(max_output_size)[None]
        batch = tf.shape(scores)[0]

        def cond(i, alive, count, indices):
            return (i < max_output_size) & tf.reduce_any(alive > neg_inf)

        def body(i, alive, count, indices):
            best = tf.argmax(alive, axis=1, output_type=tf.int32)
            has = tf.gather(alive, best, batch_dims=1) > neg_inf
            bx1, by1, bx2, by2 = (tf.gather(c, best, batch_dims=1)[:, None]
                                  for c in (x1, y1, x2, y2))
            w = tf.maximum(tf.minimum(bx2, x2) - tf.maximum(bx1, x1), 0.0)
            h = tf.maximum(tf.minimum(by2, y2) - tf.maximum(by1, y1), 0.0)
            inter = w * h
            iou = inter / (tf.gather(areas, best, batch_dims=1)[:, None] + areas - inter)
            same = tf.equal(groups, tf.gather(groups, best, batch_dims=1)[:, None])
            drop = ((iou > iou_threshold) & same) | tf.equal(positions, best[:, None])
            alive = tf.where(drop & has[:, None], neg_inf, alive)
            indices = tf.where(tf.equal(slots, i) & has[:, None], best[:, None], indices)
            return i + 1, alive, count + tf.cast(has, tf.int32), indices

        _, _, count, indices = tf.while_loop(
            cond, body, [0, alive, tf.zeros([batch], tf.int32),
                         tf.zeros([batch, max_output_size], tf.int32)])
        return tf.ensure_shape(indices, [boxes.shape[0], max_output_size]), count


def level_mapper(boxes, k_min=2, k_max=5, canonical_scale=224.0, canonical_level=4, eps=1e-6):
    """torchvision's `LevelMapper`: `clamp(floor(4 + log2(sqrt(area) / 224) + 1e-6), 2, 5) - 2`.

    Example:
        >>> level_mapper(tf.constant([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 10.0, 10.0]])).numpy()
        array([2, 0], dtype=int32)
    """
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    s = tf.sqrt(area)
    levels = tf.floor(canonical_level + tf.math.log(s / canonical_scale) / math.log(2.0) + eps)
    levels = tf.clip_by_value(levels, float(k_min), float(k_max))
    return tf.cast(levels, tf.int32) - k_min


def multiscale_roi_align(features, boxes, box_indices, output_size=_ROI_OUTPUT,
                         sampling_ratio=_ROI_SAMPLING, spatial_scales=_ROI_SCALES):
    """torchvision's `MultiScaleRoIAlign`: each `[K, 4]` xyxy box pooled on its `level_mapper` map.

    kcv's `custom_ops.multiscale_roi_align` with torchvision's settings (`aligned=False`, a
    fixed `sampling_ratio`) and the levels of `level_mapper` in the boxes' dtype: every map is
    read as one flat table with per-box level, scale and size (static shapes, TFLite
    builtins). Its arithmetic is torchvision's CPU kernel's but for the order in which each
    bin's 16 weighted corner values are summed (round-off only: the weights are torchvision's
    times the exact power of two `1 / sampling_ratio**2`).

    Returns `[K, output_size, output_size, C]` NHWC in the box order.

    Example:
        >>> maps = [tf.ones([1, 64 // s, 64 // s, 2]) for s in (4, 8, 16, 32)]
        >>> multiscale_roi_align(maps, tf.constant([[0.0, 0.0, 30.0, 20.0]]), [0]).shape
        TensorShape([1, 7, 7, 2])
    """
    k_min = round(-math.log2(spatial_scales[0]))
    k_max = round(-math.log2(spatial_scales[-1]))
    levels = level_mapper(boxes, k_min, k_max)
    return _shared_multiscale_roi_align(
        list(features), _swap_xy(boxes), box_indices, output_size, list(spatial_scales),
        sampling_ratio, aligned=False, levels=levels)


# ---------------------------------------------------------------------------------------------
# The model


@keras.saving.register_keras_serializable(package="kcv")
class NormalizedFPN(keras.layers.Layer):
    """torchvision's `FeaturePyramidNetwork(norm_layer=BatchNorm2d)` of the v2 Faster R-CNN.

    kcv's `FPN` with every convolution bias-free and followed by batch normalization (eval
    mode, `FrozenBatchNormalization(epsilon)`), no activation; P6 is `LastLevelMaxPool`.

    Args:
        filters: output channels (256).
        epsilon: batch-norm epsilon (1e-5).
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: list of maps `[B, H_l, W_l, C_l]`, finest first (C2..C5).

    Returns:
        list of `[B, H_l, W_l, filters]` (P2..P5) and P6.

    Example:
        >>> fpn = NormalizedFPN(8)
        >>> [tuple(o.shape) for o in fpn([tf.zeros([1, 8, 8, 4]), tf.zeros([1, 4, 4, 6])])]
        [(1, 8, 8, 8), (1, 4, 4, 8), (1, 2, 2, 8)]

    Reference:
        Li et al., "Benchmarking Detection Transfer Learning with Vision Transformers", 2021;
        torchvision.ops.FeaturePyramidNetwork.
    """

    def __init__(self, filters=256, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.epsilon = epsilon

    def build(self, input_shape):
        self.lateral_convs, self.lateral_norms = [], []
        self.output_convs, self.output_norms = [], []
        for i, shape in enumerate(input_shape):
            for kind, kernel, channels in (("lateral", 1, shape[-1]),
                                           ("output", 3, self.filters)):
                conv = keras.layers.Conv2D(self.filters, kernel, padding="same", use_bias=False,
                                           dtype=self.dtype_policy, name=f"{kind}_{i}")
                norm = FrozenBatchNormalization(self.epsilon, dtype=self.dtype_policy,
                                                name=f"{kind}_norm_{i}")
                conv.build((None, None, None, channels))
                norm.build((None, None, None, self.filters))
                getattr(self, f"{kind}_convs").append(conv)
                getattr(self, f"{kind}_norms").append(norm)

    def _lateral(self, i, x):
        return self.lateral_norms[i](self.lateral_convs[i](x))

    def _output(self, i, x):
        return self.output_norms[i](self.output_convs[i](x))

    def call(self, inputs):
        inner = self._lateral(len(inputs) - 1, inputs[-1])
        results = [self._output(len(inputs) - 1, inner)]
        for i in range(len(inputs) - 2, -1, -1):
            lateral = self._lateral(i, inputs[i])
            inner = lateral + _upsample_nearest(inner, tf.shape(lateral)[1:3])
            results.insert(0, self._output(i, inner))
        results.append(results[-1][:, ::2, ::2, :])  # max_pool2d(kernel 1, stride 2)
        return results

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kcv")
class TorchvisionFasterRCNN(TorchvisionTraining, keras.Model):
    """torchvision's `fasterrcnn_resnet50_fpn` (v1) or `_v2` (build it with
    `faster_rcnn_from_torchvision`); `fit` fine-tunes it (`TorchvisionTraining`).

    Args:
        num_classes: torchvision's `num_classes` (with background: 91 for COCO).
        blocks_per_stage, stem_filters, stage_widths, expansion: the ResNet
            (`torchvision_resnet`; ResNet-50 by default).
        norm_epsilon: batch-norm epsilon; None: 0.0 for v1 (torchvision overwrites it for the
            COCO_V1 weights), 1e-5 for v2.
        fpn_filters: FPN channels (256); representation_size: width of the box head's FCs
            (1024); box_head_conv_filters: v2's box-head convolutions (256; unused by v1).
        min_size, max_size, image_mean, image_std, rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test, rpn_nms_thresh, rpn_score_thresh, box_score_thresh,
            box_nms_thresh, box_detections_per_img: torchvision's `FasterRCNN` arguments,
            with its defaults (`min_size` a single int: the test-time size).
        architecture: "fasterrcnn_resnet50_fpn" (v1: FrozenBatchNorm backbone, plain FPN,
            one-conv RPN head, `TwoMLPHead`) or "fasterrcnn_resnet50_fpn_v2" (batch norm in the
            FPN (`NormalizedFPN`), two-conv RPN head, `FastRCNNConvFCHead`).
        input_shape: `(H, W, 3)` of the images the exported model takes (`serving_signature`);
            default `(None, None, 3)`: any size (the SavedModel); TFLite needs a fixed size.
        rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_fg_iou_thresh,
            rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
            box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
            box_positive_fraction: torchvision's training arguments with its defaults (2000,
            2000, 0.7, 0.3, 256, 0.5, 0.5, 0.5, 512, 0.25), used by `fit`.
        trainable_backbone_layers: ResNet stages that train, torchvision's builder argument
            (3: `layer2`..`layer4`; 0..5, `kcv.models.detection.torchvision_finetune`).
        seed: seed of the training samplers and of the box predictor's initialisation.
        **kwargs: base `Model` arguments (`dtype="float64"` builds every layer in float64).

    Call arguments:
        images: `[B, H, W, 3]` RGB in [0, 1] (all images of a batch share their size).

    Returns:
        dict `{"boxes" [B, D, 4] yxyx in the input's pixels, "scores" [B, D], "classes" [B, D]
        int32 (torchvision's labels), "num_detections" [B] int32}`, `D = box_detections_per_img`,
        zeros past `num_detections`.

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015; Lin et al., "Feature Pyramid Networks for
        Object Detection", CVPR 2017; torchvision.models.detection.fasterrcnn_resnet50_fpn.
    """

    def __init__(self, num_classes=91, blocks_per_stage=(3, 4, 6, 3), stem_filters=64,
                 stage_widths=(64, 128, 256, 512), expansion=4, norm_epsilon=None,
                 fpn_filters=256, representation_size=1024, box_head_conv_filters=256,
                 architecture="fasterrcnn_resnet50_fpn", min_size=800, max_size=1333,
                 image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225),
                 rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000, rpn_nms_thresh=0.7,
                 rpn_score_thresh=0.0, box_score_thresh=0.05, box_nms_thresh=0.5,
                 box_detections_per_img=100, input_shape=(None, None, 3),
                 rpn_pre_nms_top_n_train=2000,
                 rpn_post_nms_top_n_train=2000, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
                 rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                 box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=512,
                 box_positive_fraction=0.25, trainable_backbone_layers=3, seed=0, **kwargs):
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"`architecture` must be one of {ARCHITECTURES}. "
                             f"Received: architecture={architecture!r}")
        shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
        if shape is None or len(shape) != 3 or shape[2] != 3 or not all(
                d is None or (isinstance(d, int) and d > 0) for d in shape[:2]):
            raise ValueError("`input_shape` must be (height, width, 3), sides positive ints or "
                             f"None. Received: input_shape={input_shape!r}")
        self.image_shape_arg = shape
        self.architecture = architecture
        self.num_classes = num_classes
        self.blocks_per_stage = tuple(blocks_per_stage)
        self.stem_filters = stem_filters
        self.stage_widths = tuple(stage_widths)
        self.expansion = expansion
        self.norm_epsilon = norm_epsilon
        self.box_head_conv_filters = box_head_conv_filters
        self.v2 = architecture == "fasterrcnn_resnet50_fpn_v2"
        epsilon = _NORM_EPSILON[architecture] if norm_epsilon is None else norm_epsilon
        self.fpn_filters = fpn_filters
        self.representation_size = representation_size
        self.min_size, self.max_size = min_size, max_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.rpn_pre_nms_top_n_test = rpn_pre_nms_top_n_test
        self.rpn_post_nms_top_n_test = rpn_post_nms_top_n_test
        self.rpn_nms_thresh = rpn_nms_thresh
        self.rpn_score_thresh = rpn_score_thresh
        self.box_score_thresh = box_score_thresh
        self.box_nms_thresh = box_nms_thresh
        self.box_detections_per_img = box_detections_per_img
        dtype = self.dtype_policy
        self.body = torchvision_resnet(self.blocks_per_stage, stem_filters, self.stage_widths,
                                       expansion, epsilon, dtype=self.compute_dtype,
                                       name="body")
        if self.v2:
            self.fpn = NormalizedFPN(fpn_filters, epsilon, dtype=dtype, name="fpn")
        else:
            self.fpn = FPN(fpn_filters, extra_max_pool=True, dtype=dtype, name="fpn")
        self.fpn.build([tuple(o.shape) for o in self.body.outputs])
        self.anchor_generator = AnchorGenerator(_ANCHOR_SIZES, _ASPECT_RATIOS,
                                                name="anchor_generator")
        self.rpn_head = RPNHead(len(_ASPECT_RATIOS), conv_depth=2 if self.v2 else 1, dtype=dtype,
                                name="rpn_head")
        self.rpn_head.build([(None, None, None, fpn_filters)] * len(_ANCHOR_SIZES))
        # v1: TwoMLPHead (fc6, fc7); v2: FastRCNNConvFCHead (4 x conv-BN-ReLU, one FC)
        self.box_convs = []
        channels = fpn_filters
        if self.v2:
            for i in range(4):
                conv = keras.layers.Conv2D(box_head_conv_filters, 3, padding="same",
                                           use_bias=False, dtype=dtype, name=f"box_conv_{i}")
                norm = FrozenBatchNormalization(epsilon, dtype=dtype, name=f"box_norm_{i}")
                conv.build((None, _ROI_OUTPUT, _ROI_OUTPUT, channels))
                norm.build((None, _ROI_OUTPUT, _ROI_OUTPUT, box_head_conv_filters))
                self.box_convs.append((conv, norm))
                channels = box_head_conv_filters
        self.box_head_channels = channels
        flat = channels * _ROI_OUTPUT * _ROI_OUTPUT
        self.fc6 = keras.layers.Dense(representation_size, activation="relu", dtype=dtype,
                                      name="fc6")
        self.fc7 = None if self.v2 else keras.layers.Dense(
            representation_size, activation="relu", dtype=dtype, name="fc7")
        # FastRCNNPredictor: nn.Linear's initialisation (a replaced predictor starts from it)
        init = box_predictor_initializers(representation_size, seed)
        self.cls_score = keras.layers.Dense(num_classes, kernel_initializer=init[0],
                                            bias_initializer=init[1], dtype=dtype,
                                            name="cls_score")
        init = box_predictor_initializers(representation_size, seed + 2)
        self.bbox_pred = keras.layers.Dense(num_classes * 4, kernel_initializer=init[0],
                                            bias_initializer=init[1], dtype=dtype,
                                            name="bbox_pred")
        for layer, width in ((self.fc6, flat), (self.fc7, representation_size),
                             (self.cls_score, representation_size),
                             (self.bbox_pred, representation_size)):
            if layer is not None:
                layer.build((None, width))
        self.built = True  # every weight exists now (any input size)
        self._init_training(
            rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_fg_iou_thresh,
            rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
            box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image,
            box_positive_fraction, trainable_backbone_layers, seed)

    # === Stages (public for tests and for inspecting a port) ===

    def preprocess(self, images):
        """GeneralizedRCNNTransform: `(padded [B, Hp, Wp, 3], (resized h, w))`."""
        dtype = self.compute_dtype
        x = tf.cast(images, dtype)
        x = (x - tf.constant(self.image_mean, dtype)) / tf.constant(self.image_std, dtype)
        h, w = images.shape[1], images.shape[2]
        if h is None or w is None:
            h, w = tf.shape(images)[1], tf.shape(images)[2]
        size = resize_size(h, w, self.min_size, self.max_size)
        x = resize_bilinear(x, size)
        padded = [(s + _SIZE_DIVISIBLE - 1) // _SIZE_DIVISIBLE * _SIZE_DIVISIBLE for s in size]
        x = tf.pad(x, [[0, 0], [0, padded[0] - size[0]], [0, padded[1] - size[1]], [0, 0]])
        if isinstance(padded[0], int):
            x = tf.ensure_shape(x, [None, padded[0], padded[1], 3])
        return x, size

    def features(self, x):
        """Backbone + FPN: `[P2, P3, P4, P5, P6]` NHWC (torchvision's '0'..'3', 'pool')."""
        return self.fpn(self.body(x))

    def proposals(self, x, features, image_hw, pre_nms_top_n=None, post_nms_top_n=None):
        """RPN: `(objectness, deltas, anchors, proposals [B, P, 4] xyxy, count [B])`.

        `objectness`/`deltas` are per-level lists `[B, H_l W_l A]`, `[B, H_l W_l A, 4]`
        (torchvision's `(dx, dy, dw, dh)`), anchors per-level `[H_l W_l A, 4]` xyxy.
        `pre_nms_top_n`/`post_nms_top_n` (`P`): None for `rpn_*_nms_top_n_test`.
        """
        pre_nms_top_n = self.rpn_pre_nms_top_n_test if pre_nms_top_n is None else pre_nms_top_n
        post_nms_top_n = (self.rpn_post_nms_top_n_test if post_nms_top_n is None
                          else post_nms_top_n)
        dtype = x.dtype
        objectness, deltas = self.rpn_head(features)
        anchors = self.anchor_generator([x, *features])  # yxyx, float32 integers: exact
        anchors = tf.cast(tf.gather(anchors, [1, 0, 3, 2], axis=1), dtype)
        counts = [tf.shape(o)[1] for o in objectness]
        anchors = tf.split(anchors, counts, axis=0)
        boxes, logits, levels = [], [], []
        for level, (o, d, a) in enumerate(zip(objectness, deltas, anchors)):
            k = tf.minimum(pre_nms_top_n, tf.shape(o)[1])
            top, index = tf.math.top_k(o, k=k)
            boxes.append(decode_boxes(tf.gather(d, index, batch_dims=1), tf.gather(a, index),
                                      _RPN_WEIGHTS))
            logits.append(top)
            levels.append(tf.fill(tf.shape(index), level))
        boxes = _clip_xyxy(tf.concat(boxes, 1), image_hw)
        scores = tf.sigmoid(tf.concat(logits, 1))
        levels = tf.concat(levels, 1)
        valid = _not_small(boxes, _RPN_MIN_SIZE) & (scores >= self.rpn_score_thresh)
        keep, count = greedy_nms(boxes, scores, valid, levels, self.rpn_nms_thresh,
                                 post_nms_top_n)
        mask = (tf.range(post_nms_top_n)[None] < count[:, None])[..., None]
        proposals = tf.where(mask, tf.gather(boxes, keep, batch_dims=1), 0.0)
        return objectness, deltas, anchors, proposals, count

    def box_head(self, features, rois):
        """Box head on `[B, R, 4]` xyxy RoIs: `(logits [B, R, C], deltas [B, R, C, 4])`."""
        batch, num = tf.shape(rois)[0], tf.shape(rois)[1]
        flat = tf.reshape(rois, [-1, 4])
        pooled = multiscale_roi_align(features[:4], flat, tf.repeat(tf.range(batch), num))
        for conv, norm in self.box_convs:
            pooled = tf.nn.relu(norm(conv(pooled)))
        x = self.fc6(tf.reshape(pooled, [-1, self.box_head_channels * _ROI_OUTPUT ** 2]))
        if self.fc7 is not None:
            x = self.fc7(x)
        logits = tf.reshape(self.cls_score(x), [batch, num, self.num_classes])
        deltas = tf.reshape(self.bbox_pred(x), [batch, num, self.num_classes, 4])
        return logits, deltas

    def postprocess(self, logits, deltas, rois, count, image_hw):
        """torchvision's `postprocess_detections`: `(boxes xyxy, scores, labels, num)` padded."""
        scores = tf.nn.softmax(logits, axis=-1)[:, :, 1:]
        boxes = _clip_xyxy(decode_boxes(deltas, rois[:, :, None], _BOX_WEIGHTS), image_hw)
        boxes = boxes[:, :, 1:]
        batch, num_rois = tf.shape(scores)[0], tf.shape(scores)[1]
        classes = self.num_classes - 1
        labels = tf.broadcast_to(tf.range(1, self.num_classes)[None, None],
                                 [batch, num_rois, classes])
        roi_valid = tf.broadcast_to((tf.range(num_rois)[None] < count[:, None])[..., None],
                                    [batch, num_rois, classes])
        boxes = tf.reshape(boxes, [batch, -1, 4])
        scores = tf.reshape(scores, [batch, -1])
        labels = tf.reshape(labels, [batch, -1])
        valid = (tf.reshape(roi_valid, [batch, -1]) & (scores > self.box_score_thresh)
                 & _not_small(boxes, _BOX_MIN_SIZE))
        keep, num = greedy_nms(boxes, scores, valid, labels, self.box_nms_thresh,
                               self.box_detections_per_img)
        mask = tf.range(self.box_detections_per_img)[None] < num[:, None]
        return (tf.where(mask[..., None], tf.gather(boxes, keep, batch_dims=1), 0.0),
                tf.where(mask, tf.gather(scores, keep, batch_dims=1), 0.0),
                tf.where(mask, tf.gather(labels, keep, batch_dims=1), 0), num)

    def stages(self, images):
        """The whole forward pass, returning every stage's output (for checking a port).

        Returns:
            dict with `transformed`, `image_size`, `features`, `objectness`, `deltas`,
            `anchors` (as `proposals`), `proposals` `[B, P, 4]` xyxy, `num_proposals`, and the
            outputs of `call` (`boxes`, `scores`, `classes`, `num_detections`).
        """
        x, image_hw = self.preprocess(images)
        features = self.features(x)
        objectness, deltas, anchors, rois, count = self.proposals(x, features, image_hw)
        logits, box_deltas = self.box_head(features, rois)
        boxes, scores, labels, num = self.postprocess(logits, box_deltas, rois, count, image_hw)
        # torchvision's resize_boxes: ratios in float32, then in the boxes' dtype
        shape = tf.shape(images)
        ratio_h = tf.cast(tf.cast(shape[1], tf.float32) / tf.cast(image_hw[0], tf.float32),
                          boxes.dtype)
        ratio_w = tf.cast(tf.cast(shape[2], tf.float32) / tf.cast(image_hw[1], tf.float32),
                          boxes.dtype)
        x1, y1, x2, y2 = tf.unstack(boxes, 4, axis=-1)
        boxes = tf.stack([y1 * ratio_h, x1 * ratio_w, y2 * ratio_h, x2 * ratio_w], axis=-1)
        return {"transformed": x, "image_size": image_hw, "features": features,
                "objectness": objectness, "deltas": deltas, "anchors": anchors,
                "proposals": rois, "num_proposals": count, "boxes": boxes, "scores": scores,
                "classes": labels, "num_detections": num}

    def call(self, images):
        out = self.stages(images)
        return {k: out[k] for k in DETECTION_OUTPUTS}

    # === Export ===

    serving_output_names = DETECTION_OUTPUTS

    def serving_signature(self, dtype="uint8", batch_size=None):
        """`(fn, input_specs)` that `export/` serves (`kcv.models.detection.serving`): uint8
        pixels (SavedModel) or float32 in [0, 1] (TFLite) `[batch_size, *input_shape]` in,
        float32 `boxes`/`scores`, int32 `classes`/`num_detections` out."""
        return serving_signature(self, dtype, batch_size)

    # === Weights ===

    def weight_map(self):
        """`{torchvision key: (variable, kind)}` of every weight (torchvision's new key names).

        `kind`: "conv" (`[out, in, kh, kw]` <-> `[kh, kw, in, out]`), "dense" (`[out, in]` <->
        `[in, out]`), "roi_dense" (the first FC after RoIAlign: inputs `C x 7 x 7` in NCHW
        order <-> `7 x 7 x C`) or "vector".
        """
        mapping = resnet_weight_map(self.body, "backbone.body.")
        for i, (lateral, output) in enumerate(zip(self.fpn.lateral_convs,
                                                  self.fpn.output_convs)):
            for block, layer in (("inner_blocks", lateral), ("layer_blocks", output)):
                mapping[f"backbone.fpn.{block}.{i}.0.weight"] = (layer.kernel, "conv")
                if layer.use_bias:
                    mapping[f"backbone.fpn.{block}.{i}.0.bias"] = (layer.bias, "vector")
            if self.v2:
                for block, norm in (("inner_blocks", self.fpn.lateral_norms[i]),
                                    ("layer_blocks", self.fpn.output_norms[i])):
                    mapping.update(_bn_map(f"backbone.fpn.{block}.{i}.1", norm))
        head = self.rpn_head
        convs = [(f"rpn.head.conv.{i}.0", layer) for i, layer in enumerate(head.convs)]
        for key, layer in convs + [("rpn.head.cls_logits", head.cls_logits),
                                   ("rpn.head.bbox_pred", head.bbox_pred)]:
            mapping[f"{key}.weight"] = (layer.kernel, "conv")
            mapping[f"{key}.bias"] = (layer.bias, "vector")
        for i, (conv, norm) in enumerate(self.box_convs):
            mapping[f"roi_heads.box_head.{i}.0.weight"] = (conv.kernel, "conv")
            mapping.update(_bn_map(f"roi_heads.box_head.{i}.1", norm))
        fc6 = "box_head.5" if self.v2 else "box_head.fc6"  # v2: index 4 is the Flatten
        dense = [(fc6, self.fc6, "roi_dense"), ("box_predictor.cls_score", self.cls_score,
                                                "dense"),
                 ("box_predictor.bbox_pred", self.bbox_pred, "dense")]
        if self.fc7 is not None:
            dense.insert(1, ("box_head.fc7", self.fc7, "dense"))
        for key, layer, kind in dense:
            mapping[f"roi_heads.{key}.weight"] = (layer.kernel, kind)
            mapping[f"roi_heads.{key}.bias"] = (layer.bias, "vector")
        return mapping

    def _convert(self, value, kind, to_keras):
        if kind == "conv":
            return np.transpose(value, (2, 3, 1, 0) if to_keras else (3, 2, 0, 1))
        if kind == "dense":
            return np.transpose(value)
        if kind == "roi_dense":
            c, s = self.box_head_channels, _ROI_OUTPUT
            if to_keras:  # [out, C * 7 * 7] (c, h, w) -> [7 * 7 * C (h, w, c), out]
                w = np.reshape(value, (value.shape[0], c, s, s))
                return np.reshape(np.transpose(w, (2, 3, 1, 0)), (s * s * c, -1))
            w = np.reshape(value, (s, s, c, value.shape[-1]))
            return np.reshape(np.transpose(w, (3, 2, 0, 1)), (value.shape[-1], -1))
        return value

    def load_torchvision_state_dict(self, state_dict, skip_keys=()):
        """Assigns a torchvision state dict (either key layout); unused/missing keys raise.

        `skip_keys`: torchvision keys left out on both sides (e.g. `BOX_PREDICTOR_KEYS` for a
        new predictor, which keeps its initialisation).
        """
        skip = set(skip_keys)
        state_dict = {k: v for k, v in normalize_state_dict_keys(state_dict).items()
                      if k not in skip}
        mapping = {k: v for k, v in self.weight_map().items() if k not in skip}
        missing = sorted(set(mapping) - set(state_dict))
        unused = sorted(set(state_dict) - set(mapping))
        if missing or unused:
            raise ValueError(
                f"The state dict does not match torchvision's {self.architecture}. "
                f"Missing keys ({len(missing)}): {missing}. Unused keys ({len(unused)}): "
                f"{unused}")
        for key, (variable, kind) in mapping.items():
            value = _to_numpy(state_dict[key])
            expected = self._convert(np.zeros(variable.shape), kind, to_keras=False).shape
            if value.shape != expected:
                raise ValueError(f"`{key}` has shape {value.shape}; the model expects "
                                 f"{expected} (torchvision layout)")
            variable.assign(self._convert(value, kind, to_keras=True).astype(variable.dtype))

    def torchvision_state_dict(self):
        """The weights as a torchvision state dict `{key: NumPy array}` (new key layout)."""
        return {key: self._convert(np.asarray(variable.numpy()), kind, to_keras=False)
                for key, (variable, kind) in self.weight_map().items()}

    # === Config ===

    def get_config(self):
        return {
            **super().get_config(), "num_classes": self.num_classes,
            "blocks_per_stage": self.blocks_per_stage, "stem_filters": self.stem_filters,
            "stage_widths": self.stage_widths, "expansion": self.expansion,
            "norm_epsilon": self.norm_epsilon, "fpn_filters": self.fpn_filters,
            "box_head_conv_filters": self.box_head_conv_filters,
            "representation_size": self.representation_size,
            "architecture": self.architecture, "min_size": self.min_size,
            "max_size": self.max_size, "image_mean": self.image_mean,
            "image_std": self.image_std, "rpn_pre_nms_top_n_test": self.rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_test": self.rpn_post_nms_top_n_test,
            "rpn_nms_thresh": self.rpn_nms_thresh, "rpn_score_thresh": self.rpn_score_thresh,
            "box_score_thresh": self.box_score_thresh, "box_nms_thresh": self.box_nms_thresh,
            "box_detections_per_img": self.box_detections_per_img,
            "input_shape": self.image_shape_arg,
            **self._training_config(),
        }


def _bn_map(prefix, norm):
    return {f"{prefix}.{torch_name}": (getattr(norm, attr), "vector") for torch_name, attr in
            (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
             ("running_var", "moving_variance"))}


def _to_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def normalize_state_dict_keys(state_dict):
    """torchvision's renames of old checkpoints (FPN and RPN head version < 2), applied.

    `backbone.fpn.{inner,layer}_blocks.{i}.{weight,bias}` -> `...{i}.0.{weight,bias}` and
    `rpn.head.conv.{weight,bias}` -> `rpn.head.conv.0.0.{weight,bias}` (torchvision's
    `FeaturePyramidNetwork._load_from_state_dict` and `RPNHead._load_from_state_dict`);
    BatchNorm `num_batches_tracked` counters are dropped (not used at inference).
    """
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if key.endswith("num_batches_tracked"):
            continue
        if (len(parts) == 5 and parts[:2] == ["backbone", "fpn"]
                and parts[2] in ("inner_blocks", "layer_blocks")):
            key = ".".join(parts[:4] + ["0", parts[4]])
        elif len(parts) == 4 and parts[:3] == ["rpn", "head", "conv"]:
            key = f"rpn.head.conv.0.0.{parts[3]}"
        if key in out:
            raise ValueError(f"The state dict has `{key}` in both the old and the new layout.")
        out[key] = value
    return out


def read_state_dict(path):
    """A `{key: array}` state dict from a `.pth` (needs torch: `pip install kcv[torch]`) or `.npz`."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading a PyTorch checkpoint needs torch, the optional extra `kcv[torch]`: "
            f"`pip install kcv[torch]` (or pass a mapping of arrays). Received: {path!r}"
        ) from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # torchvision's reference training scripts save {"model": ...}
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def config_from_state_dict(state_dict, architecture="fasterrcnn_resnet50_fpn"):
    """The `TorchvisionFasterRCNN` shape arguments a (key-normalised) state dict implies."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"`architecture` must be one of {ARCHITECTURES}. "
                         f"Received: architecture={architecture!r}")

    def shape(key):
        if key not in state_dict:
            raise ValueError(f"The state dict has no `{key}`: not a torchvision {architecture}.")
        return tuple(np.shape(state_dict[key]))

    config = resnet_config_from_state_dict(state_dict, "backbone.body.")
    config.update(num_classes=shape("roi_heads.box_predictor.cls_score.weight")[0],
                  fpn_filters=shape("backbone.fpn.inner_blocks.0.0.weight")[0])
    if architecture == "fasterrcnn_resnet50_fpn_v2":
        config.update(representation_size=shape("roi_heads.box_head.5.weight")[0],
                      box_head_conv_filters=shape("roi_heads.box_head.0.0.weight")[0])
    else:
        config.update(representation_size=shape("roi_heads.box_head.fc6.weight")[0])
    return config


def faster_rcnn_from_torchvision(state_dict, architecture="fasterrcnn_resnet50_fpn",
                                 dtype="float32", **overrides):
    """A Keras `TorchvisionFasterRCNN` with the weights of a torchvision Faster R-CNN checkpoint.

    Args:
        state_dict: a path to a torchvision checkpoint (`.pth`, read with torch: the optional
            extra `kcv[torch]`; or an `.npz` of the state dict) or a mapping from torchvision
            parameter names to arrays (NumPy or torch). Both key layouts of torchvision
            checkpoints (before and after the FPN/RPN-head renames) are accepted; unused or
            missing keys raise a `ValueError` listing them.
        architecture: "fasterrcnn_resnet50_fpn" or "fasterrcnn_resnet50_fpn_v2".
        dtype: "float32" or "float64", the dtype of every layer and op.
        **overrides: torchvision's `FasterRCNN` arguments with its defaults: `num_classes`
            (read from the checkpoint), `min_size=800`, `max_size=1333`, `image_mean`,
            `image_std`, `rpn_pre_nms_top_n_test=1000`, `rpn_post_nms_top_n_test=1000`,
            `rpn_nms_thresh=0.7`, `rpn_score_thresh=0.0`, `box_score_thresh=0.05`,
            `box_nms_thresh=0.5`, `box_detections_per_img=100`; `norm_epsilon` (v1: 0.0,
            the value torchvision sets for the COCO_V1 weights; v2: 1e-5); and `input_shape`
            (`(H, W, 3)` for export, default `(None, None, 3)`: any size). A `num_classes`
            (with the background) other than the checkpoint's replaces the box predictor, as
            torchvision's fine-tuning tutorial does: every weight but
            `roi_heads.box_predictor.*` is loaded, the predictor starts from `nn.Linear`'s
            initialisation. The training arguments of `TorchvisionFasterRCNN`
            (`trainable_backbone_layers=3`, `rpn_batch_size_per_image=256`, ...) are accepted
            too.

    Returns:
        A built `TorchvisionFasterRCNN`.

    Example:
        >>> tiny = TorchvisionFasterRCNN(num_classes=3, blocks_per_stage=(1, 1, 1, 1),
        ...                              stem_filters=8, stage_widths=(4, 8, 16, 32),
        ...                              fpn_filters=8, representation_size=16)
        >>> sd = tiny.torchvision_state_dict()  # a torchvision-layout state dict
        >>> sd["roi_heads.box_head.fc6.weight"].shape  # inputs C x 7 x 7, as torchvision
        (16, 392)
        >>> model = faster_rcnn_from_torchvision(sd, min_size=64, max_size=96)
        >>> out = model(np.random.default_rng(0).uniform(size=(1, 48, 64, 3)))
        >>> tuple(out["boxes"].shape), model.num_classes
        ((1, 100, 4), 3)

    Reference:
        torchvision.models.detection.fasterrcnn_resnet50_fpn (torchvision 0.29).
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"`dtype` must be 'float32' or 'float64'. Received: dtype={dtype!r}")
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_state_dict(state_dict)
    if not hasattr(state_dict, "items"):
        raise TypeError("`state_dict` must be a path or a mapping of torchvision names to "
                        f"arrays. Received: {type(state_dict).__name__}")
    state_dict = normalize_state_dict_keys(state_dict)
    config = config_from_state_dict(state_dict, architecture)
    allowed = (set(_DEFAULTS) | set(TRAINING_DEFAULTS)
               | {"num_classes", "norm_epsilon", "input_shape"})
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"Unknown overrides {unknown}; accepted: {sorted(allowed)}")
    num_classes = overrides.get("num_classes", config["num_classes"])
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
            or num_classes < 2:
        raise ValueError("`num_classes` counts the background too and must be an int >= 2. "
                         f"Received: num_classes={num_classes!r}")
    replace = num_classes != config["num_classes"]
    config.update(overrides)
    model = TorchvisionFasterRCNN(architecture=architecture, dtype=dtype, **config)
    model.load_torchvision_state_dict(state_dict, BOX_PREDICTOR_KEYS if replace else ())
    return model
