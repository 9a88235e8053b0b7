"""Matcher and BalancedPositiveNegativeSampler on hand-built IoU matrices and label rows."""

import numpy as np
import pytest
import tensorflow as tf

from kcv.models.detection import (
    BalancedPositiveNegativeSampler,
    Matcher,
    first_true_indices,
    pairwise_iou,
)


def _torchvision_matcher(q, high, low, allow_low):
    """torchvision's Matcher.__call__ on one image, [M, N], as a NumPy transcription."""
    if q.shape[0] == 0:
        return np.full(q.shape[1], -1)
    vals, matches = q.max(0), q.argmax(0)
    all_matches = matches.copy()
    matches = np.where(vals < low, -1, np.where(vals < high, -2, matches))
    if allow_low:
        best = q.max(1)
        gt, pred = np.nonzero((q == best[:, None]) & (best[:, None] > 0))
        matches[pred] = all_matches[pred]
    return matches


# 4 GTs x 6 anchors, by hand:
#  anchor 0: 0.8 with GT 0 -> 0;  anchor 2: 0.1 -> -1
#  anchor 1: 0.5 with GT 1 (between) -> -2, but it is GT 3's best (0.4) -> its argmax, 1
#  anchors 3, 4: GT 2's best 0.2, tied -> both 2
#  anchor 5: 0.75 with GT 0 and GT 1 (tie) -> the first, 0
_Q = np.array([[0.8, 0.0, 0.1, 0.0, 0.0, 0.75],
               [0.0, 0.5, 0.0, 0.1, 0.1, 0.75],
               [0.0, 0.0, 0.0, 0.2, 0.2, 0.0],
               [0.0, 0.4, 0.0, 0.0, 0.0, 0.0]], np.float32)


@pytest.mark.parametrize("allow_low, expected", [
    (False, [0, -2, -1, -1, -1, 0]),
    (True, [0, 1, -1, 2, 2, 0]),
])
def test_rpn_matcher_by_hand(allow_low, expected):
    out = Matcher(0.7, 0.3, allow_low)(_Q[None]).numpy()
    np.testing.assert_array_equal(out[0], expected)
    np.testing.assert_array_equal(out[0], _torchvision_matcher(_Q, 0.7, 0.3, allow_low))


def test_low_quality_match_keeps_argmax_not_the_gt():
    # GT 1's best anchor (0.4) overlaps GT 0 more (0.6): it gets GT 0, as torchvision
    q = np.array([[[0.6, 0.9], [0.4, 0.1]]], np.float32)
    np.testing.assert_array_equal(Matcher(0.7, 0.3, True)(q).numpy(), [[0, 0]])


def test_padded_gt_rows_and_empty_images():
    q = np.stack([_Q, np.zeros_like(_Q)])
    q[1, 0, 2] = 0.9  # a padded row with high IoU must not match
    valid = np.array([[True, True, False, False], [False] * 4])
    out = Matcher(0.7, 0.3, True)(q, valid).numpy()
    np.testing.assert_array_equal(out[0], _torchvision_matcher(_Q[:2], 0.7, 0.3, True))
    np.testing.assert_array_equal(out[0], [0, -2, -1, -1, -1, 0])  # GTs 2, 3 padded: no rescue
    np.testing.assert_array_equal(out[1], [-1] * 6)


def test_gt_without_overlap_adds_no_matches():
    q = np.array([[[0.0, 0.0, 0.0], [0.9, 0.2, 0.0]]], np.float32)
    np.testing.assert_array_equal(Matcher(0.7, 0.3, True)(q).numpy(), [[1, -1, -1]])


def test_roi_matcher_random_vs_numpy():
    rng = np.random.default_rng(0)
    q = rng.choice([0.0, 0.3, 0.5, 0.55, 0.8], size=(3, 5, 40)).astype(np.float32)
    out = tf.function(Matcher(0.5, 0.5, False).__call__, jit_compile=True)(q).numpy()
    for b in range(3):
        np.testing.assert_array_equal(out[b], _torchvision_matcher(q[b], 0.5, 0.5, False))


def test_pairwise_iou_by_hand():
    gt = np.array([[[0, 0, 10, 10], [0, 0, 0, 0]]], np.float32)
    anchors = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(pairwise_iou(gt, anchors).numpy(),
                               [[[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]]], rtol=1e-6)


def _counts(mask):
    return tf.reduce_sum(tf.cast(mask, tf.int32), axis=1).numpy()


def test_sampler_counts():
    labels = np.zeros((3, 1000), np.int32)
    labels[0, :300] = 1      # enough positives: 128 + 128
    labels[1, :40] = 1       # 40 positives, negatives fill: 216
    labels[1, 40:100] = -1   # ignored
    labels[2, :] = -1        # only 10 negatives, no positives
    labels[2, 500:510] = 0
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)(labels, seed=[1, 2])
    np.testing.assert_array_equal(_counts(pos), [128, 40, 0])
    np.testing.assert_array_equal(_counts(neg), [128, 216, 10])
    pos, neg = pos.numpy(), neg.numpy()
    assert (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    assert not (pos & neg).any()
    assert pos[1, :40].all() and neg[2, 500:510].all()


def test_sampler_is_seeded_and_random():
    labels = np.zeros((2, 500), np.int32)
    labels[:, ::2] = 1
    sampler = BalancedPositiveNegativeSampler(64, 0.25)
    a = sampler(labels, seed=[3, 4])
    b = tf.function(sampler.__call__, jit_compile=True)(labels, tf.constant([3, 4]))
    c = sampler(labels, seed=[5, 6])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())
    assert not np.array_equal(a[0].numpy()[0], a[0].numpy()[1])  # images sampled independently
    np.testing.assert_array_equal(_counts(a[0]), [16, 16])
    # uniform: over 400 images each positive is taken about 16 / 250 of the time
    hits = sampler(np.repeat(labels[:1], 400, 0), seed=[7, 0])[0].numpy().sum(0)
    assert hits[1::2].sum() == 0
    freq = hits[::2] / 400
    assert abs(freq.mean() - 16 / 250) < 1e-9 and freq.max() < 0.2


def test_first_true_indices():
    mask = np.array([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], bool)
    idx, valid = first_true_indices(mask, 4)
    np.testing.assert_array_equal(idx.numpy(), [[1, 3, 4, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(valid.numpy(), [[1, 1, 1, 0], [0, 0, 0, 0]])
    idx, valid = first_true_indices(mask, 7)  # wider than N: padded
    assert idx.shape == (2, 7) and valid.numpy()[0].sum() == 3


def test_errors():
    with pytest.raises(ValueError, match="`low_threshold` must be <= `high_threshold`"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match=r"`match_quality` must be \[B, M, N\]"):
        Matcher(0.7, 0.3)(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="`positive_fraction` must be in"):
        BalancedPositiveNegativeSampler(256, 1.5)
    with pytest.raises(ValueError, match="`batch_size_per_image` must be a positive int"):
        BalancedPositiveNegativeSampler(0, 0.5)
