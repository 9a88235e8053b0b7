"""Tests of kcv.layers.HybridDilatedConv: NumPy forward pass, the receptive field of an impulse
(contiguous for HDC rates), and the refusal of gridding rates."""

import numpy as np
import pytest
from _numpy_conv import conv_bn_act, randomize_batch_norms

from kcv.layers import HybridDilatedConv

from kcv_testing import check_layer


def _x(shape=(2, 12, 11, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_check_layer():
    check_layer(lambda: HybridDilatedConv(4, rates=(1, 2, 3)), _x((2, 8, 8, 3)))


@pytest.mark.parametrize("rates", [(1, 2, 5), (1, 2, 3, 1)])
def test_matches_numpy(rates):
    x = _x()
    layer = HybridDilatedConv(4, rates=rates)
    layer(x)
    randomize_batch_norms(layer, np.random.default_rng(2))
    got = np.asarray(layer(x, training=False))
    assert [c.conv.dilation_rate for c in layer.convs] == [(r, r) for r in rates]
    expected = x
    for unit in layer.convs:
        expected = conv_bn_act(expected, unit)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_impulse_response_is_a_contiguous_square():
    # (1, 2, 5) with 3x3 kernels of ones, no norm, linear: an impulse at the centre of a 21x21
    # map reaches every offset in [-8, 8]^2 (1 + 2 + 5 = 8 to each side), and nothing further.
    layer = HybridDilatedConv(1, rates=(1, 2, 5), norm=None, activation=None,
                              kernel_initializer="ones")
    x = np.zeros((1, 21, 21, 1), "float32")
    x[0, 10, 10, 0] = 1.0
    layer.build(x.shape)
    for unit in layer.convs:
        unit.conv.bias.assign([0.0])
    reached = np.asarray(layer(x))[0, :, :, 0] > 0
    expected = np.zeros((21, 21), bool)
    expected[2:19, 2:19] = True
    np.testing.assert_array_equal(reached, expected)


@pytest.mark.parametrize("rates, common", [((2, 4, 6), 2), ((2, 2, 2), 2), ((3, 6), 3), ((2,), 2)])
def test_common_factor_is_refused_with_gridding_explanation(rates, common):
    with pytest.raises(ValueError, match=(
            rf"must not share a common factor > 1 \(gridding\).*grid of step {common}.*"
            rf"disjoint pixel sets.*Received: rates=")):
        HybridDilatedConv(4, rates=rates)


def test_rates_leaving_holes_are_refused():
    # 3x3 at rate 1 reads {-1, 0, 1}; at rate 5 {-5, 0, 5}; the sums miss +-2 and +-3.
    with pytest.raises(ValueError, match=r"holes .*offsets \[-3, -2, 2, 3\]"):
        HybridDilatedConv(4, rates=(1, 5))


@pytest.mark.parametrize("rates", [(1,), (1, 2, 5), (1, 2, 5, 1, 2, 5), (1, 2, 3), (1, 3)])
def test_hdc_rates_are_accepted(rates):
    assert HybridDilatedConv(2, rates=rates)(_x()).shape == (2, 12, 11, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"rates": (1, 0)}, r"`rates` must be a non-empty sequence of positive integers"),
    ({"rates": []}, r"`rates` must be a non-empty"),
    ({"kernel_size": 4}, r"`kernel_size` must be odd. Received: kernel_size=4"),
    ({"norm": "weird"}, r"`norm` must be one of"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HybridDilatedConv(4, **kwargs)
