"""FasterRCNN options: the VGG16 single-level model, backbone weights, frozen stages and BN,
deformable stages and the GIoU box loss (config, `.keras` reload, one training step)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv
from kcv.layers import DeformableConv2D
from kcv.models.detection import FasterRCNN
from kcv.models.detection.backbones import build_backbone

from kcv_testing import check_keras_reload

_SHAPE = (64, 64, 3)
_TINY = dict(representation_size=16, rpn_pre_nms_top_n=(200, 100), rpn_post_nms_top_n=(64, 32),
             box_batch_size_per_image=32, detections_per_image=20)


def _weights_file(tmp_path, backbone="resnet18"):
    """A weights file of kcv's backbone (random weights, as a user's own file would be)."""
    model, _, _ = build_backbone(backbone, _SHAPE)
    path = str(tmp_path / f"{backbone}.weights.h5")
    model.save_weights(path)
    return path


def _tiny_bn_backbone():
    inputs = keras.Input(_SHAPE)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    out = {}
    for level in ("C2", "C3", "C4", "C5"):
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        out[level] = x
    return keras.Model(inputs, out, name="tiny_bn")


def test_vgg16_is_the_single_level_paper_model():
    model = FasterRCNN(3, backbone="vgg16", input_shape=_SHAPE, **_TINY)
    assert model.fpn is None and model.get_config()["fpn"] is False
    assert tuple(model.backbone.output.shape) == (None, 4, 4, 512)  # conv5_3: stride 16
    assert model.backbone.layers[-1].name == "block5_conv3"
    assert model.rpn_head.num_anchors == 9
    assert model.box_head.pooler == "roi_pool" and model.box_head.spatial_scales == (1 / 16,)
    images, targets = kcv.data.make_shapes_detection(1, image_size=64, seed=2, max_objects=4, max_boxes=4)
    anchors = model.anchor_generator([images, tf.zeros([1, 4, 4, 512])])
    np.testing.assert_array_equal(anchors.numpy(), kcv.models.detection.generate_anchors(
        (64, 64), 16).numpy())  # the paper's 9 anchors: 4 x 4 x 9
    losses = model.compute_losses(images, targets)
    np.testing.assert_allclose(float(losses["rpn_objectness"]), np.log(2), atol=0.02)
    out = model(images)
    assert out["boxes"].shape == (1, 20, 4)
    # the paper's fc6/fc7 width by default, torchvision's otherwise
    assert FasterRCNN(3, backbone="vgg16").representation_size == 4096
    assert FasterRCNN(3, backbone="resnet18").representation_size == 1024


def test_one_fit_step_moves_only_the_trainable_variables():
    images, targets = kcv.data.make_shapes_detection(2, image_size=64, seed=0, max_boxes=6)
    model = FasterRCNN(3, backbone="resnet18", input_shape=_SHAPE, fpn_filters=8,
                       trainable_backbone_layers=2, freeze_batch_norm=True, box_loss="giou",
                       **_TINY)
    model(images)  # builds the heads
    model.compile(optimizer=keras.optimizers.SGD(0.05), run_eagerly=True)
    before = {w.path: np.array(w) for w in model.backbone.weights}
    heads_before = [np.array(w) for w in model.box_head.weights]
    logs = model.fit(images, targets, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(logs["box_reg"][0]) and logs["box_reg"][0] > 0
    moved = {w.path for w in model.backbone.weights if not np.array_equal(before[w.path], w)}
    trainable = {w.path for w in model.backbone.trainable_weights}
    assert moved and moved <= trainable
    # trainable: the convolutions of conv4_x and conv5_x (torchvision's layer3, layer4)
    assert {p.split("/")[-2][:6] for p in trainable} == {"conv4_", "conv5_"}
    assert not any("_bn" in p for p in trainable)  # frozen BN: gamma/beta fixed too
    assert any("conv4_" in p for p in moved) and any("conv5_" in p for p in moved)
    assert any(not np.array_equal(a, b) for a, b in zip(heads_before, model.box_head.weights))


_VARIANTS = {  # built on demand: only "resnet18_options" needs the weights file
    "vgg16_giou": lambda tmp_path: dict(backbone="vgg16", box_loss="giou",
                                        anchor_scales=(4, 8)),
    "resnet18_options": lambda tmp_path: dict(
        backbone="resnet18", backbone_weights=_weights_file(tmp_path),
        trainable_backbone_layers=2, deformable_stages=(4, 5), box_loss="giou", fpn_filters=8),
    "custom_frozen_bn": lambda tmp_path: dict(backbone=_tiny_bn_backbone(),
                                              freeze_batch_norm=True, fpn_filters=8),
}


@pytest.mark.parametrize("variant", ["vgg16_giou", "resnet18_options", "custom_frozen_bn"])
def test_config_round_trip(tmp_path, variant):
    model = FasterRCNN(2, input_shape=_SHAPE, **_TINY, **_VARIANTS[variant](tmp_path))
    config = model.get_config()
    if variant == "resnet18_options":
        assert config["trainable_backbone_layers"] == 2 and config["freeze_batch_norm"] is True
        assert config["deformable_stages"] == (4, 5)
        os.remove(config["backbone_weights"])  # rebuilt from the config without reading it
    again = FasterRCNN.from_config(config)
    assert again.get_config() == config
    assert ([w.path for w in again.backbone.trainable_weights]
            == [w.path for w in model.backbone.trainable_weights])
    assert ([type(x).__name__ for x in again.backbone.layers]
            == [type(x).__name__ for x in model.backbone.layers])
    if variant == "custom_frozen_bn":
        assert not again.backbone.get_layer("stem_bn").trainable


def _reload_model(tmp_path, variant):
    model = FasterRCNN(2, input_shape=_SHAPE, **_TINY, **_VARIANTS[variant](tmp_path))
    if variant == "resnet18_options":
        assert sum(isinstance(x, DeformableConv2D) for x in model.backbone.layers) == 8
        layer = model.backbone.get_layer("conv5_block1_2_conv")  # non-zero offsets are saved
        layer.offset_conv.bias.assign(np.full(layer.offset_conv.bias.shape, 0.3, "float32"))
    images = np.random.default_rng(3).uniform(0, 1, (1, *_SHAPE)).astype("float32")
    return model, images


@pytest.mark.parametrize("variant", ["vgg16_giou", "resnet18_options", "custom_frozen_bn"])
def test_keras_reload(tmp_path, variant):
    model, images = _reload_model(tmp_path, variant)
    want = model(images)
    assert int(want["num_detections"][0]) > 0
    path = str(tmp_path / "model.keras")
    model.save(path)
    if model.backbone_weights:
        os.remove(model.backbone_weights)  # the reload does not read it
    again = keras.saving.load_model(path, safe_mode=True)
    got = again(images)
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=1e-4)
    if variant != "custom_frozen_bn":  # (a custom backbone's auto-named layers are renumbered)
        assert again.get_config() == model.get_config()
    else:
        assert not again.backbone.get_layer("stem_bn").trainable


@pytest.mark.slow
def test_keras_reload_in_a_fresh_process(tmp_path):
    model, images = _reload_model(tmp_path, "resnet18_options")
    check_keras_reload(model, [images], atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(backbone="vgg16", fpn=True), "built without an FPN.*fpn=True"),
    (dict(backbone="resnet18", fpn=False), "built with an FPN.*fpn=False"),
    (dict(backbone="resnet18", box_loss="l1"), "`box_loss` must be one of.*box_loss='l1'"),
    (dict(backbone="alexnet"), "`backbone` must be one of"),
    (dict(backbone="custom", fpn=False), "returns C2..C5 for the FPN. Received: fpn=False"),
    (dict(backbone="custom", trainable_backbone_layers=3),
     "not to a keras.Model backbone. Received: trainable_backbone_layers=3"),
    (dict(backbone="custom", deformable_stages=(5,)),
     r"not to a keras.Model backbone. Received: deformable_stages=\(5,\)"),
    (dict(backbone="custom", freeze_batch_norm=1), "freeze_batch_norm=1"),
])
def test_errors(kwargs, match):
    if kwargs["backbone"] == "custom":
        kwargs = dict(kwargs, backbone=_tiny_bn_backbone())
    with pytest.raises(ValueError, match=match):
        FasterRCNN(2, input_shape=_SHAPE, **kwargs)
