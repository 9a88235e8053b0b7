"""custom_ops.roi_pool against a NumPy port of the Fast R-CNN definition (torchvision's loops)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import custom_ops
from custom_ops.roi_pool import _roi_pool_reference

from kcv_testing import check_op


def _c_round(v):
    """C `round()`: half away from zero."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def np_roi_pool(features, boxes, box_indices, out_size, scale, dy=None):
    """torchvision roi_pool_forward/backward with loops; boxes [y1, x1, y2, x2]."""
    _, height, width, channels = features.shape
    oh, ow = out_size
    out = np.zeros((len(boxes), oh, ow, channels))
    grad = np.zeros(features.shape)
    for k, ((y1, x1, y2, x2), b) in enumerate(zip(boxes, box_indices)):
        sh, sw = _c_round(y1 * scale), _c_round(x1 * scale)
        eh, ew = _c_round(y2 * scale), _c_round(x2 * scale)
        roi_h, roi_w = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = roi_h / oh, roi_w / ow
        for p in range(oh):
            for q in range(ow):
                h0 = min(max(math.floor(p * bh) + sh, 0), height)
                h1 = min(max(math.ceil((p + 1) * bh) + sh, 0), height)
                w0 = min(max(math.floor(q * bw) + sw, 0), width)
                w1 = min(max(math.ceil((q + 1) * bw) + sw, 0), width)
                if h1 <= h0 or w1 <= w0:
                    continue  # empty bin: 0, no gradient
                for c in range(channels):
                    best, arg = -np.inf, None
                    for r in range(h0, h1):
                        for s in range(w0, w1):
                            if features[b, r, s, c] > best:
                                best, arg = features[b, r, s, c], (r, s)
                    out[k, p, q, c] = best
                    if dy is not None:
                        grad[b, arg[0], arg[1], c] += dy[k, p, q, c]
    return out, grad


_RNG = np.random.default_rng(0)
_FEATURES = _RNG.normal(size=(2, 7, 9, 3))
_BOXES_PX = np.array([
    [1.0, 2.0, 5.5, 7.25],
    [-3.0, -2.5, 4.0, 3.0],
    [4.0, 6.0, 11.0, 13.0],
    [2.3, 3.1, 2.6, 3.2],
    [3.0, 3.0, 3.0, 3.0],
    [5.0, 6.0, 2.0, 1.0],
    [-1.0, -1.0, 8.0, 10.0],
    [20.0, 20.0, 30.0, 30.0],
    [0.5, 1.5, 2.5, 6.5],  # exact halves: C round goes away from zero, tf.round would not
    [0.0, 0.0, 6.0, 8.0],
])
_BOX_INDICES = np.array([0, 1, 0, 1, 0, 1, 1, 0, 1, 0], np.int32)


@pytest.mark.parametrize("out_size", [(2, 2), (3, 4), (1, 1)])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_forward_backward_match_numpy_definition(out_size, scale):
    boxes = _BOXES_PX / scale
    dy = _RNG.normal(size=(len(boxes),) + out_size + (3,))
    want, want_grad = np_roi_pool(_FEATURES, boxes, _BOX_INDICES, out_size, scale, dy)
    feats = tf.constant(_FEATURES)
    for fn in (custom_ops.roi_pool, _roi_pool_reference):
        with tf.GradientTape() as tape:
            tape.watch(feats)
            got = fn(feats, boxes, _BOX_INDICES, out_size, scale)
            loss = tf.reduce_sum(got * dy)
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6, rtol=0)
        np.testing.assert_allclose(tape.gradient(loss, feats).numpy(), want_grad, atol=1e-6,
                                   rtol=0)


def test_ties_route_gradient_to_first_maximum_in_row_major_order():
    feats = np.zeros((1, 6, 7, 2))  # all equal: every bin ties
    feats[0, 4, 1, 1] = 5.0
    feats[0, 2, 5, 1] = 5.0
    dy = _RNG.normal(size=(3, 2, 3, 2))
    boxes = np.array([[0.0, 0.0, 5.0, 6.0], [1.0, 0.0, 5.0, 6.0], [2.0, 1.0, 4.0, 6.0]])
    idx = np.zeros(3, np.int32)
    want, want_grad = np_roi_pool(feats, boxes, idx, (2, 3), 1.0, dy)
    f = tf.constant(feats)
    with tf.GradientTape() as tape:
        tape.watch(f)
        got = custom_ops.roi_pool(f, boxes, idx, (2, 3))
        loss = tf.reduce_sum(got * dy)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    np.testing.assert_allclose(tape.gradient(loss, f).numpy(), want_grad, atol=1e-12)


def test_hand_computed_seed_note_example():
    # Seed note: a 5 x 7 RoI pooled to 2 x 2 takes rows [0:3] / [2:5] and columns [0:4] / [3:7].
    feats = np.arange(5 * 7, dtype=np.float64).reshape(1, 5, 7, 1)
    feats = feats[:, ::-1, ::-1]  # maximum at the top-left of each bin
    got = custom_ops.roi_pool(feats.copy(), [[0.0, 0.0, 4.0, 6.0]], [0], 2).numpy()[0, :, :, 0]
    f = feats[0, :, :, 0]
    want = [[f[0:3, 0:4].max(), f[0:3, 3:7].max()], [f[2:5, 0:4].max(), f[2:5, 3:7].max()]]
    np.testing.assert_array_equal(got, want)
    assert want == [[34.0, 31.0], [20.0, 17.0]]


def test_empty_boxes_and_float32():
    out = custom_ops.roi_pool(_FEATURES.astype(np.float32), np.zeros((0, 4), np.float32),
                              np.zeros((0,), np.int32), 3)
    assert out.shape == (0, 3, 3, 3) and out.dtype == tf.float32
    want, _ = np_roi_pool(_FEATURES, _BOXES_PX, _BOX_INDICES, (2, 3), 0.5)
    got = custom_ops.roi_pool(_FEATURES.astype(np.float32), _BOXES_PX.astype(np.float32),
                              _BOX_INDICES, (2, 3), 0.5)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def _roi_pool_inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    return dict(features=rng.normal(size=(2, 4, 5, 1)).astype(dtype),  # distinct values:
                boxes=rng.uniform(-1.0, 6.0, size=(4, 4)).astype(dtype),  # argmax locally
                box_indices=np.array([0, 1, 1, 0], np.int32),  # constant
                output_size=2, spatial_scale=0.8)


def test_op_contract():
    """Against the autodiff reference in float32/float64, gradient check over three seeds,
    tf.function and XLA, and every error message (static ValueErrors, run-time checks)."""
    check_op(custom_ops.roi_pool, _roi_pool_reference, _roi_pool_inputs,
             grad_args=["features"],  # no gradient to boxes (rounded coordinates)
             error_cases=[
                 (dict(features=np.zeros((7, 9, 3))), ValueError,
                  r"`features` must be a rank-4.*\(7, 9, 3\)"),
                 (dict(boxes=np.zeros((2, 3))), ValueError,
                  r"`boxes` must have shape \[K, 4\].*\(2, 3\)"),
                 (dict(box_indices=np.zeros((2, 1), np.int32)), ValueError,
                  r"`box_indices` must have shape \[K\]"),
                 (dict(output_size=(0, 2)), ValueError, r"`output_size` must be.*\(0, 2\)"),
                 (dict(spatial_scale=-1.0), ValueError, r"`spatial_scale` must be.*-1.0"),
                 (dict(boxes=np.array([[0.0, np.nan, 2.0, 1.0]]), box_indices=np.array([0])),
                  tf.errors.InvalidArgumentError, "`boxes` must be finite"),
                 (dict(boxes=np.array([[0.0, 0.0, 1.0, 1.0]]), box_indices=np.array([5])),
                  tf.errors.InvalidArgumentError, "`box_indices` must be < N"),
             ])
