"""custom_ops.boxes against NumPy references written from the papers' definitions."""

import math

import numpy as np
import pytest
import tensorflow as tf

from custom_ops import boxes as B

from kcv_testing import check_gradients


def _np_terms(a, b):
    """Per-pair quantities of two yxyx boxes, straight from the definitions."""
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    iou = inter / union if union > 0 else 0.0
    ch = max(a[2], b[2]) - min(a[0], b[0])
    cw = max(a[3], b[3]) - min(a[1], b[1])
    rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    return iou, union, ch, cw, rho2


def np_iou(a, b):
    return _np_terms(a, b)[0]


def np_giou(a, b):  # Rezatofighi et al., Algorithm 1
    iou, union, ch, cw, _ = _np_terms(a, b)
    c = ch * cw
    return iou - (c - union) / c


def np_diou(a, b):  # Zheng et al., eq. (6)
    iou, _, ch, cw, rho2 = _np_terms(a, b)
    return iou - rho2 / (ch**2 + cw**2)


def np_ciou(a, b):  # Zheng et al., eqs. (8)-(11)
    iou, _, ch, cw, rho2 = _np_terms(a, b)
    v = 4 / math.pi**2 * (math.atan((b[3] - b[1]) / (b[2] - b[0]))
                          - math.atan((a[3] - a[1]) / (a[2] - a[0]))) ** 2
    alpha = v / (1 - iou + v) if (1 - iou + v) > 0 else 0.0
    return iou - rho2 / (ch**2 + cw**2) - alpha * v


def random_boxes(rng, n, scale=10.0):
    yx = rng.uniform(0, scale, (n, 2))
    hw = rng.uniform(0.5, scale / 2, (n, 2))
    return np.concatenate([yx, yx + hw], 1)


FUNCS = [(B.box_iou, np_iou), (B.generalized_box_iou, np_giou),
         (B.distance_box_iou, np_diou), (B.complete_box_iou, np_ciou)]


@pytest.mark.parametrize("fn,ref", FUNCS, ids=["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pairwise_and_aligned_match_numpy(fn, ref, dtype):
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7).astype(dtype), random_boxes(rng, 5).astype(dtype)
    expected = np.array([[ref(x, y) for y in b] for x in a])
    got = fn(a, b).numpy()
    assert got.shape == (7, 5) and got.dtype == dtype
    np.testing.assert_allclose(got, expected, atol=1e-5 if dtype == np.float32 else 1e-12)
    aligned = fn(a[:5].reshape(1, 5, 4), b.reshape(1, 5, 4), aligned=True).numpy()
    np.testing.assert_allclose(aligned[0], np.diag(expected[:5]), atol=1e-5)


def test_hand_computed_cases():
    unit, far = [[0.0, 0.0, 1.0, 1.0]], [[0.0, 2.0, 1.0, 3.0]]
    # Disjoint: IoU 0, enclosing box 1 x 3, union 2 -> GIoU = -1/3; centres 2 apart, diag^2 10.
    assert B.box_iou(unit, far).numpy()[0, 0] == 0.0
    np.testing.assert_allclose(B.generalized_box_iou(unit, far).numpy(), [[-1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(B.distance_box_iou(unit, far).numpy(), [[-0.4]], rtol=1e-6)
    # Same centre, 2x2 inside 4x4: IoU 1/4, no centre penalty, v = 0 (same aspect ratio).
    np.testing.assert_allclose(
        B.complete_box_iou([[0.0, 0.0, 4.0, 4.0]], [[1.0, 1.0, 3.0, 3.0]]).numpy(), [[0.25]])
    np.testing.assert_allclose(B.box_area([[1.0, 2.0, 4.0, 7.0], [0, 0, 0, 5]]).numpy(), [15.0, 0])


def test_zero_area_boxes_give_zero_iou_not_nan():
    z = [[1.0, 1.0, 1.0, 1.0]]
    for fn in (B.box_iou, B.generalized_box_iou, B.distance_box_iou, B.complete_box_iou):
        out = fn(z, z).numpy()
        assert np.all(np.isfinite(out)), fn.__name__
    assert B.box_iou(z, z).numpy()[0, 0] == 0.0


@pytest.mark.parametrize("fn", [B.box_iou, B.generalized_box_iou, B.distance_box_iou])
@pytest.mark.parametrize("seed", [1, 2])
def test_gradients_float64(fn, seed):
    # CIoU's gradient is not that of its value (alpha is frozen): see the next test.
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, 4), random_boxes(rng, 4)
    check_gradients(lambda x, y: fn(x, y, aligned=True), [a, b])


def test_ciou_alpha_has_no_gradient():
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 3), random_boxes(rng, 3)
    alpha0 = []
    for x, y in zip(a, b):
        iou = np_iou(x, y)
        v = 4 / math.pi**2 * (math.atan((y[3] - y[1]) / (y[2] - y[0]))
                              - math.atan((x[3] - x[1]) / (x[2] - x[0]))) ** 2
        alpha0.append(v / (1 - iou + v))

    def fixed_alpha(p):  # NumPy: IoU - rho^2/c^2 - alpha0 * v, alpha0 frozen
        total = 0.0
        for x, y, al in zip(a, p.reshape(-1, 4), alpha0):
            v = 4 / math.pi**2 * (math.atan((y[3] - y[1]) / (y[2] - y[0]))
                                  - math.atan((x[3] - x[1]) / (x[2] - x[0]))) ** 2
            total += np_diou(x, y) - al * v
        return total

    eps, flat = 1e-6, b.reshape(-1).copy()
    numeric = np.zeros_like(flat)
    for i in range(flat.size):
        up, dn = flat.copy(), flat.copy()
        up[i] += eps
        dn[i] -= eps
        numeric[i] = (fixed_alpha(up) - fixed_alpha(dn)) / (2 * eps)
    pred = tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch(pred)
        total = tf.reduce_sum(B.complete_box_iou(tf.constant(a), pred, aligned=True))
    np.testing.assert_allclose(tape.gradient(total, pred).numpy().reshape(-1), numeric, atol=1e-6)


def test_convert_format():
    yxyx = np.array([[10.0, 20.0, 30.0, 60.0]])
    expected = {"yxyx": yxyx, "xyxy": [[20.0, 10.0, 60.0, 30.0]], "xywh": [[20.0, 10.0, 40.0, 20.0]],
                "cxcywh": [[40.0, 20.0, 40.0, 20.0]]}
    for fmt, value in expected.items():
        np.testing.assert_allclose(B.convert_format(yxyx, "yxyx", fmt).numpy(), value)
        for other, other_value in expected.items():
            np.testing.assert_allclose(B.convert_format(value, fmt, other).numpy(), other_value)


def test_clip_boxes():
    out = B.clip_boxes([[-5.0, 2.0, 40.0, 70.0], [1.0, -1.0, 2.0, 3.0]], (32, 64)).numpy()
    np.testing.assert_array_equal(out, [[0, 2, 32, 64], [1, 0, 2, 3]])


def test_box_coder_matches_definition_and_round_trips():
    rng = np.random.default_rng(3)
    anchors, boxes = random_boxes(rng, 6), random_boxes(rng, 6)
    w = (10.0, 10.0, 5.0, 5.0)
    ah, aw = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    bh, bw = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    expected = np.stack([10 * ((boxes[:, 0] + boxes[:, 2]) - (anchors[:, 0] + anchors[:, 2])) / 2 / ah,
                         10 * ((boxes[:, 1] + boxes[:, 3]) - (anchors[:, 1] + anchors[:, 3])) / 2 / aw,
                         5 * np.log(bh / ah), 5 * np.log(bw / aw)], 1)
    deltas = B.encode_boxes(boxes, anchors, weights=w).numpy()
    np.testing.assert_allclose(deltas, expected, rtol=1e-10)
    np.testing.assert_allclose(B.decode_boxes(deltas, anchors, weights=w).numpy(), boxes, rtol=1e-10)


def test_box_coder_weights_none_is_unit_weights():
    # Box (0, 0, 20, 10) on anchor (0, 0, 10, 10): centres (10, 5) and (5, 5), sizes 20x10 and
    # 10x10 -> dy = (10 - 5) / 10 = 0.5, dx = 0, dh = log(20 / 10) = log 2, dw = log 1 = 0.
    # With weights (10, 10, 5, 5): 5, 0, 5 log 2, 0.
    box, anchor = [[0.0, 0.0, 20.0, 10.0]], [[0.0, 0.0, 10.0, 10.0]]
    hand = [[0.5, 0.0, np.log(2.0), 0.0]]
    for weights in (None, (1, 1, 1, 1)):
        np.testing.assert_allclose(B.encode_boxes(box, anchor, weights=weights).numpy(), hand,
                                   rtol=1e-6)
        np.testing.assert_allclose(B.decode_boxes(hand, anchor, weights=weights).numpy(), box,
                                   rtol=1e-6, atol=1e-5)
    scaled = [[5.0, 0.0, 5 * np.log(2.0), 0.0]]
    np.testing.assert_allclose(B.encode_boxes(box, anchor, weights=(10, 10, 5, 5)).numpy(),
                               scaled, rtol=1e-6)
    np.testing.assert_allclose(B.decode_boxes(scaled, anchor, weights=(10, 10, 5, 5)).numpy(),
                               box, rtol=1e-6, atol=1e-5)


def test_decode_clips_log_size():
    anchor = [[0.0, 0.0, 16.0, 16.0]]
    out = B.decode_boxes([[0.0, 0.0, 100.0, 100.0]], anchor).numpy()
    np.testing.assert_allclose(out, [[8 - 500, 8 - 500, 8 + 500, 8 + 500]], rtol=1e-5)  # 16 * 1000/16


def test_errors():
    with pytest.raises(ValueError, match=r"boxes1.*\[N, 4\].*Received"):
        B.box_iou(np.zeros((2, 3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"`boxes` must have shape \[..., 4\]. Received"):
        B.box_area(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="`target` must be one of.*Received: target='xyzw'"):
        B.convert_format(np.zeros((1, 4)), "yxyx", "xyzw")
    with pytest.raises(ValueError, match="`weights` must be 4 positive numbers"):
        B.encode_boxes(np.ones((1, 4)), np.ones((1, 4)), weights=(1, 1, 0, 1))
    with pytest.raises(TypeError, match="same dtype"):
        B.box_iou(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float64))
