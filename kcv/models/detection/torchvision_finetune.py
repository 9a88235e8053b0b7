"""Fine-tuning torchvision's Faster R-CNN in Keras: the training step of `TorchvisionFasterRCNN`.

`TorchvisionTraining` gives the ported model (kcv.models.detection.torchvision_port) a
`train_step`/`test_step` for `model.compile(optimizer)` + `model.fit(dataset)` on
`(images, targets)`, with torchvision's training rules (torchvision 0.29's `GeneralizedRCNN`
in train mode) computed by kcv's native Faster R-CNN code on the port's own features and heads:

1. The transform of inference (normalise, resize, pad to 32); the target boxes, in the input
   image's pixels, are scaled by the resize as torchvision's `resize_boxes` does (float32
   ratios `resized / input` per axis).
2. RPN: `rpn_targets` with `Matcher(rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
   allow_low_quality_matches=True)` on every anchor of the padded image, `rpn_loss` over
   `BalancedPositiveNegativeSampler(rpn_batch_size_per_image=256, rpn_positive_fraction=0.5)`:
   binary cross-entropy and smooth L1 (beta 1/9) summed over the positives, both divided by
   the sampled count.
3. Proposals: the port's own (torchvision's `filter_proposals`) with
   `rpn_pre_nms_top_n_train=2000` / `rpn_post_nms_top_n_train=2000`, without gradient.
4. RoI head: `roi_targets` (ground truth appended to the proposals, `Matcher(0.5, 0.5)`,
   `BalancedPositiveNegativeSampler(512, 0.25)`, box coder (10, 10, 5, 5)), the port's box
   head on the sampled RoIs, `roi_loss` (softmax cross-entropy; smooth L1, beta 1/9, of the
   true class's deltas, divided by the sampled count).

The losses are logged as kcv's native `FasterRCNN` logs them: `rpn_objectness`, `rpn_box`,
`classifier`, `box_reg` (torchvision's `loss_objectness`, `loss_rpn_box_reg`,
`loss_classifier`, `loss_box_reg`) and their sum `loss`. The native loss code computes in
float32, also for a float64 model.

Trainable weights follow torchvision's `_resnet_fpn_extractor(backbone, trainable_layers)`:
of the ResNet, only `["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]`
(and `bn1` at 5) train; the FPN, RPN and RoI heads always do. Every batch norm stays in
inference mode with its statistics and affine parameters fixed: torchvision's
`FrozenBatchNorm2d` for v1. (torchvision's v2 builds its norms as `BatchNorm2d`, which train
with batch statistics in train mode; here they stay frozen, as detectron2 freezes them for
small per-device batches, so v2 trains torchvision's parameters minus the norms' weight/bias.)
"""

import numbers

import keras
import tensorflow as tf

from kcv.models.detection.faster_rcnn import _LOSS_NAMES as LOSS_NAMES
from kcv.models.detection.faster_rcnn import FasterRCNN
from kcv.models.detection.matcher import Matcher
from kcv.models.detection.roi_heads import roi_loss, roi_targets
from kcv.models.detection.rpn import rpn_loss, rpn_targets
from kcv.models.detection.sampler import BalancedPositiveNegativeSampler, image_seeds

TRAINING_DEFAULTS = {  # torchvision's FasterRCNN training arguments, and its builder's
    "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
    "rpn_fg_iou_thresh": 0.7, "rpn_bg_iou_thresh": 0.3, "rpn_batch_size_per_image": 256,
    "rpn_positive_fraction": 0.5, "box_fg_iou_thresh": 0.5, "box_bg_iou_thresh": 0.5,
    "box_batch_size_per_image": 512, "box_positive_fraction": 0.25,
    "trainable_backbone_layers": 3, "seed": 0,
}
BOX_PREDICTOR_KEYS = tuple(f"roi_heads.box_predictor.{layer}.{kind}"
                           for layer in ("cls_score", "bbox_pred") for kind in ("weight", "bias"))
_LAYERS_TO_TRAIN = ("layer4", "layer3", "layer2", "layer1", "conv1")


def _xy_swap(t):
    return tf.gather(t, [1, 0, 3, 2], axis=-1)  # xyxy <-> yxyx, (dx, dy, ...) <-> (dy, dx, ...)


def backbone_layers_to_train(trainable_layers):
    """The torchvision ResNet prefixes that train, as `_resnet_fpn_extractor` picks them.

    Example:
        >>> backbone_layers_to_train(3)
        ('layer4', 'layer3', 'layer2')
    """
    if (isinstance(trainable_layers, bool) or not isinstance(trainable_layers, numbers.Integral)
            or not 0 <= trainable_layers <= 5):
        raise ValueError("`trainable_backbone_layers` must be an int in [0, 5]. "
                         f"Received: trainable_backbone_layers={trainable_layers!r}")
    layers = _LAYERS_TO_TRAIN[:trainable_layers]
    return layers + ("bn1",) if trainable_layers == 5 else layers


def freeze_backbone(body, trainable_layers):
    """Sets `trainable` on the layers of a `torchvision_resnet` model by torchvision's rule.

    A layer trains when its torchvision name (`layer2_0_conv1` -> `layer2.0.conv1`) starts
    with one of `backbone_layers_to_train(trainable_layers)`.
    """
    prefixes = backbone_layers_to_train(trainable_layers)
    for layer in body.layers:
        layer.trainable = layer.name.replace("_", ".").startswith(prefixes)


def resize_target_boxes(boxes, input_hw, resized_hw):
    """torchvision's `resize_boxes` on yxyx boxes: each axis times `float32(resized / input)`.

    Args:
        boxes: `[..., 4]` yxyx in the input image's pixels.
        input_hw, resized_hw: `(height, width)` of the input and of the resized image (ints
            or int Tensors).

    Returns:
        float32 `[..., 4]` yxyx in the resized image's pixels.

    Example:
        >>> resize_target_boxes(tf.constant([[3.0, 6.0, 30.0, 60.0]]), (96, 120), (128, 160))
        <tf.Tensor: shape=(1, 4), dtype=float32, numpy=array([[ 4.,  8., 40., 80.]], dtype=float32)>
    """
    ratio_h, ratio_w = (tf.cast(r, tf.float32) / tf.cast(i, tf.float32)
                        for r, i in zip(resized_hw, input_hw))
    return tf.cast(boxes, tf.float32) * tf.stack([ratio_h, ratio_w, ratio_h, ratio_w])


def box_predictor_initializers(in_features, seed=None):
    """`(kernel, bias)` initializers of PyTorch's `nn.Linear`: both U(-1/sqrt(in), 1/sqrt(in)).

    (`kaiming_uniform_(a=sqrt(5))` for the weight is `U(-sqrt(1 / in), sqrt(1 / in))`, the
    bias is drawn from the same bound.)
    """
    bound = in_features ** -0.5
    return (keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=seed),
            keras.initializers.RandomUniform(-bound, bound,
                                             seed=None if seed is None else seed + 1))


class TorchvisionTraining:
    """`model.fit` for `TorchvisionFasterRCNN` (a mixin: the model calls `_init_training`).

    Targets: `{"boxes" float [B, M, 4] yxyx in the input image's pixels, "classes" int [B, M]}`
    with torchvision's label ids (1..num_classes-1, 0 is the background; padding -1), the ids
    the model predicts. (kcv's datasets number classes from 0: add 1, e.g. with
    `dataset.map(torchvision_labels)`.)

    Example:
        >>> from kcv.models.detection import TorchvisionFasterRCNN, faster_rcnn_from_torchvision
        >>> coco = TorchvisionFasterRCNN(91, blocks_per_stage=(1, 1, 1, 1), stem_filters=8,
        ...                              stage_widths=(4, 8, 16, 32), fpn_filters=8,
        ...                              representation_size=16)  # stands in for a checkpoint
        >>> model = faster_rcnn_from_torchvision(coco.torchvision_state_dict(), num_classes=4,
        ...                                      min_size=32, max_size=32)
        >>> data = kcv.data.shapes_detection_dataset(2, image_size=32, batch_size=2)
        >>> model.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)  # eager: a quick demo
        >>> history = model.fit(data.map(torchvision_labels), epochs=1, verbose=0).history
        >>> sorted(history), tuple(model.cls_score.kernel.shape)
        (['box_reg', 'classifier', 'loss', 'rpn_box', 'rpn_objectness'], (16, 4))

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015; torchvision's object detection fine-tuning
        tutorial (`FastRCNNPredictor(in_features, num_classes)` replacing the predictor).
    """

    def _init_training(self, rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train,
                       rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
                       rpn_positive_fraction, box_fg_iou_thresh, box_bg_iou_thresh,
                       box_batch_size_per_image, box_positive_fraction,
                       trainable_backbone_layers, seed):
        self.rpn_pre_nms_top_n_train = rpn_pre_nms_top_n_train
        self.rpn_post_nms_top_n_train = rpn_post_nms_top_n_train
        self.rpn_fg_iou_thresh, self.rpn_bg_iou_thresh = rpn_fg_iou_thresh, rpn_bg_iou_thresh
        self.rpn_batch_size_per_image = rpn_batch_size_per_image
        self.rpn_positive_fraction = rpn_positive_fraction
        self.box_fg_iou_thresh, self.box_bg_iou_thresh = box_fg_iou_thresh, box_bg_iou_thresh
        self.box_batch_size_per_image = box_batch_size_per_image
        self.box_positive_fraction = box_positive_fraction
        self.trainable_backbone_layers = trainable_backbone_layers
        self.seed = seed
        freeze_backbone(self.body, trainable_backbone_layers)
        self._rpn_matcher = Matcher(rpn_fg_iou_thresh, rpn_bg_iou_thresh,
                                    allow_low_quality_matches=True)
        self._box_matcher = Matcher(box_fg_iou_thresh, box_bg_iou_thresh)
        self._rpn_sampler = BalancedPositiveNegativeSampler(rpn_batch_size_per_image,
                                                            rpn_positive_fraction)
        self._box_sampler = BalancedPositiveNegativeSampler(box_batch_size_per_image,
                                                            box_positive_fraction)
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss", *LOSS_NAMES)}

    def _training_config(self):
        return {name: getattr(self, name) for name in TRAINING_DEFAULTS}

    def compute_losses(self, images, targets, training=True):
        """The four losses of a batch as a dict (torchvision's loss dict, kcv's names).

        Args:
            images: `[B, H, W, 3]` RGB in [0, 1].
            targets: the class docstring's dict.
            training: train-time proposal counts (`rpn_*_nms_top_n_train`) if True, else
                the test-time ones.
        """
        if not isinstance(targets, dict) or not {"boxes", "classes"} <= set(targets):
            raise ValueError("`targets` must be a dict with 'boxes' and 'classes'. Received: "
                             f"{sorted(targets) if isinstance(targets, dict) else targets!r}")
        classes = tf.cast(targets["classes"], tf.int32)
        valid = classes >= 0
        checked = tf.where(valid, classes, 1)
        with tf.name_scope("check_targets"):
            tf.debugging.assert_greater(
                checked, 0, message="targets['classes'] are torchvision label ids >= 1 "
                "(0 is the background; padding -1)")
            tf.debugging.assert_less(
                checked, self.num_classes,
                message=f"targets['classes'] must be < num_classes={self.num_classes}")
        optimizer = getattr(self, "optimizer", None)
        step = 0 if optimizer is None else optimizer.iterations
        seed = tf.stack([tf.cast(step, tf.int32), tf.constant(self.seed, tf.int32)])
        seed = image_seeds(seed, tf.shape(images)[0])

        x, image_hw = self.preprocess(images)
        shape = tf.shape(images)
        gt_boxes = resize_target_boxes(targets["boxes"], (shape[1], shape[2]), image_hw)
        gt_classes = tf.where(valid, classes - 1, -1)  # roi_targets: label = class + 1
        features = self.features(x)
        counts = ((self.rpn_pre_nms_top_n_train, self.rpn_post_nms_top_n_train) if training
                  else (self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_test))
        objectness, deltas, anchors, proposals, num = self.proposals(
            x, features, image_hw, *counts)
        anchors = _xy_swap(tf.concat(anchors, 0))
        labels, box_targets = rpn_targets(anchors, gt_boxes, gt_classes, self._rpn_matcher)
        objectness_loss, rpn_box_loss = rpn_loss(
            tf.concat(objectness, 1), _xy_swap(tf.concat(deltas, 1)), labels, box_targets,
            seed, self._rpn_sampler)
        rois, roi_labels, roi_box_targets = roi_targets(
            _xy_swap(tf.stop_gradient(proposals)), num, gt_boxes, gt_classes, seed + 1,
            matcher=self._box_matcher, sampler=self._box_sampler)
        logits, box_deltas = self.box_head(features, tf.cast(_xy_swap(rois), x.dtype))
        classifier_loss, box_loss = roi_loss(logits, _xy_swap(box_deltas), roi_labels,
                                             roi_box_targets)
        return dict(zip(LOSS_NAMES, (objectness_loss, rpn_box_loss, classifier_loss,
                                     box_loss)))

    # === Training: the native FasterRCNN's steps (they call `compute_losses`) ===

    metrics = FasterRCNN.metrics
    _log = FasterRCNN._log
    train_step = FasterRCNN.train_step
    test_step = FasterRCNN.test_step
    predict_step = FasterRCNN.predict_step


def torchvision_labels(images, targets):
    """Maps kcv's 0-based `targets["classes"]` to torchvision's label ids (`+ 1`, padding -1).

    For `dataset.map(torchvision_labels)` on a kcv detection dataset (`(images, targets)`).

    Example:
        >>> _, t = torchvision_labels(None, {"boxes": tf.zeros([1, 3, 4]),
        ...                                  "classes": tf.constant([[0, 2, -1]])})
        >>> t["classes"].numpy()
        array([[ 1,  3, -1]], dtype=int32)
    """
    classes = tf.cast(targets["classes"], tf.int32)
    return images, {**targets, "classes": tf.where(classes >= 0, classes + 1, -1)}
