"""FPN neck: a hand-checked identity case, a NumPy reference with odd sizes, layer checks."""

import os
import sys

import numpy as np
import pytest

from kcv.models.detection import FPN

from kcv_testing import check_layer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "layers"))
from _numpy_conv import conv2d  # noqa: E402


def _nearest(x, size):
    """PyTorch F.interpolate(mode="nearest"): source index floor(i * in / out)."""
    rows = (np.arange(size[0]) * x.shape[1]) // size[0]
    cols = (np.arange(size[1]) * x.shape[2]) // size[1]
    return x[:, rows][:, :, cols]


def _np_fpn(inputs, fpn):
    lat = [(c.kernel.numpy(), c.bias.numpy()) for c in fpn.lateral_convs]
    out = [(c.kernel.numpy(), c.bias.numpy()) for c in fpn.output_convs]
    inner = conv2d(inputs[-1], *lat[-1][:1], bias=lat[-1][1])
    results = [conv2d(inner, out[-1][0], bias=out[-1][1])]
    for i in range(len(inputs) - 2, -1, -1):
        lateral = conv2d(inputs[i], lat[i][0], bias=lat[i][1])
        inner = lateral + _nearest(inner, lateral.shape[1:3])
        results.insert(0, conv2d(inner, out[i][0], bias=out[i][1]))
    results.append(results[-1][:, ::2, ::2])
    return results


def test_identity_weights_by_hand():
    fpn = FPN(1)
    c2 = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    c3 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    fpn([c2, c3])
    for conv in fpn.lateral_convs:
        conv.kernel.assign(np.ones((1, 1, 1, 1)))
    for conv in fpn.output_convs:
        k = np.zeros((3, 3, 1, 1))
        k[1, 1] = 1
        conv.kernel.assign(k)
    p2, p3, p4 = (o.numpy()[0, ..., 0] for o in fpn([c2, c3]))
    np.testing.assert_array_equal(p3, [[1, 2], [3, 4]])
    up = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    np.testing.assert_array_equal(p2, np.arange(16).reshape(4, 4) + up)
    np.testing.assert_array_equal(p4, [[1]])  # max_pool(kernel 1, stride 2) of P3


def test_numpy_reference_odd_sizes():
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(2, 13, 11, 3)), rng.normal(size=(2, 7, 6, 5)),
              rng.normal(size=(2, 4, 3, 4))]
    inputs = [x.astype(np.float32) for x in inputs]
    fpn = FPN(6)
    got = fpn(inputs)
    assert [tuple(g.shape) for g in got] == [(2, 13, 11, 6), (2, 7, 6, 6), (2, 4, 3, 6),
                                             (2, 2, 2, 6)]
    assert [tuple(s) for s in fpn.compute_output_shape([x.shape for x in inputs])] == [
        tuple(g.shape) for g in got]
    for g, r in zip(got, _np_fpn(inputs, fpn)):
        np.testing.assert_allclose(g.numpy(), r, atol=1e-5)
    kernel = fpn.lateral_convs[1].kernel.numpy()  # kaiming_uniform(a=1): bound sqrt(3 / fan_in)
    assert np.abs(kernel).max() <= np.sqrt(3 / 5) and np.abs(kernel).max() > 0.5 * np.sqrt(3 / 5)


@pytest.mark.slow
def test_layer_checks():
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(2, 8, 8, 3)).astype(np.float32),
              rng.normal(size=(2, 4, 4, 5)).astype(np.float32)]
    check_layer(FPN(4), inputs)


def test_errors():
    with pytest.raises(ValueError, match="`filters` must be a positive int. Received: filters=0"):
        FPN(0)
    with pytest.raises(ValueError, match="FPN expects a list of feature maps"):
        FPN(4).build((None, 8, 8, 3))
