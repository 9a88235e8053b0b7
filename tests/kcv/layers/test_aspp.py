"""Tests of kcv.layers.ASPP: branch count and shapes, a NumPy forward pass, batch size 1,
TFLite at other static sizes, unknown spatial size."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _numpy_conv import conv_bn_act, randomize_batch_norms

from kcv.layers import ASPP

from kcv_testing import check_layer, check_tflite


def _x(shape=(2, 9, 11, 4), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_check_layer():
    check_layer(lambda: ASPP(filters=4, rates=(1, 2, 3)), _x((2, 8, 8, 3)))


def test_tflite_other_static_size_and_default_rates():
    # A non-square size with rates larger than the map (DeepLab at small inputs)
    x = _x((1, 10, 14, 3))
    inputs = keras.Input((10, 14, 3))
    model = keras.Model(inputs, ASPP(filters=4)(inputs))
    check_tflite(model, [x])


@pytest.mark.parametrize("rates", [(6, 12, 18), (2,), (1, 3, 5, 7)])
def test_branch_count_and_shapes(rates):
    x = _x()
    layer = ASPP(filters=5, rates=rates)
    y = layer(x)
    assert y.shape == (2, 9, 11, 5)
    assert layer.conv1x1.conv.kernel.shape == (1, 1, 4, 5)
    assert [b.conv.dilation_rate for b in layer.atrous] == [(r, r) for r in rates]
    assert all(b.conv.kernel.shape == (3, 3, 4, 5) for b in layer.atrous)
    assert layer.pool_conv.conv.kernel.shape == (1, 1, 4, 5)
    # 1x1 + one per rate + image pooling, concatenated before the projection
    assert layer.project.conv.kernel.shape == (1, 1, (len(rates) + 2) * 5, 5)
    assert all(isinstance(u.norm_layer, keras.layers.BatchNormalization)
               for u in [layer.conv1x1, *layer.atrous, layer.pool_conv, layer.project])


def _aspp_numpy(layer, x):
    branches = [conv_bn_act(x, layer.conv1x1)] + [conv_bn_act(x, b) for b in layer.atrous]
    pooled = conv_bn_act(x.mean(axis=(1, 2), keepdims=True), layer.pool_conv)
    branches.append(np.broadcast_to(pooled, x.shape[:3] + (pooled.shape[-1],)))
    return conv_bn_act(np.concatenate(branches, axis=-1), layer.project)


@pytest.mark.parametrize("rates", [(6, 12, 18), (1, 2)])
def test_matches_numpy(rates):
    x = _x()
    layer = ASPP(filters=3, rates=rates, dropout=0.5)
    layer(x)
    randomize_batch_norms(layer, np.random.default_rng(3))
    got = np.asarray(layer(x, training=False))  # dropout is off at inference
    np.testing.assert_allclose(got, _aspp_numpy(layer, x), atol=1e-4)


def test_batch_size_one():
    x = _x((1, 6, 6, 4))
    layer = ASPP(filters=3, rates=(1, 2))
    layer(x)
    randomize_batch_norms(layer, np.random.default_rng(3))
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), _aspp_numpy(layer, x),
                               atol=1e-4)
    y = np.asarray(layer(x, training=True))  # zero batch variance on the pooled 1x1 map
    assert np.all(np.isfinite(y))


def test_unknown_spatial_size():
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, ASPP(filters=3, rates=(1, 2))(inputs))
    for shape in [(1, 5, 7, 4), (2, 8, 6, 4)]:
        x = _x(shape)
        assert model(x).shape == shape[:3] + (3,)
        fn = tf.function(lambda t: model(t, training=False),
                         input_signature=[tf.TensorSpec((None, None, None, 4))])
        np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(model(x)), atol=1e-5)


def test_group_norm_variant_matches_config():
    layer = ASPP(filters=8, rates=(1,), norm="group", norm_groups=4)
    assert layer(_x()).shape == (2, 9, 11, 8)
    assert isinstance(layer.pool_conv.norm_layer, keras.layers.GroupNormalization)


@pytest.mark.parametrize("kwargs, match", [
    ({"rates": (6, 0)}, r"`rates` must be a non-empty sequence of positive integers. "
                        r"Received: rates=\(6, 0\)"),
    ({"rates": ()}, r"`rates` must be a non-empty"),
    ({"rates": 6}, r"Received: rates=6"),
    ({"filters": -1}, r"`filters` must be a positive integer"),
    ({"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
    ({"norm": "bn"}, r"`norm` must be one of"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ASPP(**kwargs)
