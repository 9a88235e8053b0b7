"""Tests of kcv.layers.DenseUpsampling (DUC): depth-to-space of the convolution, checked
against TF's built-in and against the index formula in NumPy."""

import numpy as np
import pytest
import tensorflow as tf
from _numpy_conv import conv2d

from kcv.layers import DenseUpsampling

from kcv_testing import check_layer


def _x(shape=(2, 5, 6, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_check_layer():
    check_layer(lambda: DenseUpsampling(filters=3, upsample_factor=4), _x((2, 4, 4, 3)))


@pytest.mark.parametrize("filters, r", [(3, 2), (1, 4), (5, 1)])
def test_equals_depth_to_space_of_the_conv(filters, r):
    x = _x()
    layer = DenseUpsampling(filters, r)
    got = np.asarray(layer(x))
    assert got.shape == (2, 5 * r, 6 * r, filters)
    assert layer.conv.kernel.shape == (3, 3, 3, r * r * filters)
    expected = tf.nn.depth_to_space(layer.conv(x), r) if r > 1 else layer.conv(x)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize("filters, r, dilation_rate", [(2, 3, 1), (3, 2, 2)])
def test_matches_numpy_index_formula(filters, r, dilation_rate):
    # out[n, h*r + i, w*r + j, l] = conv(x)[n, h, w, (i*r + j)*L + l]
    x = _x()
    layer = DenseUpsampling(filters, r, dilation_rate=dilation_rate)
    got = np.asarray(layer(x))
    y = conv2d(x, np.asarray(layer.conv.kernel), dilation=dilation_rate,
               bias=np.asarray(layer.conv.bias))
    n, h, w, _ = y.shape
    expected = np.empty((n, h * r, w * r, filters))
    for i in range(r):
        for j in range(r):
            block = y[..., (i * r + j) * filters:(i * r + j + 1) * filters]
            expected[:, i::r, j::r, :] = block
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_unknown_spatial_size_output_shape():
    layer = DenseUpsampling(4, 8)
    assert layer.compute_output_shape((None, None, 7, 3)) == (None, None, 56, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"filters": 0, "upsample_factor": 2}, r"`filters` must be a positive integer"),
    ({"filters": 2, "upsample_factor": 1.5}, r"`upsample_factor` must be a positive integer. "
                                             r"Received: upsample_factor=1.5"),
    ({"filters": 2, "upsample_factor": 2, "dilation_rate": 0}, r"`dilation_rate` must be"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenseUpsampling(**kwargs)
