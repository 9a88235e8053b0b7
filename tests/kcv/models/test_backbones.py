"""Backbones: architecture identity with keras.applications, published parameter counts,
multi-scale features, weights files, the shared model routine and TFLite parity."""

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

from kcv.models import (
    VGG16,
    MobileNetV1,
    MobileNetV2,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
)

from kcv_testing import check_layer, check_tflite

_APPS = keras.applications


def _images(size=64, batch=2, width=None):
    return np.random.RandomState(0).uniform(-1, 1, (batch, size, width or size, 3)).astype("float32")


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _weight_layers(model):
    return [(layer.name, [tuple(w.shape) for w in layer.weights])
            for layer in model.layers if layer.weights]


def _assert_same_model(ours, theirs, x):
    """Same layers with weights (names, order, shapes); theirs' weights give the same outputs."""
    assert _weight_layers(ours) == _weight_layers(theirs)
    assert ours.count_params() == theirs.count_params()
    ours.set_weights(theirs.get_weights())
    expected = np.asarray(theirs(x))
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(np.asarray(ours(x)), expected, atol=1e-6, rtol=0)


# --- identity with keras.applications -----------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_mobilenet_v1_is_keras_applications_mobilenet(alpha):
    kwargs = dict(alpha=alpha, classes=5, classifier_activation=None)
    ours = MobileNetV1((64, 64, 3), **kwargs)
    theirs = _APPS.MobileNet(input_shape=(64, 64, 3), weights=None, **kwargs)
    _assert_same_model(ours, theirs, _images())


@pytest.mark.parametrize("alpha", [0.35, 1.0, 1.3])  # 1.3: wider last layer
def test_mobilenet_v2_is_keras_applications_mobilenet_v2(alpha):
    kwargs = dict(alpha=alpha, classes=5, classifier_activation=None)
    ours = MobileNetV2((64, 64, 3), **kwargs)
    theirs = _APPS.MobileNetV2(input_shape=(64, 64, 3), weights=None, **kwargs)
    _assert_same_model(ours, theirs, _images())


@pytest.mark.parametrize("preact, theirs", [(False, "ResNet50"), (True, "ResNet50V2")])
def test_resnet50_is_keras_applications_resnet50(preact, theirs):
    ours = ResNet50((64, 64, 3), preact=preact, classes=5, classifier_activation=None)
    theirs = getattr(_APPS, theirs)(input_shape=(64, 64, 3), weights=None, classes=5,
                                    classifier_activation=None)
    _assert_same_model(ours, theirs, _images())


@pytest.mark.slow
@pytest.mark.parametrize("builder, preact, theirs", [
    (ResNet152, False, "ResNet152"), (ResNet101, True, "ResNet101V2"),
])
def test_deep_resnets_have_keras_applications_layers(builder, preact, theirs):
    ours = builder((None, None, 3), preact=preact, include_top=False)
    theirs = getattr(_APPS, theirs)(input_shape=(None, None, 3), weights=None, include_top=False)
    assert _weight_layers(ours) == _weight_layers(theirs)


def test_vgg16_is_keras_applications_vgg16():
    ours = VGG16((32, 32, 3), include_top=False, pooling="avg")
    theirs = _APPS.VGG16(input_shape=(32, 32, 3), weights=None, include_top=False, pooling="avg")
    _assert_same_model(ours, theirs, _images(32))


# --- published parameter counts ------------------------------------------------------------------

@pytest.mark.parametrize("builder, published", [(ResNet18, 11_689_512), (ResNet34, 21_797_672)])
def test_basic_resnets_match_published_parameter_counts(builder, published):
    # torchvision's resnet18/resnet34 (the paper's 11.7M/21.8M), 1000 classes; batch-norm moving
    # statistics are not parameters there, so compare the trainable weights.
    assert _trainable(builder()) == published


def test_resnet50_matches_published_count_up_to_keras_conv_biases():
    # torchvision resnet50: 25,557,032 (25.56M). keras.applications' ResNet50 (which ours is,
    # to load its weights) also gives every convolution a bias: one per output channel.
    model = ResNet50()
    conv_biases = sum(int(layer.bias.shape[0]) for layer in model.layers
                      if isinstance(layer, keras.layers.Conv2D) and layer.use_bias)
    assert _trainable(model) - conv_biases == 25_557_032


def test_preact_resnet18_parameter_count_by_hand():
    # Stem 7x7x3x64 conv (+bias). Stage s (width w, input width w_in): block 1 has a 1x1
    # projection (+bias) when w_in != w; each block: preact BN (2 w_in), 3x3 conv (no bias),
    # BN (2 w), 3x3 conv (+bias). Then post BN and the 512x1000 dense.
    total, w_in = 7 * 7 * 3 * 64 + 64, 64
    for w in (64, 128, 256, 512):
        for _ in range(2):
            total += 2 * w_in + 9 * w_in * w + 2 * w + 9 * w * w + w
            if w_in != w:
                total += w_in * w + w
            w_in = w
    total += 2 * 512 + 512 * 1000 + 1000
    assert _trainable(ResNet18(preact=True)) == total


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm, published", [(False, 138_357_544), (True, 138_365_992)])
def test_vgg16_matches_published_parameter_count(batch_norm, published):
    # Simonyan & Zisserman's 138M (keras.applications' VGG16 summary); torchvision vgg16_bn.
    assert _trainable(VGG16((224, 224, 3), batch_norm=batch_norm)) == published


# --- multi-scale features -------------------------------------------------------------------------

@pytest.mark.parametrize("builder, kwargs, channels", [
    (MobileNetV1, dict(alpha=0.25), (32, 64, 128, 256)),
    (MobileNetV2, dict(alpha=0.35), (8, 16, 32, 1280)),
    (ResNet18, dict(preact=False), (64, 128, 256, 512)),
    (ResNet18, dict(preact=True), (64, 128, 256, 512)),
    (VGG16, dict(batch_norm=True), (256, 512, 512, 512)),
])
def test_features_are_c2_to_c5_at_strides_4_to_32(builder, kwargs, channels):
    h, w = 96, 64  # any multiple of 32, not square
    model = builder((h, w, 3), include_top=False, return_features=True, **kwargs)
    out = model(_images(h, 1, w))
    assert sorted(out) == ["C2", "C3", "C4", "C5"]
    for key, stride, ch in zip(("C2", "C3", "C4", "C5"), (4, 8, 16, 32), channels):
        assert tuple(out[key].shape) == (1, h // stride, w // stride, ch), key


def test_features_are_the_backbone_activations():
    # C5 of the feature model is the last feature map of the plain backbone with the same weights.
    full = MobileNetV2((64, 64, 3), alpha=0.35, include_top=False)
    features = MobileNetV2((64, 64, 3), alpha=0.35, include_top=False, return_features=True)
    features.set_weights(full.get_weights())
    x = _images()
    np.testing.assert_allclose(np.asarray(features(x)["C5"]), np.asarray(full(x)), atol=1e-6)


def test_features_convert_to_tflite():
    model = MobileNetV2((64, 64, 3), alpha=0.35, include_top=False, return_features=True)
    as_list = keras.Model(model.input, [model.output[k] for k in ("C2", "C3", "C4", "C5")])
    check_tflite(as_list, [_images(64, 1)])


# --- weights files ----------------------------------------------------------------------------------

def test_weights_loads_a_keras_applications_h5_file(tmp_path):
    # The ImageNet files keras.applications downloads are legacy (Keras 2) HDF5 weight files;
    # write one from a randomly initialised keras.applications model.
    theirs = _APPS.MobileNetV2(input_shape=(64, 64, 3), alpha=0.5, weights=None, include_top=False)
    path = str(tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_64_no_top.h5")
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, theirs)
    ours = MobileNetV2((64, 64, 3), alpha=0.5, include_top=False, weights=path)
    x = _images()
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), atol=1e-6, rtol=0)


def test_weights_loads_a_keras3_weights_file(tmp_path):
    theirs = _APPS.MobileNet(input_shape=(64, 64, 3), alpha=0.25, weights=None, classes=5)
    path = str(tmp_path / "mobilenet.weights.h5")
    theirs.save_weights(path)
    ours = MobileNetV1((64, 64, 3), alpha=0.25, classes=5, weights=path)
    x = _images()
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), atol=1e-6, rtol=0)


# --- argument errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("builder", [MobileNetV1, MobileNetV2, ResNet18, VGG16])
def test_input_size_must_be_divisible_by_32(builder):
    with pytest.raises(ValueError, match=r"divisible by 32.*input_shape=\(100, 96, 3\)"):
        builder((100, 96, 3), include_top=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(weights="imagenet"), "downloads nothing.*weights='imagenet'"),
    (dict(include_top=True, return_features=True), "include_top=False"),
    (dict(pooling="mean"), "pooling='mean'"),
    (dict(alpha=0), "alpha=0"),
    (dict(input_shape=(64, 64)), r"input_shape=\(64, 64\)"),
])
def test_argument_errors(kwargs, match):
    kwargs = {"input_shape": (64, 64, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        MobileNetV2(**kwargs)


def test_vgg16_top_needs_a_fixed_size():
    with pytest.raises(ValueError, match="input_shape"):
        VGG16((None, None, 3), include_top=True)


def test_resnet_blocks_per_stage_error():
    from kcv.models.backbones import ResNet
    with pytest.raises(ValueError, match=r"blocks_per_stage=\(2, 2, 2\)"):
        ResNet((2, 2, 2), bottleneck=False)


# --- shared routine and TFLite -------------------------------------------------------------------------

# 64x64, not 32x32: with a 1x1 last feature map, batch norm over 2 values overflows float16
# gradients at the initial loss scale and the mixed-precision training step is skipped.
@pytest.mark.parametrize("factory", [
    lambda: MobileNetV1((64, 64, 3), alpha=0.25, classes=5),
    lambda: MobileNetV2((64, 64, 3), alpha=0.35, classes=5),
    lambda: ResNet18((64, 64, 3), classes=5),
], ids=["mobilenet_v1", "mobilenet_v2", "resnet18"])
def test_shared_model_routine(factory):
    check_layer(factory, _images(64))


@pytest.mark.slow
def test_shared_model_routine_vgg16_bn():
    check_layer(lambda: VGG16((32, 32, 3), batch_norm=True, include_top=False, pooling="avg"),
                _images(32))


def test_tflite_parity_preact_resnet():
    # The v2 layers (pre-activation units, 1x1 max-pool shortcut of the strided blocks, post
    # norm); the bottleneck networks use the same layer types as the basic ones.
    check_tflite(ResNet18((32, 32, 3), preact=True, classes=5), [_images(32, 1)])
