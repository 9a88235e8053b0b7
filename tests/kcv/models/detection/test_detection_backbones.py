"""Detection backbones: torchvision's trainable stages and frozen BN, weights files, DCNv2 stages."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

from kcv.layers import DeformableConv2D
from kcv.models.detection import FasterRCNN
from kcv.models.detection.backbones import build_backbone

_SHAPE = (64, 64, 3)
_X = np.random.default_rng(0).uniform(0, 1, (2, *_SHAPE)).astype("float32")


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# --- trainable_backbone_layers ----------------------------------------------------------------


@pytest.mark.parametrize("layers, expected", [
    # torchvision 0.29: resnet_fpn_backbone("resnet18", weights=None, trainable_layers=k,
    # norm_layer=FrozenBatchNorm2d).body, parameters with requires_grad (conv weights only).
    (0, 0), (3, 11_010_048), (5, 11_166_912),
])
def test_resnet18_trainable_parameters_match_torchvision(layers, expected):
    model, resolved, frozen = build_backbone("resnet18", _SHAPE, trainable_layers=layers,
                                             batch_norm_frozen=True)
    assert (resolved, frozen) == (layers, True)
    assert _trainable_count(model) == expected


@pytest.mark.parametrize("backbone, layers, first, last_frozen", [
    ("resnet18", 3, "conv3_", "conv2_block2_2_bn"),  # torchvision: layer2, layer3, layer4
    ("resnet18", 4, "conv2_", "conv1_bn"),           # + layer1
    ("resnet18", 5, "conv1_", None),                 # + conv1, bn1
    ("vgg16", 3, "block3_", "block2_conv2"),         # py-faster-rcnn fine-tunes conv3_1 and up
    ("mobilenet_v2", 1, "block_13_", "block_12_project_BN"),  # stride-32 blocks and Conv_1
    ("mobilenet_v2", 2, "block_6_", "block_5_project_BN"),    # + the stride-16 blocks
    ("mobilenet_v2", 5, "Conv1", None),
])
def test_trainable_layers_cut_at_the_stage_boundary(backbone, layers, first, last_frozen):
    model, _, _ = build_backbone(backbone, _SHAPE, trainable_layers=layers)
    names = [layer.name for layer in model.layers if layer.weights]
    trains = [bool(model.get_layer(n).trainable_weights) for n in names]
    cut = trains.index(True)
    assert trains == [False] * cut + [True] * (len(names) - cut)  # the frozen ones: a prefix
    assert names[cut].startswith(first)
    assert (names[cut - 1] if cut else None) == last_frozen


def test_vgg16_trainable_layers_3_trains_blocks_3_to_5():
    # keras.applications VGG16 without top: 14,714,688 parameters, blocks 1-2: 260,160.
    model, _, _ = build_backbone("vgg16", _SHAPE, trainable_layers=3)
    assert _trainable_count(model) == 14_714_688 - 260_160


def test_defaults_follow_torchvision(tmp_path):
    # No weights: everything trains and BN is plain; with weights: 3 stages and frozen BN.
    _, layers, frozen = build_backbone("resnet18", _SHAPE)
    assert (layers, frozen) == (5, False)
    plain, _, _ = build_backbone("resnet18", _SHAPE)
    path = str(tmp_path / "resnet18.weights.h5")
    plain.save_weights(path)
    _, layers, frozen = build_backbone("resnet18", _SHAPE, weights=path)
    assert (layers, frozen) == (3, True)


# --- frozen batch norm --------------------------------------------------------------------------


def test_frozen_batch_norm_is_inference_mode_in_training():
    frozen, _, _ = build_backbone("resnet18", _SHAPE, batch_norm_frozen=True)
    plain, _, _ = build_backbone("resnet18", _SHAPE, batch_norm_frozen=False)
    plain.set_weights(frozen.get_weights())
    norms = [layer for layer in frozen.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable_weights for layer in norms)
    stats = [np.array(w) for layer in norms for w in layer.weights]
    train, infer = frozen(_X, training=True), frozen(_X, training=False)
    for key in ("C2", "C5"):
        np.testing.assert_array_equal(np.asarray(train[key]), np.asarray(infer[key]))
    for before, after in zip(stats, (w for layer in norms for w in layer.weights)):
        np.testing.assert_array_equal(np.array(after), before)  # moving statistics kept
    # a plain BN uses the batch statistics in training (so the check above can fail)
    assert not np.allclose(plain(_X, training=True)["C5"], plain(_X, training=False)["C5"])


# --- weights files ------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone, app", [
    ("resnet50", "ResNet50"), ("mobilenet_v2", "MobileNetV2"), ("vgg16", "VGG16")])
def test_backbone_weights_load_a_keras_applications_file(tmp_path, backbone, app):
    # The ImageNet files keras.applications downloads are legacy HDF5 weight files: write one
    # from a keras.applications model with random weights (random biases and BN statistics too).
    theirs = getattr(keras.applications, app)(input_shape=_SHAPE, include_top=False,
                                              weights=None)
    rng = np.random.default_rng(1)
    theirs.set_weights([rng.normal(0.5, 0.1, w.shape).astype("float32")
                        for w in theirs.get_weights()])
    path = str(tmp_path / f"{backbone}_notop.h5")
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, theirs)
    model = FasterRCNN(2, backbone=backbone, input_shape=_SHAPE, backbone_weights=path)
    loaded = 0
    for layer in theirs.layers:
        if layer.weights and layer.name in {x.name for x in model.backbone.layers}:
            for a, b in zip(model.backbone.get_layer(layer.name).get_weights(),
                            layer.get_weights()):
                np.testing.assert_array_equal(a, b)
                loaded += 1
    assert loaded == len(model.backbone.weights)
    assert model.trainable_backbone_layers == 3 and model.freeze_batch_norm is True


@pytest.mark.parametrize("weights", ["imagenet", "missing.h5"])
def test_backbone_weights_must_be_a_local_file(weights):
    with pytest.raises(ValueError, match=f"downloads nothing.*backbone_weights='{weights}'"):
        FasterRCNN(2, backbone="resnet18", backbone_weights=weights)


# --- deformable stages --------------------------------------------------------------------------


@pytest.mark.parametrize("backbone, stages, count", [
    ("resnet18", (3, 4, 5), 12),  # 3 stages x 2 basic blocks x two 3x3 convolutions
    ("resnet50", (4, 5), 9),      # 6 + 3 bottleneck blocks, one 3x3 convolution each
])
def test_deformable_stages_replace_the_3x3_convolutions(backbone, stages, count):
    model, _, _ = build_backbone(backbone, _SHAPE, deformable_stages=stages)
    deformable = [layer for layer in model.layers if isinstance(layer, DeformableConv2D)]
    assert len(deformable) == count
    assert all(layer.modulated and layer.kernel_size == (3, 3) for layer in deformable)
    assert {int(layer.name[4]) for layer in deformable} == set(stages)


def test_deformable_backbone_equals_the_plain_one_at_initialisation(tmp_path):
    plain, _, _ = build_backbone("resnet18", _SHAPE)
    path = str(tmp_path / "resnet18.weights.h5")
    plain.save_weights(path)
    model, _, _ = build_backbone("resnet18", _SHAPE, weights=path, deformable_stages=(3, 4, 5))
    x = _X[:1]
    want, got = plain(x), model(x)
    for key in ("C2", "C3", "C4", "C5"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=1e-5)
    # offsets are really used: moving those of one conv5 layer changes C5 (not C4)
    layer = model.get_layer("conv5_block2_2_conv")
    layer.offset_conv.bias.assign(np.full(layer.offset_conv.bias.shape, 0.7, "float32"))
    moved = model(x)
    np.testing.assert_allclose(np.asarray(moved["C4"]), np.asarray(want["C4"]), atol=1e-5)
    assert np.abs(np.asarray(moved["C5"]) - np.asarray(want["C5"])).max() > 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(backbone="vgg16", deformable_stages=(5,)), "needs backbone in"),
    (dict(backbone="mobilenet_v2", deformable_stages=(3,)), "needs backbone in"),
    (dict(backbone="resnet18", deformable_stages=(2, 3)), r"deformable_stages=\(2, 3\)"),
    (dict(backbone="resnet18", deformable_stages=(4, 4)), r"deformable_stages=\(4, 4\)"),
    (dict(backbone="resnet18", deformable_stages=()), r"deformable_stages=\(\)"),
    (dict(backbone="resnet18", trainable_backbone_layers=6), "trainable_backbone_layers=6"),
    (dict(backbone="resnet18", freeze_batch_norm="yes"), "freeze_batch_norm='yes'"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FasterRCNN(2, input_shape=_SHAPE, **kwargs)
