"""Faster R-CNN with an FPN: backbone -> FPN -> RPN -> RoI head, trained with `model.fit`.

The pieces are those of this package (`AnchorGenerator`, `FPN`, `RPNHead`,
`generate_proposals`, `rpn_targets`/`rpn_loss`, `RoIBoxHead`, `roi_targets`/`roi_loss`,
`postprocess_detections`) with torchvision's `fasterrcnn_resnet50_fpn` defaults.
"""

import copy

import keras
import tensorflow as tf

from kcv.models._checks import check_one_of
from kcv.models.detection.anchors import AnchorGenerator, SingleLevelAnchorGenerator
from kcv.models.detection.backbones import (
    BACKBONES,
    SINGLE_LEVEL_STRIDES,
    build_backbone,
    freeze_batch_norm,
    resolve_batch_norm_frozen,
)
from kcv.models.detection.cascade import CascadeRoIHeads
from kcv.models.detection.fpn import FPN
from kcv.models.detection.matcher import Matcher
from kcv.models.detection.roi_heads import (
    BOX_LOSSES,
    RoIBoxHead,
    postprocess_detections,
    roi_loss,
    roi_targets,
    select_detections,
    softmax_classes_bound,
    trim_padded_rois,
)
from kcv.models.detection.rpn import RPNHead, generate_proposals, rpn_loss, rpn_targets
from kcv.models.detection.sampler import BalancedPositiveNegativeSampler, image_seeds
from kcv.models.detection.serving import (
    DETECTION_OUTPUTS,
    FLOAT_OPS,
    FLOAT_SCOPES,
    serving_signature,
)

_LOSS_NAMES = ("rpn_objectness", "rpn_box", "classifier", "box_reg")


def _backbone(backbone, input_shape, fpn, weights, trainable_layers, batch_norm_frozen,
              deformable_stages):
    """`(model, fpn, trainable_layers, batch_norm_frozen)` with the resolved values."""
    if isinstance(backbone, keras.Model):
        for name, value in (("backbone_weights", weights),
                            ("trainable_backbone_layers", trainable_layers),
                            ("deformable_stages", deformable_stages)):
            if value is not None:
                raise ValueError(f"`{name}` applies to the named backbones {BACKBONES}, not to a "
                                 f"keras.Model backbone. Received: {name}={value!r}")
        if fpn is False:
            raise ValueError("A keras.Model backbone returns C2..C5 for the FPN. "
                             "Received: fpn=False")
        if resolve_batch_norm_frozen(batch_norm_frozen, False):
            freeze_batch_norm(backbone)
        return backbone, True, None, bool(batch_norm_frozen)
    if backbone not in BACKBONES:
        raise ValueError(f"`backbone` must be one of {sorted(BACKBONES)} or a keras.Model "
                         f"returning C2..C5. Received: backbone={backbone!r}")
    single_level = backbone in SINGLE_LEVEL_STRIDES
    if fpn is None:
        fpn = not single_level
    if fpn == single_level:
        raise ValueError(
            f"backbone={backbone!r} is built {'without' if single_level else 'with'} an FPN "
            f"(the single-level models: {tuple(SINGLE_LEVEL_STRIDES)}). Received: fpn={fpn!r}")
    model, trainable_layers, batch_norm_frozen = build_backbone(
        backbone, input_shape, weights, trainable_layers, batch_norm_frozen, deformable_stages)
    return model, fpn, trainable_layers, batch_norm_frozen


@keras.saving.register_keras_serializable(package="kcv")
class FasterRCNN(keras.Model):
    """Faster R-CNN with a Feature Pyramid Network (torchvision's `fasterrcnn_*_fpn` recipe).

    Backbone maps C2..C5 -> `FPN` P2..P6 -> `RPNHead` over `AnchorGenerator` anchors (sizes
    32..512, one per level, ratios 0.5/1/2) -> `generate_proposals` -> `RoIBoxHead` on P2..P5
    -> `postprocess_detections`. `fit` on `(images, targets)` (targets padded with class -1,
    docs/detection.md) minimises the sum of the four losses, logged as `rpn_objectness`,
    `rpn_box`, `classifier`, `box_reg` (and `loss`); `predict`/`call` return the padded
    detections dict.

    With `backbone="vgg16"` it is instead the paper's single-level model: VGG16 conv5_3
    (stride 16, 512 channels, no FPN) -> `RPNHead` over the 9 anchors of `generate_anchors`
    (`SingleLevelAnchorGenerator`: `anchor_scales` x `aspect_ratios` at base 16) ->
    `RoIBoxHead` with `RoIPool` 7x7 at 1/16 and fc6/fc7 of 4096.

    Args:
        num_classes: object classes (no background).
        backbone: "resnet18", "resnet50", "mobilenet_v2" (with FPN), "vgg16" (single level),
            or a `keras.Model` whose output is a dict with `C2`..`C5` (strides 4..32).
        input_shape: image shape `(H, W, 3)`; fixed sizes are needed for XLA/TFLite.
        fpn: None (default: False for "vgg16", True otherwise) or that value; the other
            combinations are refused.
        backbone_weights: None (random initialization) or the path of a local
            keras.applications weights file of the backbone without its top (e.g.
            `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`; a `.weights.h5` saved from
            kcv's ResNet18); "imagenet" is refused: kcv downloads nothing.
        trainable_backbone_layers: backbone stages that train, counted from the top, 0..5
            (torchvision's conv1, layer1..layer4; the mapping for VGG16/MobileNetV2 is in
            `kcv.models.detection.backbones`). None: 3 with `backbone_weights`, else 5 (all),
            as torchvision.
        freeze_batch_norm: turn every backbone batch norm into torchvision's
            `FrozenBatchNorm2d` (inference mode in training too, gamma/beta/statistics fixed).
            None: frozen exactly when `backbone_weights` is given, as torchvision.
        deformable_stages: None or ResNet stages among (3, 4, 5) (conv3_x..conv5_x) whose 3x3
            convolutions become modulated `kcv.layers.DeformableConv2D` (DCNv2), equal to the
            plain network at initialisation.
        fpn_filters: FPN channels (256).
        anchor_sizes: one anchor size per level P2..P6 (FPN).
        aspect_ratios: anchor ratios `h / w`.
        anchor_scales: the single-level anchors' scales of the 16-pixel base (8, 16, 32).
        rpn_pre_nms_top_n: `(train, test)` boxes per level before NMS (2000, 1000).
        rpn_post_nms_top_n: `(train, test)` proposals per image (2000, 1000).
        rpn_nms_threshold, rpn_batch_size_per_image, rpn_positive_fraction: 0.7, 256, 0.5.
        box_batch_size_per_image, box_positive_fraction: 512, 0.25.
        representation_size: RoI MLP width; None: 4096 for "vgg16" (the paper's fc6/fc7),
            else 1024 (torchvision's).
        box_loss: RoI head box regression loss, "smooth_l1" (beta 1/9) or "giou"
            (`roi_loss`).
        box_score_threshold, box_nms_threshold, detections_per_image: 0.05, 0.5, 100.
        seed: seed of the anchor/RoI sampling.
        cascade_iou_thresholds: None (Faster R-CNN) or the IoU thresholds of the stages of a
            Cascade R-CNN (`(0.5, 0.6, 0.7)`: `CascadeRoIHeads` replaces the box head; the
            `classifier`/`box_reg` losses become the stage-weighted sums and the unweighted
            `classifier_stage{t}`/`box_reg_stage{t}` are logged too).
        **kwargs: `keras.Model` arguments (`name`).

    Example:
        >>> model = FasterRCNN(3, backbone="resnet18", input_shape=(64, 64, 3), fpn_filters=16,
        ...                    representation_size=32, rpn_post_nms_top_n=(64, 32))
        >>> out = model(tf.zeros([1, 64, 64, 3]))
        >>> tuple(out["boxes"].shape), tuple(out["num_detections"].shape)
        ((1, 100, 4), (1,))

    Reference:
        Ren et al., "Faster R-CNN", NeurIPS 2015; Lin et al., "Feature Pyramid Networks for
        Object Detection", CVPR 2017.
    """

    def __init__(self, num_classes, backbone="resnet50", input_shape=(None, None, 3),
                 fpn=None, backbone_weights=None, trainable_backbone_layers=None,
                 freeze_batch_norm=None, deformable_stages=None,
                 fpn_filters=256, anchor_sizes=(32, 64, 128, 256, 512),
                 aspect_ratios=(0.5, 1.0, 2.0), anchor_scales=(8, 16, 32),
                 rpn_pre_nms_top_n=(2000, 1000),
                 rpn_post_nms_top_n=(2000, 1000), rpn_nms_threshold=0.7,
                 rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                 box_batch_size_per_image=512, box_positive_fraction=0.25,
                 representation_size=None, box_loss="smooth_l1", box_score_threshold=0.05,
                 box_nms_threshold=0.5, detections_per_image=100, seed=0,
                 cascade_iou_thresholds=None, **kwargs):
        super().__init__(**kwargs)
        check_one_of("box_loss", box_loss, BOX_LOSSES)
        (self.backbone, self.use_fpn, self.trainable_backbone_layers,
         self.freeze_batch_norm) = _backbone(
            backbone, tuple(input_shape), fpn, backbone_weights, trainable_backbone_layers,
            freeze_batch_norm, deformable_stages)
        if self.use_fpn and len(anchor_sizes) != 5:
            raise ValueError("`anchor_sizes` needs one size per level P2..P6. "
                             f"Received: anchor_sizes={anchor_sizes!r}")
        self.num_classes = num_classes
        self.backbone_arg = backbone
        self.image_shape_arg = tuple(input_shape)
        self.fpn_filters = fpn_filters
        self.anchor_sizes = tuple(anchor_sizes)
        self.aspect_ratios = tuple(aspect_ratios)
        self.anchor_scales = tuple(anchor_scales)
        self.backbone_weights = backbone_weights
        self.deformable_stages = None if deformable_stages is None else tuple(deformable_stages)
        self.box_loss = box_loss
        if representation_size is None:
            representation_size = 4096 if backbone == "vgg16" else 1024
        self.rpn_pre_nms_top_n = tuple(rpn_pre_nms_top_n)
        self.rpn_post_nms_top_n = tuple(rpn_post_nms_top_n)
        self.rpn_nms_threshold = rpn_nms_threshold
        self.rpn_batch_size_per_image = rpn_batch_size_per_image
        self.rpn_positive_fraction = rpn_positive_fraction
        self.box_batch_size_per_image = box_batch_size_per_image
        self.box_positive_fraction = box_positive_fraction
        self.representation_size = representation_size
        self.box_score_threshold = box_score_threshold
        self.box_nms_threshold = box_nms_threshold
        self.detections_per_image = detections_per_image
        self.seed = seed
        self.cascade_iou_thresholds = (None if cascade_iou_thresholds is None
                                       else tuple(cascade_iou_thresholds))

        if self.use_fpn:
            self.fpn = FPN(fpn_filters, name="fpn")
            self.anchor_generator = AnchorGenerator(tuple((s,) for s in self.anchor_sizes),
                                                    self.aspect_ratios, name="anchors")
            head = {}
        else:  # the paper's single level: 9 anchors, RoIPool
            self.fpn = None
            stride = SINGLE_LEVEL_STRIDES[backbone]
            self.anchor_generator = SingleLevelAnchorGenerator(
                stride, self.anchor_scales, self.aspect_ratios, name="anchors")
            head = dict(spatial_scales=(1.0 / stride,), pooler="roi_pool")
        self.rpn_head = RPNHead(self.anchor_generator.num_anchors_per_location()[0],
                                name="rpn_head")
        if cascade_iou_thresholds is None:
            self.box_head = RoIBoxHead(num_classes, representation_size, name="box_head",
                                       **head)
        elif not self.use_fpn or box_loss != "smooth_l1":
            raise ValueError(
                "`cascade_iou_thresholds` needs an FPN backbone and box_loss='smooth_l1'. "
                f"Received: backbone={backbone!r}, fpn={fpn!r}, box_loss={box_loss!r}")
        else:
            self.box_head = CascadeRoIHeads(num_classes, cascade_iou_thresholds,
                                            representation_size=representation_size,
                                            name="cascade_heads")
        self.rpn_matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
        self.rpn_sampler = BalancedPositiveNegativeSampler(rpn_batch_size_per_image,
                                                           rpn_positive_fraction)
        self.box_sampler = BalancedPositiveNegativeSampler(box_batch_size_per_image,
                                                           box_positive_fraction)
        extra = [] if cascade_iou_thresholds is None else self.box_head.loss_names()
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss", *_LOSS_NAMES, *extra)}

    # === Forward pieces ===

    def _features(self, images, training):
        c = self.backbone(images, training=training)
        if self.fpn is None:
            return [c]
        maps = [c[k] for k in ("C2", "C3", "C4", "C5")] if isinstance(c, dict) else list(c)
        return self.fpn(maps, training=training)

    def _rpn(self, images, pyramid, training):
        anchors = self.anchor_generator([images, *pyramid])
        logits, deltas = self.rpn_head(pyramid, training=training)
        counts = [tf.shape(x)[1] for x in logits]
        per_level = tf.split(anchors, counts, axis=0) if len(counts) > 1 else [anchors]
        phase = 0 if training else 1
        image_hw = tf.shape(images)[1:3]
        boxes, _, num = generate_proposals(
            logits, deltas, per_level, image_hw, self.rpn_pre_nms_top_n[phase],
            self.rpn_post_nms_top_n[phase], self.rpn_nms_threshold)
        return anchors, tf.concat(logits, 1), tf.concat(deltas, 1), boxes, num

    def build(self, input_shape):
        # Every weight, from the image shape: a `.keras` file written after `fit` alone (which
        # builds only the sublayers) then records the shape and reloads the weights.
        self.compute_output_spec(keras.KerasTensor(tuple(input_shape)))

    def call(self, images, training=False):
        images = tf.cast(images, self.compute_dtype)
        pyramid = self._features(images, training)
        _, _, _, proposals, num = self._rpn(images, pyramid, training)
        proposals = trim_padded_rois(proposals, num)
        if self.cascade_iou_thresholds is not None:
            hw = tf.shape(images)[1:3]
            scores, boxes = self.box_head([*pyramid[:4], proposals], image_shape=hw)
            return select_detections(scores[..., 1:], boxes[:, :, None], num, hw,
                                     self.box_score_threshold, self.box_nms_threshold,
                                     self.detections_per_image, classes_per_roi=(
                                         softmax_classes_bound(self.box_score_threshold,
                                                               self.num_classes)))
        logits, deltas = self.box_head([*pyramid[:4], proposals], training=training)
        return postprocess_detections(logits, deltas, proposals, num, tf.shape(images)[1:3],
                                      self.box_score_threshold, self.box_nms_threshold,
                                      self.detections_per_image)

    def compute_losses(self, images, targets, training=True):
        """The four Faster R-CNN losses for a batch, as a dict (torchvision's loss dict).

        With `cascade_iou_thresholds`, also the per-stage terms (not part of the total).
        """
        if not self.built:
            self.build(images.shape)
        images = tf.cast(images, self.compute_dtype)
        gt_boxes = tf.cast(targets["boxes"], tf.float32)
        gt_classes = tf.cast(targets["classes"], tf.int32)
        # The step's sampling seed: (optimizer step, `seed`), the same on every replica. (A
        # SeedGenerator's state, updated by each replica of a MirroredStrategy step, raced.)
        optimizer = getattr(self, "optimizer", None)
        step = 0 if optimizer is None else optimizer.iterations
        seed = tf.stack([tf.cast(step, tf.int32), tf.constant(self.seed, tf.int32)])
        seed = image_seeds(seed, tf.shape(images)[0])  # an image samples alike on any replica
        pyramid = self._features(images, training)
        anchors, logits, deltas, proposals, num = self._rpn(images, pyramid, training)
        labels, box_targets = rpn_targets(anchors, gt_boxes, gt_classes, self.rpn_matcher)
        objectness_loss, rpn_box_loss = rpn_loss(logits, deltas, labels, box_targets, seed,
                                                 self.rpn_sampler)
        if self.cascade_iou_thresholds is not None:
            return {"rpn_objectness": objectness_loss, "rpn_box": rpn_box_loss,
                    **self.box_head.compute_losses(pyramid[:4], proposals, num, gt_boxes,
                                                   gt_classes, tf.shape(images)[1:3], seed + 1,
                                                   self.box_sampler, training)}
        rois, roi_labels, roi_box_targets = roi_targets(
            proposals, num, gt_boxes, gt_classes, seed + 1, sampler=self.box_sampler)
        class_logits, box_deltas = self.box_head([*pyramid[:4], rois], training=training)
        classifier_loss, box_loss = roi_loss(class_logits, box_deltas, roi_labels,
                                             roi_box_targets, box_loss=self.box_loss, rois=rois)
        return dict(zip(_LOSS_NAMES, (objectness_loss, rpn_box_loss, classifier_loss,
                                      box_loss)))

    # === Training ===

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _log(self, losses):
        total = tf.add_n([losses[n] for n in _LOSS_NAMES])
        self._trackers["loss"].update_state(total)
        for name, value in losses.items():
            self._trackers[name].update_state(value)
        return {name: t.result() for name, t in self._trackers.items()}

    def train_step(self, data):
        images, targets = data[0], data[1]
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, targets, training=True)
            total = tf.add_n([losses[n] for n in _LOSS_NAMES])
            # replicas' gradients are summed: each contributes its share of the batch mean
            total = total / tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._log(losses)

    def test_step(self, data):
        images, targets = data[0], data[1]
        return self._log(self.compute_losses(images, targets, training=False))

    def predict_step(self, data):
        images = data[0] if isinstance(data, (list, tuple)) else data
        return self(images, training=False)

    # === Export ===

    serving_output_names = DETECTION_OUTPUTS
    serving_float_scopes, serving_float_ops = FLOAT_SCOPES, FLOAT_OPS

    def serving_signature(self, dtype="uint8", batch_size=None):
        """`(fn, input_specs)` that `export/` serves (`kcv.models.detection.serving`)."""
        return serving_signature(self, dtype, batch_size)

    # === Config ===

    def get_config(self):
        backbone = self.backbone_arg
        if isinstance(backbone, keras.Model):
            backbone = keras.saving.serialize_keras_object(backbone)
        return {
            **super().get_config(), "num_classes": self.num_classes, "backbone": backbone,
            "input_shape": self.image_shape_arg, "fpn": self.use_fpn,
            "backbone_weights": self.backbone_weights,
            "trainable_backbone_layers": self.trainable_backbone_layers,
            "freeze_batch_norm": self.freeze_batch_norm,
            "deformable_stages": self.deformable_stages, "fpn_filters": self.fpn_filters,
            "anchor_sizes": self.anchor_sizes, "aspect_ratios": self.aspect_ratios,
            "anchor_scales": self.anchor_scales,
            "rpn_pre_nms_top_n": self.rpn_pre_nms_top_n,
            "rpn_post_nms_top_n": self.rpn_post_nms_top_n,
            "rpn_nms_threshold": self.rpn_nms_threshold,
            "rpn_batch_size_per_image": self.rpn_batch_size_per_image,
            "rpn_positive_fraction": self.rpn_positive_fraction,
            "box_batch_size_per_image": self.box_batch_size_per_image,
            "box_positive_fraction": self.box_positive_fraction,
            "representation_size": self.representation_size, "box_loss": self.box_loss,
            "box_score_threshold": self.box_score_threshold,
            "box_nms_threshold": self.box_nms_threshold,
            "detections_per_image": self.detections_per_image, "seed": self.seed,
            "cascade_iou_thresholds": self.cascade_iou_thresholds,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(  # (it edits its input)
                copy.deepcopy(config["backbone"]))
        # The config holds the resolved `trainable_backbone_layers`/`freeze_batch_norm`, so the
        # same model is built without reading `backbone_weights` again (the saved weights
        # follow; the file may be gone).
        weights = config.pop("backbone_weights", None)
        model = cls(**config)
        model.backbone_weights = weights
        return model
