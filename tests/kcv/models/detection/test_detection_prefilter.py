"""The per-RoI class prefilter of the detections and the trimming of padded RoI slots."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from kcv.models.detection.roi_heads import (
    postprocess_detections,
    select_detections,
    softmax_classes_bound,
    trim_padded_rois,
)

sys.path.insert(0, os.path.dirname(__file__))
from _numpy_detection import np_nms  # noqa: E402
from test_roi_heads import _np_postprocess  # noqa: E402  torchvision's rules in NumPy


@pytest.mark.parametrize("threshold, expected", [
    (0.05, 20),  # 19 classes at most pass (20 * 0.05 = 1); 20 allows for float32 sums
    (0.3, 3),  # 4 * 0.3 > 1
    (0.5, 2),
    (0.25, 4),  # 4 * 0.25 = 1: 3 can pass, 4 returned (one spare, never too few)
    (0.001, 90),  # 1000 > 90 classes: no bound
    (0.0, 90), (-1.0, 90), (None, 90),
])
def test_softmax_classes_bound_by_hand(threshold, expected):
    assert softmax_classes_bound(threshold, 90) == expected


def _crowded_logits(rng, b, r, c, crowd):
    """Logits where RoI 0 of each image spreads its mass over `crowd` object classes."""
    logits = rng.normal(scale=2, size=(b, r, c)).astype(np.float32)
    logits[:, 0] = -30.0
    logits[:, 0, 1:crowd + 1] = 5.0 + rng.uniform(0, 1e-3, size=(b, crowd))  # each ~1 / crowd
    logits[1, 1] = -30.0  # a tie: RoI 1 of image 1 has two classes at exactly 0.5
    logits[1, 1, 3] = logits[1, 1, 5] = 5.0
    return logits


@pytest.mark.parametrize("crowd", [19, 4])
def test_postprocess_prefilter_vs_torchvision_rules(crowd):
    # 24 object classes, threshold 0.05: the bound keeps 20 of 24 per RoI. RoI 0 has `crowd`
    # classes just above 0.05 (19: the most the softmax allows), RoI 1 of image 1 a score tie.
    rng = np.random.default_rng(7)
    b, r, c = 2, 10, 25
    centres = rng.uniform(8, 32, size=(b, r, 2))
    rois = np.concatenate([centres - 7, centres + 7], -1).astype(np.float32)
    logits = _crowded_logits(rng, b, r, c, crowd)
    deltas = rng.normal(scale=0.3, size=(b, r, c, 4)).astype(np.float32)
    num = np.array([10, 7])
    scores = tf.nn.softmax(logits).numpy()
    assert ((scores[:, 0, 1:] > 0.05).sum(-1) == crowd).all()
    for classes_per_roi in ("auto", None):
        out = postprocess_detections(logits, deltas, rois, num, (40, 40),
                                     classes_per_roi=classes_per_roi)
        for i in range(b):
            ref_b, ref_s, ref_c = _np_postprocess(logits[i], deltas[i], rois[i], num[i],
                                                  (40, 40), 0.05, 0.5, 100, 1e-2)
            k = int(out["num_detections"][i])
            assert k == len(ref_b) and k > crowd
            np.testing.assert_allclose(out["boxes"][i, :k].numpy(), ref_b, atol=1e-4)
            np.testing.assert_allclose(out["scores"][i, :k].numpy(), ref_s, atol=1e-6)
            np.testing.assert_array_equal(out["classes"][i, :k].numpy(), ref_c)


def _np_select_top(scores, boxes, n, hw, m, thr=0.05, nms_thr=0.5, det=100, min_size=1e-2):
    """torchvision's selection over only the m best classes of each RoI (ties: lower class)."""
    scores, boxes = scores[:n].astype(np.float64), np.asarray(boxes[:n], np.float64)
    boxes = np.clip(boxes, 0, [hw[0], hw[1], hw[0], hw[1]])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :m]
    rows = np.repeat(np.arange(n), m)
    cls, sc, bx = top.reshape(-1), scores[rows, top.reshape(-1)], boxes[rows, top.reshape(-1)]
    keep = np.nonzero(sc > thr)[0]
    keep = keep[(bx[keep, 2] - bx[keep, 0] >= min_size) & (bx[keep, 3] - bx[keep, 1] >= min_size)]
    keep = keep[np_nms(bx[keep], sc[keep], cls[keep], nms_thr)][:det]
    return bx[keep], sc[keep], cls[keep]


@pytest.mark.parametrize("m", [2, 6, 8])
def test_select_detections_classes_per_roi_vs_numpy(m):
    # Independent (sigmoid-like) scores: up to 6 of 8 classes of an RoI pass 0.05, so m = 2
    # drops candidates (the documented rule: the m best classes of each RoI only), m = 6 and
    # m = 8 give every candidate.
    rng = np.random.default_rng(8)
    b, r, c = 2, 9, 8
    scores = rng.uniform(0, 0.2, size=(b, r, c)).astype(np.float32)
    scores[:, :, :2] = 0.0
    scores[0, 3, 4] = scores[0, 3, 6] = 0.15  # a tie inside one RoI
    centres = rng.uniform(8, 32, size=(b, r, 1, 2)) + rng.normal(scale=2, size=(b, r, c, 2))
    boxes = np.concatenate([centres - 6, centres + 6], -1).astype(np.float32)
    num = np.array([9, 6])
    out = select_detections(scores, boxes, num, (40, 40), classes_per_roi=m)
    for i in range(b):
        ref_b, ref_s, ref_c = _np_select_top(scores[i], boxes[i], num[i], (40, 40), m)
        k = int(out["num_detections"][i])
        assert k == len(ref_b) and k > m
        np.testing.assert_allclose(out["boxes"][i, :k].numpy(), ref_b, atol=1e-5)
        np.testing.assert_allclose(out["scores"][i, :k].numpy(), ref_s, atol=1e-7)
        np.testing.assert_array_equal(out["classes"][i, :k].numpy(), ref_c)
    assert ((scores[:, :, :] > 0.05).sum(-1) > 2).any()  # m = 2 really drops candidates


def test_trim_padded_rois_only_outside_xla():
    rois = tf.reshape(tf.range(2 * 6 * 4, dtype=tf.float32), [2, 6, 4])
    num = tf.constant([2, 4])
    trimmed = tf.function(trim_padded_rois)(rois, num)
    np.testing.assert_array_equal(trimmed.numpy(), rois.numpy()[:, :4])
    assert tuple(trim_padded_rois(rois, tf.constant([0, 0])).shape) == (2, 1, 4)
    whole = tf.function(trim_padded_rois, jit_compile=True)(rois, num)  # static shapes
    np.testing.assert_array_equal(whole.numpy(), rois.numpy())


def test_classes_per_roi_errors():
    with pytest.raises(ValueError, match="`classes_per_roi` must be a positive integer. "
                                         "Received: classes_per_roi=0"):
        select_detections(np.zeros((1, 1, 2)), np.zeros((1, 1, 2, 4)), [1], (8, 8),
                          classes_per_roi=0)
    with pytest.raises(ValueError, match="Received: classes_per_roi='all'"):
        postprocess_detections(np.zeros((1, 1, 3)), np.zeros((1, 1, 3, 4)),
                               np.zeros((1, 1, 4)), [1], (8, 8), classes_per_roi="all")
