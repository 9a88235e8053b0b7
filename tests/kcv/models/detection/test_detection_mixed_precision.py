"""Each FasterRCNN variant trains under `mixed_float16`: VGG16 with RoIPool, Cascade R-CNN,
deformable ResNet stages, the GIoU box loss and the MobileNetV2 FPN backbone (two steps each on
tiny settings: finite losses, float16 compute, float32 variables, losses and detections).

The steps run eagerly (`run_eagerly=True`): the same `train_step`, loss-scale optimizer and
casts without tracing the whole model per variant; the traced mixed-precision `fit` of the
detector is `test_faster_rcnn_deploy.py::test_trains_under_mixed_float16`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv
from kcv.layers import DeformableConv2D
from kcv.models.detection import FasterRCNN

from kcv_testing import tiny_detection_backbone as _tiny_backbone

_TINY = dict(representation_size=16, rpn_pre_nms_top_n=(100, 50), rpn_post_nms_top_n=(32, 16),
             box_batch_size_per_image=16, rpn_batch_size_per_image=64, detections_per_image=10)
_VARIANTS = {
    "vgg16_roi_pool": lambda: dict(backbone="vgg16", anchor_scales=(4, 8)),
    "cascade": lambda: dict(backbone=_tiny_backbone(64), fpn_filters=8,
                            cascade_iou_thresholds=(0.5, 0.6, 0.7)),
    "deformable": lambda: dict(backbone="resnet18", deformable_stages=(5,), fpn_filters=8),
    "giou": lambda: dict(backbone=_tiny_backbone(64), fpn_filters=8, box_loss="giou"),
    "mobilenet_v2": lambda: dict(backbone="mobilenet_v2", fpn_filters=8),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_variant_trains_under_mixed_float16(variant):
    keras.mixed_precision.set_global_policy("mixed_float16")
    images, targets = kcv.data.make_shapes_detection(2, image_size=64, seed=0, max_boxes=8)
    model = FasterRCNN(3, input_shape=(64, 64, 3), **_TINY, **_VARIANTS[variant]())
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=5.0), run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(images, targets, batch_size=1, epochs=1, verbose=0).history
    names = {"loss", "rpn_objectness", "rpn_box", "classifier", "box_reg"}
    if variant == "cascade":  # and each stage's unweighted terms
        names |= {f"{term}_stage{t}" for term in ("classifier", "box_reg") for t in (1, 2, 3)}
    assert set(history) == names
    for name, values in history.items():
        assert np.isfinite(values).all(), (name, values)
    losses = model.compute_losses(images, targets)
    assert {k: v.dtype for k, v in losses.items()} == {k: tf.float32 for k in losses}
    # really mixed: the convolutions compute in float16, every variable stays float32
    convs = [layer for layer in model._flatten_layers()
             if isinstance(layer, (keras.layers.Conv2D, DeformableConv2D))]
    assert convs and all(layer.compute_dtype == "float16" for layer in convs)
    if variant == "deformable":
        assert any(isinstance(layer, DeformableConv2D) for layer in convs)
    assert {v.dtype for v in model.variables} == {"float32"}
    out = model(images[:1])
    assert out["boxes"].dtype == tf.float32 and out["scores"].dtype == tf.float32
    assert out["classes"].dtype == tf.int32 and out["num_detections"].dtype == tf.int32
    k = int(out["num_detections"][0])
    boxes = out["boxes"][0, :k].numpy()
    assert np.isfinite(boxes).all() and (boxes >= 0).all() and (boxes <= 64).all()
    assert np.isfinite(out["scores"].numpy()).all()
