"""Tests of kcv.layers.attention (CBAM) against NumPy and a hand-computed constant-input case."""

import numpy as np
import pytest
from _numpy_conv import conv2d

from kcv.layers import CBAM, ChannelAttention, SpatialAttention

from kcv_testing import check_layer


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _x(shape=(2, 6, 5, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("factory", [
    lambda: ChannelAttention(reduction_ratio=4),
    lambda: SpatialAttention(kernel_size=3),
    lambda: CBAM(reduction_ratio=4, kernel_size=5),
], ids=["ChannelAttention", "SpatialAttention", "CBAM"])
def test_check_layer(factory):
    check_layer(factory, _x((2, 6, 6, 8)))


def _channel_numpy(layer, x):
    w0, b0 = np.asarray(layer.mlp_hidden.kernel), np.asarray(layer.mlp_hidden.bias)
    w1, b1 = np.asarray(layer.mlp_output.kernel), np.asarray(layer.mlp_output.bias)

    def mlp(v):
        return np.maximum(v @ w0 + b0, 0) @ w1 + b1

    att = _sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    return x * att[:, None, None, :]


def _spatial_numpy(layer, x):
    stats = np.concatenate([x.mean(-1, keepdims=True), x.max(-1, keepdims=True)], -1)
    att = _sigmoid(conv2d(stats, np.asarray(layer.conv.kernel), bias=np.asarray(layer.conv.bias)))
    return x * att


@pytest.mark.parametrize("channels, ratio, hidden", [(8, 4, 2), (8, 16, 1), (6, 2, 3)])
def test_channel_attention_matches_numpy_mlp(channels, ratio, hidden):
    x = _x((2, 5, 4, channels))
    layer = ChannelAttention(reduction_ratio=ratio)
    got = np.asarray(layer(x))
    assert layer.mlp_hidden.kernel.shape == (channels, hidden)  # max(1, C // r) hidden units
    np.testing.assert_allclose(got, _channel_numpy(layer, x), atol=1e-5)


@pytest.mark.parametrize("kernel_size", [7, 3])
def test_spatial_attention_matches_numpy(kernel_size):
    x = _x((2, 9, 8, 5))
    layer = SpatialAttention(kernel_size=kernel_size)
    layer.build(x.shape)
    layer.conv.bias.assign([0.3])
    got = np.asarray(layer(x))
    assert layer.conv.kernel.shape == (kernel_size, kernel_size, 2, 1)
    np.testing.assert_allclose(got, _spatial_numpy(layer, x), atol=1e-5)


def test_cbam_is_channel_then_spatial():
    x = _x()
    layer = CBAM(reduction_ratio=4)
    got = np.asarray(layer(x))
    expected = _spatial_numpy(layer.spatial_attention, _channel_numpy(layer.channel_attention, x))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cbam_constant_input_hand_computed():
    # Constant input 1 over 2 channels; MLP 2 -> 1 -> 2 with W0 = [[1], [1]], W1 = [[1, -1]],
    # zero biases: both pooled vectors are [1, 1], the MLP gives [2, -2] for each, so
    # Mc = [sigmoid(4), sigmoid(-4)] and F' = Mc everywhere. Channel mean of F' is exactly 0.5
    # (sigmoid(4) + sigmoid(-4) = 1), channel max is sigmoid(4). A 7x7 kernel of 0.1 with zero
    # padding on the 9x9 map sums 0.1 * (0.5 + sigmoid(4)) over the in-image taps: a count of
    # n_i * n_j with n = [4, 5, 6, 7, 7, 7, 6, 5, 4] along each axis.
    layer = CBAM(reduction_ratio=16, kernel_size=7)
    x = np.ones((1, 9, 9, 2), "float32")
    layer.build(x.shape)
    ca, sa = layer.channel_attention, layer.spatial_attention
    ca.mlp_hidden.set_weights([np.array([[1.0], [1.0]]), np.zeros(1)])
    ca.mlp_output.set_weights([np.array([[1.0, -1.0]]), np.zeros(2)])
    sa.conv.set_weights([np.full((7, 7, 2, 1), 0.1), np.zeros(1)])
    got = np.asarray(layer(x))[0]
    s4 = 1 / (1 + np.exp(-4.0))
    n = np.array([4, 5, 6, 7, 7, 7, 6, 5, 4])
    ms = _sigmoid(0.1 * (0.5 + s4) * np.outer(n, n))
    np.testing.assert_allclose(got[..., 0], s4 * ms, rtol=1e-6)
    np.testing.assert_allclose(got[..., 1], (1 - s4) * ms, rtol=1e-5)
    assert np.isclose(got[4, 4, 0], s4 * _sigmoid(0.1 * 49 * (0.5 + s4)))


def test_attention_maps_are_in_unit_interval_and_shaped():
    x = _x()
    ca, sa = ChannelAttention(4), SpatialAttention()
    ca(x), sa(x)
    mc, ms = np.asarray(ca.attention(x)), np.asarray(sa.attention(x))
    assert mc.shape == (2, 1, 1, 8) and ms.shape == (2, 6, 5, 1)
    assert np.all((mc > 0) & (mc < 1)) and np.all((ms > 0) & (ms < 1))


@pytest.mark.parametrize("make, match", [
    (lambda: ChannelAttention(reduction_ratio=0), r"`reduction_ratio` must be a positive"),
    (lambda: SpatialAttention(kernel_size=2.5), r"`kernel_size` must be a positive integer"),
    (lambda: CBAM(activation="bogus"), r"`activation` must be .*activation='bogus'"),
])
def test_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_rank_error():
    with pytest.raises(ValueError, match=r"CBAM expects NHWC inputs of rank 4"):
        CBAM().build((2, 8, 8))
