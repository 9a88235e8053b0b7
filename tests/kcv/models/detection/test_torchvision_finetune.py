"""Fine-tuning the torchvision Faster R-CNN port with `fit`, against torchvision's own training.

The numbers come from torchvision 0.29.1 (tools/make_torchvision_finetune_fixtures.py): the
losses and gradients of the narrow v1 model of torchvision_fasterrcnn_v1.npz in train mode,
with samplers that take every candidate (so no random sampling), and the parameter names
torchvision's builders train for each `trainable_backbone_layers`.
"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcv.data import shapes_detection_dataset
from kcv.models.detection.torchvision_finetune import (
    BOX_PREDICTOR_KEYS,
    freeze_backbone,
    resize_target_boxes,
    torchvision_labels,
)
from kcv.models.detection.torchvision_port import (
    TorchvisionFasterRCNN,
    faster_rcnn_from_torchvision,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from kcv_testing import check_keras_reload  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures")
_TORCH_LOSSES = {"rpn_objectness": "loss_objectness", "rpn_box": "loss_rpn_box_reg",
                 "classifier": "loss_classifier", "box_reg": "loss_box_reg"}


def _load(name):
    with np.load(os.path.join(FIXTURES, name)) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def state_dict():
    return {k[3:]: v for k, v in _load("torchvision_fasterrcnn_v1.npz").items()
            if k.startswith("sd/")}


@pytest.fixture(scope="module")
def train():
    return _load("torchvision_fasterrcnn_train.npz")


def _torchvision_names(model, variables):
    by_variable = {id(v): key for key, (v, _) in model.weight_map().items()}
    return {by_variable[id(v)] for v in variables}


def test_losses_and_gradients_equal_torchvision(state_dict, train):
    # Samplers that take every anchor and RoI: torchvision's losses are then deterministic.
    model = faster_rcnn_from_torchvision(
        state_dict, dtype="float64", min_size=128, max_size=160,
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,  # as the fixture's
        rpn_batch_size_per_image=100_000, rpn_positive_fraction=1.0,
        box_batch_size_per_image=160, box_positive_fraction=1.0)
    images = tf.constant(train["images"] / 255.0)  # 96 x 120, resized to 128 x 160
    targets = {"boxes": tf.constant(train["boxes"]), "classes": tf.constant(train["labels"])}
    mapping = model.weight_map()
    keys = sorted(k[5:] for k in train if k.startswith("grad/"))

    with tf.GradientTape() as tape:  # eagerly: tracing the 16-block graph takes longer
        losses = model.compute_losses(images, targets)
        total = tf.add_n(list(losses.values()))
    grads = tape.gradient(total, [mapping[k][0] for k in keys])
    for name, torch_name in _TORCH_LOSSES.items():  # kcv's loss code computes in float32
        np.testing.assert_allclose(float(losses[name]), float(train[torch_name]), rtol=1e-6)
    for key, grad in zip(keys, grads):
        got = model._convert(np.asarray(tf.convert_to_tensor(grad)), mapping[key][1],
                             to_keras=False)
        want = train[f"grad/{key}"]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(),
                                   err_msg=key)


@pytest.mark.parametrize("architecture", ["fasterrcnn_resnet50_fpn",
                                          "fasterrcnn_resnet50_fpn_v2"])
def test_trainable_weights_are_torchvision_requires_grad(train, architecture):
    parameters = set(train[f"{architecture}/parameters"])
    norms = set(train[f"{architecture}/norm_parameters"])  # v2's BatchNorm2d stay frozen here
    assert bool(norms) == architecture.endswith("_v2")
    model = TorchvisionFasterRCNN(  # ResNet-50's blocks, narrow
        91, stem_filters=8, stage_widths=(4, 8, 16, 32), fpn_filters=8, representation_size=16,
        box_head_conv_filters=8, architecture=architecture)  # trainable_backbone_layers=3
    for layers in (3, 0, 5):
        if layers != 3:
            freeze_backbone(model.body, layers)
        want = parameters - set(train[f"{architecture}/frozen_{layers}"]) - norms
        got = _torchvision_names(model, model.trainable_variables)
        assert got == want, (layers, sorted(got ^ want)[:10])


def test_a_new_num_classes_replaces_only_the_box_predictor(state_dict):
    model = faster_rcnn_from_torchvision(state_dict, num_classes=4, min_size=64, max_size=64)
    assert model.num_classes == 4
    loaded = model.torchvision_state_dict()
    for key, value in state_dict.items():
        if key not in BOX_PREDICTOR_KEYS:
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    # torchvision's FastRCNNPredictor(64, 4): nn.Linear, U(-1/sqrt(64), 1/sqrt(64))
    for key, shape in zip(BOX_PREDICTOR_KEYS, [(4, 64), (4,), (16, 64), (16,)]):
        value = loaded[key]
        assert value.shape == shape
        assert np.abs(value).max() <= 0.125 and np.abs(value).max() > 0.06, key
    assert set(BOX_PREDICTOR_KEYS) <= _torchvision_names(model, model.trainable_variables)


def test_the_replacement_is_strict_about_every_other_key(state_dict):
    extra = {**state_dict, "roi_heads.mask_head.0.weight": np.zeros(3)}
    with pytest.raises(ValueError, match="Unused keys \\(1\\): \\['roi_heads.mask_head"):
        faster_rcnn_from_torchvision(extra, num_classes=4)
    missing = {k: v for k, v in state_dict.items() if k != "rpn.head.cls_logits.bias"}
    with pytest.raises(ValueError, match="Missing keys \\(1\\): \\['rpn.head.cls_logits.bias"):
        faster_rcnn_from_torchvision(missing, num_classes=4)


def test_target_boxes_follow_the_resize():
    # 96 x 121 at min_size 128, max_size 160: scale 160 / 121, resized to floor() = 126 x 160
    boxes = resize_target_boxes(tf.constant([[[9.6, 12.1, 96.0, 121.0]]]), (96, 121),
                                (126, 160))
    np.testing.assert_allclose(boxes.numpy(), [[[12.6, 16.0, 126.0, 160.0]]], rtol=1e-6)


def test_targets_are_checked(state_dict):
    model = faster_rcnn_from_torchvision(state_dict, min_size=64, max_size=64)
    images = tf.zeros([1, 64, 64, 3])
    boxes = tf.constant([[[4.0, 4.0, 30.0, 30.0]]])
    with pytest.raises(ValueError, match="`targets` must be a dict with 'boxes' and 'classes'"):
        model.compute_losses(images, {"boxes": boxes})
    for bad in (0, 5):  # the background, and past num_classes=5
        with pytest.raises(tf.errors.InvalidArgumentError, match="targets\\['classes'\\]"):
            model.compute_losses(images, {"boxes": boxes, "classes": tf.constant([[bad]])})


def test_fit_lowers_the_loss_logs_each_term_and_reloads():
    # A converted "checkpoint" of a narrow model with 91 classes, fine-tuned for the 3 shapes
    keras.utils.set_random_seed(0)
    coco = TorchvisionFasterRCNN(91, blocks_per_stage=(1, 1, 1, 1), stem_filters=8,
                                 stage_widths=(4, 8, 16, 32), fpn_filters=16,
                                 representation_size=32)
    model = faster_rcnn_from_torchvision(
        coco.torchvision_state_dict(), num_classes=4, min_size=64, max_size=64,
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)
    data = shapes_detection_dataset(8, image_size=64, batch_size=4, seed=0,
                                    shuffle=False).map(torchvision_labels).cache()
    model.compile(keras.optimizers.Adam(3e-3))
    history = model.fit(data, epochs=8, verbose=0).history
    assert set(history) == {"loss", "rpn_objectness", "rpn_box", "classifier", "box_reg"}
    for name in ("rpn_objectness", "rpn_box", "classifier", "box_reg"):
        assert history[name][0] > 0
    assert history["loss"][-1] < 0.75 * history["loss"][0], history["loss"]
    images = next(iter(data))[0].numpy()
    assert int(model(images)["num_detections"].numpy().max()) > 0
    check_keras_reload(model, [images], atol=1e-5)
