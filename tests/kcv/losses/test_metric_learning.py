"""Contrastive, triplet (batch-hard, semi-hard), AM-Softmax and ArcFace losses against NumPy
transcriptions of the papers (and of tensorflow-addons' `triplet_semihard_loss`), hand-built
batches whose mined triplets are worked out by hand, and the Keras cross-entropy at margin 0."""

import doctest
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv
from kcv.losses import (
    AMSoftmaxLoss,
    ArcFaceLoss,
    ContrastiveLoss,
    TripletLoss,
    am_softmax_loss,
    arcface_loss,
    contrastive_loss,
    metric_learning,
    pairwise_distances,
    triplet_loss,
)

from kcv_testing import check_loss


def np_distances(x, squared):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return d2 if squared else np.sqrt(d2)


def np_batch_hard(labels, x, margin, squared=False):
    """Hermans et al. 2017, eq. (5), per anchor: farthest positive and nearest negative (0 for
    an anchor without either)."""
    d = np_distances(x, squared)
    out = np.zeros(len(x))
    for a in range(len(x)):
        pos = [d[a, p] for p in range(len(x)) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(len(x)) if labels[n] != labels[a]]
        if pos and neg:
            out[a] = max(max(pos) - min(neg) + margin, 0.0)
    return out


def np_semi_hard_pairs(labels, x, margin, squared=True):
    """tensorflow-addons' `triplet_semihard_loss` (losses/triplet.py) in loops: for each
    (anchor, positive) pair, the smallest d(a, n) with d(a, n) > d(a, p), or else the largest
    d(a, n); loss max(margin + d(a, p) - d(a, n), 0). Returns `{(a, p): loss}`; the
    tensorflow-addons value is the mean of these."""
    d = np_distances(x, squared)
    pairs = {}
    for a in range(len(x)):
        neg = [d[a, n] for n in range(len(x)) if labels[n] != labels[a]]
        for p in range(len(x)):
            if p == a or labels[p] != labels[a] or not neg:
                continue
            farther = [v for v in neg if v > d[a, p]]
            chosen = min(farther) if farther else max(neg)
            pairs[a, p] = max(margin + d[a, p] - chosen, 0.0)
    return pairs


def np_semi_hard(labels, x, margin, squared=True):
    """Per anchor: the mean of its pairs' losses (0 without pairs)."""
    pairs = np_semi_hard_pairs(labels, x, margin, squared)
    return np.array([np.mean([v for (a, _), v in pairs.items() if a == i] or [0.0])
                     for i in range(len(x))])


def np_cross_entropy(logits, target):
    z = logits - logits.max(-1, keepdims=True)
    return -(z[np.arange(len(z)), target] - np.log(np.exp(z).sum(-1)))


def np_am_softmax(labels, cosines, scale, margin):
    """Wang et al. 2018, eq. (6)."""
    logits = scale * (cosines - margin * np.eye(cosines.shape[1])[labels])
    return np_cross_entropy(logits, labels)


def np_arcface(labels, cosines, scale, margin):
    """Deng et al. 2019 with insightface's easy_margin=False branch
    (recognition/arcface_torch/losses.py), one sample at a time."""
    logits = scale * cosines.astype(np.float64)
    for b, t in enumerate(labels):
        c = cosines[b, t]
        if c > math.cos(math.pi - margin):
            target = math.cos(math.acos(c) + margin)
        else:
            target = c - math.sin(math.pi - margin) * margin
        logits[b, t] = scale * target
    return np_cross_entropy(logits, labels)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)[rng.permutation(12)].astype(np.int32)  # P=4, K=3
    x = rng.normal(size=(12, 5)).astype(np.float32)
    return labels, x


def _cosines(rng, b, c):
    return np.tanh(rng.normal(size=(b, c))).astype(np.float32)


def test_docstring_examples_run():
    result = doctest.testmod(metric_learning)
    assert result.attempted >= 8 and result.failed == 0


# --- contrastive -----------------------------------------------------------------------------

def test_contrastive_matches_formula_and_accepts_column_shapes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=16).astype(np.float32)
    d = rng.uniform(0, 2, size=16).astype(np.float32)
    expected = y * d ** 2 + (1 - y) * np.maximum(0.7 - d, 0) ** 2
    np.testing.assert_allclose(contrastive_loss(y, d, margin=0.7), expected, rtol=1e-6)
    np.testing.assert_allclose(contrastive_loss(y[:, None], d[:, None], margin=0.7), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(ContrastiveLoss(margin=0.7)(y[:, None], d[:, None]),
                               expected.mean(), rtol=1e-6)


def test_contrastive_hand_cases_and_label_convention():
    # identical similar pair: 0; dissimilar beyond the margin: 0; dissimilar at d=0: margin^2.
    got = contrastive_loss([1.0, 0.0, 0.0, 1.0], [0.0, 1.5, 0.0, 0.5], margin=1.0).numpy()
    np.testing.assert_allclose(got, [0.0, 0.0, 1.0, 0.25])
    # Hadsell et al. label similar pairs 0 and halve both terms: L = (1-Y) D^2/2 + Y max(m-D,0)^2/2
    hadsell_y = np.array([0.0, 1.0, 1.0, 0.0])
    d = np.array([0.0, 1.5, 0.0, 0.5])
    hadsell = (1 - hadsell_y) * d ** 2 / 2 + hadsell_y * np.maximum(1 - d, 0) ** 2 / 2
    np.testing.assert_allclose(contrastive_loss(1 - hadsell_y, d) / 2, hadsell, rtol=1e-6)


def test_contrastive_gradient_at_zero_distance_is_finite():
    d = tf.Variable([0.0, 0.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(contrastive_loss([1.0, 0.0], d, margin=1.0))
    np.testing.assert_allclose(tape.gradient(loss, d), [0.0, -2.0])  # d/dd of (1 - d)^2 at 0


# --- pairwise distances and triplet mining ---------------------------------------------------

@pytest.mark.parametrize("squared", [False, True])
def test_pairwise_distances_match_numpy(batch, squared):
    _, x = batch
    x = np.concatenate([x, x[:2]])  # rows 12, 13 repeat rows 0, 1
    got = pairwise_distances(x, squared=squared).numpy()
    expected = np_distances(x.astype(np.float64), squared)
    duplicate = np.zeros_like(got, bool)
    duplicate[[0, 1, 12, 13], [12, 13, 0, 1]] = True
    np.testing.assert_allclose(got[~duplicate], expected[~duplicate], atol=2e-5)
    assert np.all(np.diag(got) == 0)
    # |a|^2 + |b|^2 - 2ab leaves float32 rounding (~1e-7 |x|^2) on repeated embeddings
    assert np.all(got[duplicate] <= (1e-6 if squared else 2e-3))


_REFERENCES = {"batch_hard": np_batch_hard, "semi_hard": np_semi_hard}


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("margin", [0.2, 1.0, 2.0])
@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_mining_matches_numpy_transcriptions(batch, mining, squared, margin):
    """batch-hard: Hermans et al.; semi-hard: tensorflow-addons' triplet_semihard_loss."""
    labels, x = batch
    got = triplet_loss(labels, x, margin=margin, mining=mining, squared=squared)
    expected = _REFERENCES[mining](labels, x.astype(np.float64), margin, squared)
    assert np.count_nonzero(expected) >= 2  # not a trivial batch
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_semi_hard_batch_mean_is_tensorflow_addons_value(batch):
    labels, x = batch  # P = 4 labels x K = 3 images: every anchor has 2 pairs
    tfa = np.mean(list(np_semi_hard_pairs(labels, x.astype(np.float64), 0.5).values()))
    got = TripletLoss(margin=0.5, mining="semi_hard", squared=True)(labels, x)
    np.testing.assert_allclose(got, tfa, rtol=1e-5)
    # unequal label counts: the pair-weighted mean of the per-anchor values
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3])
    pairs = np_semi_hard_pairs(labels, x.astype(np.float64), 0.5)
    per_anchor = triplet_loss(labels, x, margin=0.5, mining="semi_hard", squared=True).numpy()
    counts = np.bincount([a for a, _ in pairs], minlength=12)
    np.testing.assert_allclose((per_anchor * counts).sum() / counts.sum(),
                               np.mean(list(pairs.values())), rtol=1e-5)


def _line(points):
    return np.array([[p, 0.0] for p in points], np.float32)


# Anchor A at 0 and positive P at 1 (label 0); negatives with labels of their own (so they are
# anchors of no triplet): a hard one at 0.4 (closer to A than P), semi-hard ones at 1.5 and 1.8,
# an easy one at 5. Margin 1, Euclidean distance.
_HAND_LABELS = [0, 0, 1, 2, 3, 4]
_HAND_POINTS = [0.0, 1.0, 0.4, 1.5, 1.8, 5.0]


@pytest.mark.parametrize("mining, expected, used", [
    # A: farthest positive 1, nearest negative 0.4 -> 1.6; P: 1, nearest 1.5 (0.5) -> 1.5.
    ("batch_hard", [1.6, 1.5, 0, 0, 0, 0], {0, 1, 2, 3}),
    # (A, P): nearest negative farther than 1 is 1.5 -> 0.5 (not the hard one at 0.4);
    # (P, A): from P the negatives are at 0.6, 0.5, 0.8, 4: the one farther than 1 is 5 -> 0.
    ("semi_hard", [0.5, 0, 0, 0, 0, 0], {0, 1, 3}),
])
def test_mining_picks_the_hand_worked_triplets(mining, expected, used):
    x = tf.Variable(_line(_HAND_POINTS))
    with tf.GradientTape() as tape:
        loss = triplet_loss(_HAND_LABELS, x, margin=1.0, mining=mining)
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-7)
    moved = set(np.flatnonzero(np.abs(tape.gradient(loss, x).numpy()).sum(1) > 0))
    assert moved == used


def test_semi_hard_without_a_farther_negative_takes_the_farthest_negative():
    # A=0, P=2; negatives at 0.5 and 1. (A, P): both closer than 2 -> farthest 1: 2 - 1 + 1 = 2.
    # (P, A): negatives at 1.5 and 1 from P -> farthest 1.5: 2 - 1.5 + 1 = 1.5.
    loss = triplet_loss([0, 0, 1, 2], _line([0.0, 2.0, 0.5, 1.0]), margin=1.0, mining="semi_hard")
    np.testing.assert_allclose(loss, [2.0, 1.5, 0.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_anchors_without_positive_or_negative_give_zero(mining):
    same = triplet_loss([3, 3, 3], _line([0.0, 1.0, 2.0]), mining=mining)  # no negatives
    np.testing.assert_array_equal(same, [0.0, 0.0, 0.0])
    # label 1 has a single image: its anchor forms no triplet. Anchor 0: positive 1 away, the
    # negative 1.2 away (nearest, and farther than the positive); anchor 1: positive 1 away,
    # negative 0.2 away (nearest, and with none farther, the farthest too).
    got = triplet_loss([0, 0, 1], _line([0.0, 1.0, 1.2]), margin=1.0, mining=mining).numpy()
    np.testing.assert_allclose(got, [1.0 - 1.2 + 1.0, 1.0 - 0.2 + 1.0, 0.0], rtol=1e-5)


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_gradient_is_finite_for_coinciding_embeddings(mining):
    x = tf.Variable(_line([0.0, 0.0, 0.0, 2.0]))  # a positive pair and a hard negative at d = 0
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(triplet_loss([0, 0, 1, 1], x, margin=1.0, mining=mining))
    grad = tape.gradient(loss, x).numpy()
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))


def test_negative_beyond_the_margin_costs_nothing():
    x = _line([0.0, 0.5, 3.0, 3.5])  # positives 0.5 apart, negatives 2.5 away, margin 1
    for mining in ("batch_hard", "semi_hard"):
        np.testing.assert_array_equal(triplet_loss([0, 0, 1, 1], x, margin=1.0, mining=mining),
                                      0.0)


# --- AM-Softmax and ArcFace ------------------------------------------------------------------

@pytest.mark.parametrize("scale, margin", [(30.0, 0.35), (10.0, 0.1)])
def test_am_softmax_matches_paper_formula(scale, margin):
    rng = np.random.default_rng(2)
    cos = _cosines(rng, 8, 5)
    labels = rng.integers(0, 5, size=8)
    expected = np_am_softmax(labels, cos.astype(np.float64), scale, margin)
    np.testing.assert_allclose(am_softmax_loss(labels, cos, scale, margin), expected, rtol=1e-5)
    np.testing.assert_allclose(am_softmax_loss(np.eye(5)[labels], cos, scale, margin), expected,
                               rtol=1e-5)  # one-hot targets
    np.testing.assert_allclose(AMSoftmaxLoss(scale, margin)(labels[:, None], cos),
                               expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("scale, margin", [(64.0, 0.5), (16.0, 0.2), (8.0, 1.2)])
def test_arcface_matches_insightface_formula_on_both_branches(scale, margin):
    rng = np.random.default_rng(3)
    cos = _cosines(rng, 10, 4)
    labels = rng.integers(0, 4, size=10)
    cos[0, labels[0]] = -0.995  # theta + m > pi for every margin here: the fallback branch
    cos[1, labels[1]] = 0.99
    threshold = math.cos(math.pi - margin)
    assert cos[0, labels[0]] < threshold < cos[1, labels[1]]
    expected = np_arcface(labels, cos, scale, margin)
    np.testing.assert_allclose(arcface_loss(labels, cos, scale, margin), expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ArcFaceLoss(scale, margin)(np.eye(4)[labels], cos),
                               expected.mean(), rtol=2e-5)


@pytest.mark.parametrize("loss_fn", [am_softmax_loss, arcface_loss])
def test_margin_zero_is_keras_crossentropy_of_scaled_cosines(loss_fn):
    rng = np.random.default_rng(4)
    cos = _cosines(rng, 6, 3)
    labels = rng.integers(0, 3, size=6)
    keras_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    np.testing.assert_allclose(loss_fn(labels, cos, scale=5.0, margin=0.0),
                               keras_ce(labels, 5.0 * cos), rtol=1e-5)


def test_margins_raise_the_loss_of_a_correct_prediction():
    cos = np.array([[0.8, 0.2, 0.0]], np.float32)
    plain = float(am_softmax_loss([0], cos, scale=10.0, margin=0.0)[0])
    assert float(am_softmax_loss([0], cos, scale=10.0, margin=0.35)[0]) > plain
    assert float(arcface_loss([0], cos, scale=10.0, margin=0.5)[0]) > plain


@pytest.mark.parametrize("loss_fn", [am_softmax_loss, arcface_loss])
def test_margin_loss_gradient_finite_at_cosine_one(loss_fn):
    cos = tf.Variable([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loss_fn([0, 0], cos))
    assert np.all(np.isfinite(tape.gradient(loss, cos).numpy()))


# --- classes: shared loss checks, training, errors --------------------------------

_CASES = [
    (ContrastiveLoss(margin=0.5), "pairs"),
    (TripletLoss(margin=0.3, mining="semi_hard", squared=True), "embeddings"),
    (TripletLoss(margin=0.3), "embeddings"),
    (AMSoftmaxLoss(scale=10.0, margin=0.2), "cosines"),
    (ArcFaceLoss(scale=10.0, margin=0.3), "cosines"),
]


def _inputs(kind, rng):
    if kind == "pairs":
        return rng.integers(0, 2, size=8).astype(np.float32), rng.uniform(0, 1, 8).astype(np.float32)
    if kind == "embeddings":
        return np.repeat(np.arange(4), 2).astype(np.int32), rng.normal(size=(8, 4)).astype(np.float32)
    return rng.integers(0, 5, size=8).astype(np.int32), _cosines(rng, 8, 5)


@pytest.mark.parametrize("loss_fn, cls, kind, kwargs", [
    (contrastive_loss, ContrastiveLoss, "pairs", {"margin": 0.8}),
    (triplet_loss, TripletLoss, "embeddings", {"margin": 0.3, "mining": "semi_hard",
                                               "squared": True}),
    (triplet_loss, TripletLoss, "embeddings", {"margin": 2.0, "mining": "batch_hard"}),
    (am_softmax_loss, AMSoftmaxLoss, "cosines", {"scale": 16.0, "margin": 0.25}),
    (arcface_loss, ArcFaceLoss, "cosines", {"scale": 32.0, "margin": 0.4}),
])
def test_check_loss(loss_fn, cls, kind, kwargs):
    """Function == class, reductions, config, `.keras` reload (safe_mode=True), float16."""
    y_true, y_pred = _inputs(kind, np.random.default_rng(5))
    values = check_loss(loss_fn, cls, y_true, y_pred, **kwargs)
    assert np.count_nonzero(values) >= 2


@pytest.mark.parametrize("loss, kind", _CASES)
def test_gradient_step_lowers_the_loss(loss, kind):
    y_true, y_pred = _inputs(kind, np.random.default_rng(6))
    z = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss(y_true, z)
    grad = tape.gradient(value, z)
    assert np.all(np.isfinite(grad)) and float(value) > 0
    assert float(loss(y_true, z - 0.05 * grad)) < float(value)


def test_triplet_and_am_softmax_losses_train_with_model_fit():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 8).astype(np.int32)
    x[np.arange(32), y] += 2.0
    inputs = keras.Input((6,))
    emb = keras.layers.UnitNormalization()(keras.layers.Dense(4)(inputs))
    for loss, head in ((TripletLoss(margin=0.5), None),
                       (AMSoftmaxLoss(scale=10.0, margin=0.2), kcv.layers.CosineClassifier(4))):
        model = keras.Model(inputs, emb if head is None else head(emb))
        model.compile(keras.optimizers.Adam(0.05), loss=loss)
        history = model.fit(x, y, batch_size=32, epochs=15, verbose=0).history["loss"]
        assert history[-1] < 0.7 * history[0]


def test_exported_from_kcv_losses():
    assert kcv.losses.TripletLoss is TripletLoss and kcv.losses.arcface_loss is arcface_loss


@pytest.mark.parametrize("make, match", [
    (lambda: ContrastiveLoss(margin=0), r"`margin` must be a number > 0. Received: margin=0"),
    (lambda: contrastive_loss([1.0], [[0.1, 0.2]]), r"`y_pred` must have shape \[B\] or"),
    (lambda: TripletLoss(mining="hardest"), r"`mining` must be one of .*mining='hardest'"),
    (lambda: TripletLoss(margin=-1.0), r"`margin` must be a number >= 0"),
    (lambda: triplet_loss([0, 1], np.zeros((2, 2, 2))), r"`y_pred` must be embeddings \[B, D\]"),
    (lambda: AMSoftmaxLoss(scale=0.0), r"`scale` must be a number > 0. Received: scale=0.0"),
    (lambda: AMSoftmaxLoss(margin="big"), r"`margin` must be a number"),
    (lambda: ArcFaceLoss(margin=2.0), r"`margin` must be in \[0, pi / 2\].*margin=2.0"),
    (lambda: am_softmax_loss([0], np.zeros(3)), r"`y_pred` must be cosine similarities \[B, C\]"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
