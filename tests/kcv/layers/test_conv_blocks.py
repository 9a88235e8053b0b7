"""Tests of kcv.layers.conv_blocks against NumPy forward passes built from the papers' formulas
and against the keras.applications MobileNet blocks."""

import keras
import numpy as np
import pytest
from _numpy_conv import (
    activation,
    built_with_random_batch_norms,
    conv2d,
    inference_batch_norm,
    randomize_batch_norms,
)

from kcv.layers import ConvBNAct, DepthwiseSeparableConv, InvertedResidual

from kcv_testing import check_layer


def _x(shape=(2, 9, 9, 4), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# --- the shared layer routine, once per class ----------------------------------------------

@pytest.mark.parametrize("factory", [
    lambda: ConvBNAct(6, strides=2),
    lambda: DepthwiseSeparableConv(6, strides=2),
    lambda: InvertedResidual(4, expansion=3),
], ids=["ConvBNAct", "DepthwiseSeparableConv", "InvertedResidual"])
def test_check_layer(factory):
    check_layer(factory, _x((2, 8, 8, 4)))


# --- ConvBNAct ------------------------------------------------------------------------------

def test_conv_bn_act_hand_computed_ones_kernel():
    # 3x3 kernel of ones, "same" padding, constant input 1 over 2 channels: each output counts
    # the in-image taps times 2 channels: 8 at corners, 12 on edges, 18 inside; then ReLU.
    layer = ConvBNAct(1, norm=None, activation="relu", kernel_initializer="ones")
    y = np.asarray(layer(np.ones((1, 4, 4, 2), "float32")))[0, :, :, 0]
    expected = np.array([[8, 12, 12, 8], [12, 18, 18, 12], [12, 18, 18, 12], [8, 12, 12, 8]])
    np.testing.assert_allclose(y, expected)
    assert layer.conv.use_bias  # no norm -> bias by default


@pytest.mark.parametrize("kwargs", [
    {"filters": 5, "strides": 2},
    {"filters": 6, "kernel_size": 3, "dilation_rate": 2, "activation": "relu6"},
    {"filters": 4, "kernel_size": 1, "activation": None},
    {"filters": 6, "groups": 2, "padding": "valid"},
    {"depthwise": True, "depth_multiplier": 2, "strides": 2},
    {"filters": 3, "norm": None, "activation": "sigmoid"},
])
def test_conv_bn_act_matches_numpy(kwargs):
    x = _x()
    layer = built_with_random_batch_norms(ConvBNAct(**kwargs), x)
    got = np.asarray(layer(x, training=False))
    conv = layer.conv
    kernel = np.asarray(conv.kernel)
    if kwargs.get("groups", 1) > 1:  # grouped conv = block-diagonal full kernel
        g, cin = kwargs["groups"], x.shape[-1]
        full = np.zeros(kernel.shape[:2] + (cin, kernel.shape[-1]))
        fo, fi = kernel.shape[-1] // g, cin // g
        for i in range(g):
            full[:, :, i * fi:(i + 1) * fi, i * fo:(i + 1) * fo] = kernel[..., i * fo:(i + 1) * fo]
        kernel = full
    y = conv2d(x, kernel, conv.strides[0], conv.dilation_rate[0], conv.padding,
               np.asarray(conv.bias) if conv.use_bias else None,
               depthwise=kwargs.get("depthwise", False))
    if layer.norm_layer is not None:
        y = inference_batch_norm(y, layer.norm_layer)
    np.testing.assert_allclose(got, activation(y, kwargs.get("activation", "relu")), atol=1e-4)


def test_conv_bn_act_training_uses_batch_statistics():
    x = _x((4, 6, 6, 3))
    layer = ConvBNAct(5, activation=None)
    y = np.asarray(layer(x, training=True))
    # gamma=1, beta=0 initially: per-channel batch mean 0 and variance ~1 (up to epsilon)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, atol=1e-2)


# --- DepthwiseSeparableConv -------------------------------------------------------------------

def test_depthwise_separable_matches_numpy_and_parameter_count():
    x = _x()
    layer = built_with_random_batch_norms(DepthwiseSeparableConv(7, strides=2), x)
    got = np.asarray(layer(x, training=False))
    dw, pw = layer.depthwise, layer.pointwise
    y = conv2d(x, np.asarray(dw.conv.kernel), 2, depthwise=True)
    y = np.clip(inference_batch_norm(y, dw.norm_layer), 0, 6)
    y = np.clip(inference_batch_norm(conv2d(y, np.asarray(pw.conv.kernel)), pw.norm_layer), 0, 6)
    np.testing.assert_allclose(got, y, atol=1e-4)
    # 3*3*C depthwise + C*F pointwise weights (no biases), 4 batch-norm vectors per conv
    c, f = 4, 7
    assert layer.count_params() == 9 * c + c * f + 4 * c + 4 * f


# --- InvertedResidual -------------------------------------------------------------------------

@pytest.mark.parametrize("filters, strides, expansion, residual", [
    (4, 1, 6, True), (6, 1, 6, False), (4, 2, 6, False), (4, 1, 1, True), (8, 2, 1, False),
])
def test_inverted_residual_matches_numpy(filters, strides, expansion, residual):
    x = _x()
    layer = built_with_random_batch_norms(InvertedResidual(filters, expansion=expansion, strides=strides), x)
    got = np.asarray(layer(x, training=False))
    assert layer.use_residual is residual
    y = x
    if expansion == 1:
        assert layer.expand is None
    else:
        assert layer.expand.conv.kernel.shape == (1, 1, 4, 4 * expansion)
        y = np.clip(inference_batch_norm(conv2d(y, np.asarray(layer.expand.conv.kernel)), layer.expand.norm_layer),
                    0, 6)
    y = conv2d(y, np.asarray(layer.depthwise.conv.kernel), strides, depthwise=True)
    y = np.clip(inference_batch_norm(y, layer.depthwise.norm_layer), 0, 6)
    y = inference_batch_norm(conv2d(y, np.asarray(layer.project.conv.kernel)), layer.project.norm_layer)  # linear
    if residual:
        y = y + x
    np.testing.assert_allclose(got, y, atol=1e-4)
    assert np.any(got < 0)  # the projection is linear: no activation clips the output


# --- argument checks ----------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: ConvBNAct(0), r"`filters` must be a positive integer. Received: filters=0"),
    (lambda: ConvBNAct(4, norm="batchnorm"), r"`norm` must be one of .*norm='batchnorm'"),
    (lambda: ConvBNAct(4, padding="full"), r"`padding` must be 'same' or 'valid'"),
    (lambda: ConvBNAct(4, depthwise=True), r"`filters` must be None when `depthwise=True`"),
    (lambda: ConvBNAct(4, activation="nope"), r"`activation` must be .*activation='nope'"),
    (lambda: ConvBNAct(4, kernel_size=(3, 0)),
     r"`kernel_size` must be a positive integer or a pair .*kernel_size=\(3, 0\)"),
    (lambda: ConvBNAct(4, strides=1.5), r"`strides` must be a positive integer or a pair"),
    (lambda: ConvBNAct(4, norm_groups=0), r"`norm_groups` must be a positive integer"),
    (lambda: InvertedResidual(4, expansion=0), r"`expansion` must be a positive integer"),
    (lambda: InvertedResidual(4, strides=(2, 2, 2)), r"`strides` must be a positive integer"),
])
def test_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_build_errors():
    with pytest.raises(ValueError, match=r"`groups` must divide .*groups=3, input channels=4"):
        ConvBNAct(6, groups=3)(_x())
    with pytest.raises(ValueError, match=r"InvertedResidual expects NHWC inputs of rank 4"):
        InvertedResidual(4).build((2, 9, 4))
    with pytest.raises(ValueError, match=r"`norm_groups` must divide .*norm_groups=4, channels=6"):
        ConvBNAct(6, norm="group", norm_groups=4)(_x())


# --- the same blocks written with plain Keras layers (keras.applications style) ---------------

def _plain_inverted_residual(x, filters, expansion, strides):
    c, inp = x.shape[-1], x
    if expansion > 1:
        x = keras.layers.Conv2D(c * expansion, 1, use_bias=False)(x)
        x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(epsilon=1e-3)(x))
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(epsilon=1e-3)(x))
    x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3)(x)
    return keras.layers.Add()([inp, x]) if strides == 1 and c == filters else x


def _plain_separable(x, filters, expansion, strides):
    x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(epsilon=1e-3)(x))
    x = keras.layers.Conv2D(filters, 1, use_bias=False)(x)
    return keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(epsilon=1e-3)(x))


@pytest.mark.parametrize("ours, plain, filters, expansion, strides", [
    (lambda f, t, s: InvertedResidual(f, expansion=t, strides=s), _plain_inverted_residual,
     4, 6, 1),
    (lambda f, t, s: InvertedResidual(f, expansion=t, strides=s), _plain_inverted_residual,
     8, 1, 2),
    (lambda f, t, s: DepthwiseSeparableConv(f, strides=s), _plain_separable, 8, 1, 2),
])
def test_mobilenet_blocks_equal_plain_keras_layers(ours, plain, filters, expansion, strides):
    x = _x((2, 8, 8, 4))
    inputs = keras.Input((8, 8, 4))
    layer = ours(filters, expansion, strides)
    model = keras.Model(inputs, layer(inputs))
    randomize_batch_norms(layer, np.random.default_rng(5))
    reference = keras.Model(inputs, plain(inputs, filters, expansion, strides))
    reference.set_weights(model.get_weights())  # same weights, same order
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(reference(x)), atol=1e-5)


@pytest.fixture(scope="module")
def mobilenet_v2():
    app = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None,
                                         include_top=False)
    randomize_batch_norms(app, np.random.default_rng(7))
    return app


@pytest.fixture(scope="module")
def mobilenet_v1():
    app = keras.applications.MobileNet(input_shape=(32, 32, 3), weights=None, include_top=False)
    randomize_batch_norms(app, np.random.default_rng(8))
    return app


@pytest.mark.parametrize("prefix, previous, filters, expansion, strides", [
    ("expanded_conv", "Conv1_relu", 16, 1, 1),  # expansion 1: no expand conv, no residual
    ("block_1", "expanded_conv_project_BN", 24, 6, 2),  # stride 2 (ZeroPadding2D + valid)
    ("block_2", "block_1_project_BN", 24, 6, 1),  # residual
])
def test_inverted_residual_equals_keras_applications_mobilenet_v2_block(
        mobilenet_v2, prefix, previous, filters, expansion, strides):
    app = mobilenet_v2
    last = app.get_layer(f"{prefix}_add" if prefix == "block_2" else f"{prefix}_project_BN")
    probe = keras.Model(app.input, [app.get_layer(previous).output, last.output])
    block_in, block_out = probe(_x((2, 32, 32, 3)) * 10)
    layer = InvertedResidual(filters, expansion=expansion, strides=strides)
    layer.build(block_in.shape)
    names = ([f"{prefix}_expand", f"{prefix}_expand_BN"] if expansion > 1 else []) + [
        f"{prefix}_depthwise", f"{prefix}_depthwise_BN", f"{prefix}_project",
        f"{prefix}_project_BN"]
    layer.set_weights([w for n in names for w in app.get_layer(n).get_weights()])
    np.testing.assert_allclose(np.asarray(layer(block_in)), np.asarray(block_out), atol=1e-4)


@pytest.mark.parametrize("block, previous, filters, strides", [
    (1, "conv1_relu", 64, 1), (2, "conv_pw_1_relu", 128, 2)])
def test_depthwise_separable_equals_keras_applications_mobilenet_block(
        mobilenet_v1, block, previous, filters, strides):
    app = mobilenet_v1
    probe = keras.Model(app.input, [app.get_layer(previous).output,
                                    app.get_layer(f"conv_pw_{block}_relu").output])
    block_in, block_out = probe(_x((2, 32, 32, 3)) * 10)
    layer = DepthwiseSeparableConv(filters, strides=strides)
    layer.build(block_in.shape)
    names = [f"conv_dw_{block}", f"conv_dw_{block}_bn", f"conv_pw_{block}", f"conv_pw_{block}_bn"]
    layer.set_weights([w for n in names for w in app.get_layer(n).get_weights()])
    np.testing.assert_allclose(np.asarray(layer(block_in)), np.asarray(block_out), atol=1e-4)
