"""Tests of kcv.layers.normalization against NumPy statistics over the axes each kind is defined
on (Wu & He, "Group Normalization", ECCV 2018, Fig. 2; Ba et al., "Layer Normalization", 2016)."""

import keras
import numpy as np
import pytest

from kcv.layers import ConvBNAct, normalization

from kcv_testing import check_layer

_EPS = 1e-3  # normalization()'s default epsilon


def _x(shape=(3, 5, 4, 8), seed=0):
    # Per-pixel and per-channel offsets and scales, so that statistics over different axes differ.
    rng = np.random.default_rng(seed)
    n, h, w, c = shape
    offsets = rng.normal(0, 2, (n, h, w, 1)) + rng.normal(0, 2, (1, 1, 1, c))
    return (rng.normal(size=shape) * rng.uniform(0.5, 3, (n, h, w, 1)) + offsets).astype("float32")


def _numpy_norm(x, kind, groups=None):
    """Normalizes `x` [N, H, W, C] (float64) over the axes of `kind`, gamma 1, beta 0."""
    x = np.asarray(x, np.float64)
    n, h, w, c = x.shape
    if kind == "batch":
        axes, xs = (0, 1, 2), x
    elif kind == "layer":  # per image over (H, W, C)
        axes, xs = (1, 2, 3), x
    elif kind == "instance":  # per image and channel over (H, W)
        axes, xs = (1, 2), x
    elif kind == "group":  # per image and group over (H, W, C / groups)
        axes, xs = (1, 2, 4), x.reshape(n, h, w, groups, c // groups)
    elif kind == "pixel":  # per pixel over C: what "layer" must NOT compute on images
        axes, xs = (3,), x
    mean = xs.mean(axis=axes, keepdims=True)
    var = xs.var(axis=axes, keepdims=True)
    return ((xs - mean) / np.sqrt(var + _EPS)).reshape(x.shape)


@pytest.mark.parametrize("kind, groups", [("batch", None), ("layer", None), ("instance", None),
                                          ("group", 4), ("group", 1), ("group", 8)])
def test_normalization_matches_numpy(kind, groups):
    x = _x()
    layer = normalization(kind, groups=groups or 32, channels=8)
    got = np.asarray(layer(x, training=True))  # training: batch norm uses batch statistics
    np.testing.assert_allclose(got, _numpy_norm(x, kind, groups), atol=1e-4)


def test_layer_norm_statistics_are_per_image_over_hwc_not_per_pixel():
    x = _x()
    got = np.asarray(normalization("layer")(x), np.float64)
    # Each image has mean 0 and variance var / (var + eps) over all its H * W * C values.
    var = x.astype(np.float64).var(axis=(1, 2, 3))
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(got.var(axis=(1, 2, 3)), var / (var + _EPS), rtol=1e-4)
    # Per-pixel statistics over C differ on this input: those of per-pixel layer norm would
    # give every pixel mean 0; per-image normalization keeps the differences between pixels.
    assert np.abs(got.mean(axis=-1)).max() > 0.5
    assert np.abs(got - _numpy_norm(x, "pixel")).max() > 0.5


def test_layer_norm_learned_scale_and_offset_are_per_channel():
    x = _x()
    layer = normalization("layer")
    layer.build(x.shape)
    rng = np.random.default_rng(3)
    gamma, beta = rng.uniform(0.5, 2, 8), rng.normal(size=8)
    layer.set_weights([gamma, beta])
    np.testing.assert_allclose(np.asarray(layer(x)), _numpy_norm(x, "layer") * gamma + beta,
                               atol=1e-4)


@pytest.mark.parametrize("kind", ["layer", "instance", "group"])
def test_conv_bn_act_normalizes_its_convolution_like_numpy(kind):
    x = _x((2, 6, 6, 3))
    layer = ConvBNAct(8, norm=kind, norm_groups=4, activation=None)
    got = np.asarray(layer(x))
    assert not layer.conv.use_bias  # a bias before the normalization would cancel out
    conv = np.asarray(layer.conv(x))  # the convolution alone, then NumPy's normalization
    np.testing.assert_allclose(got, _numpy_norm(conv, kind, groups=4), atol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "layernorm"}, r"`norm` must be one of .*norm='layernorm'"),
    ({"kind": "group", "groups": 0}, r"`groups` must be a positive integer. Received: groups=0"),
    ({"kind": "group", "groups": 3, "channels": 8},
     r"`groups` must divide .*Received: groups=3, channels=8"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        normalization(**kwargs)


def test_none_gives_no_layer_and_kinds_are_keras_layers():
    assert normalization(None) is None
    assert isinstance(normalization("layer"), keras.layers.GroupNormalization)
    assert isinstance(normalization("batch"), keras.layers.BatchNormalization)


def test_check_layer_with_layer_norm():
    # GroupNormalization(groups=1) in a block: .keras reload, mixed precision, XLA, TFLite.
    check_layer(lambda: ConvBNAct(6, norm="layer"), _x((2, 8, 8, 4)))
