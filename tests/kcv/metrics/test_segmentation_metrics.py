"""Dice and IoU metrics against keras.metrics.MeanIoU and NumPy counts."""

import keras
import numpy as np
import pytest

from kcv.metrics import DiceCoefficient, MeanIoU


@pytest.fixture
def batches():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        labels = rng.integers(0, 4, size=(2, 6, 5))
        probs = rng.random((2, 6, 5, 4)).astype(np.float32)
        out.append((labels, probs))
    return out


def np_dice(labels, preds, classes):
    scores = []
    for c in classes:
        t, p = labels == c, preds == c
        if t.sum() + p.sum():
            scores.append(2 * (t & p).sum() / (t.sum() + p.sum()))
    return np.mean(scores)


def test_mean_iou_equals_keras_mean_iou(batches):
    ours, theirs = MeanIoU(4), keras.metrics.MeanIoU(num_classes=4)
    for labels, probs in batches:
        ours.update_state(labels, probs)
        theirs.update_state(labels, probs.argmax(-1))
    np.testing.assert_allclose(ours.result(), theirs.result(), rtol=1e-6)


def test_mean_iou_ignore_index_equals_keras_ignore_class(batches):
    ours = MeanIoU(4, ignore_index=0)
    theirs = keras.metrics.MeanIoU(num_classes=4, ignore_class=0)
    for labels, probs in batches:
        ours.update_state(labels, probs)
        theirs.update_state(labels, probs.argmax(-1))
    # Both leave the ignored pixels out; class 0 still counts where it is predicted elsewhere.
    np.testing.assert_allclose(ours.result(), theirs.result(), rtol=1e-6)


def test_per_class_iou_and_class_ids_by_hand():
    labels = np.array([[[0, 0, 1, 1]]])
    preds = np.eye(3)[np.array([[[0, 1, 1, 2]]])]
    m = MeanIoU(3)
    m.update_state(labels, preds)
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1, FN 1 -> 1/3; class 2: FP 1 -> 0
    np.testing.assert_allclose(m.per_class(), [0.5, 1 / 3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(m.result(), (0.5 + 1 / 3 + 0) / 3, rtol=1e-6)
    m2 = MeanIoU(3, class_ids=[1, 2])
    m2.update_state(labels, preds)
    np.testing.assert_allclose(m2.result(), (1 / 3 + 0) / 2, rtol=1e-6)


def test_dice_accumulates_over_batches_like_numpy(batches):
    m = DiceCoefficient(4, class_ids=[1, 2, 3])
    for labels, probs in batches:
        m.update_state(labels, probs)
    labels = np.concatenate([b[0] for b in batches])
    preds = np.concatenate([b[1] for b in batches]).argmax(-1)
    np.testing.assert_allclose(m.result(), np_dice(labels, preds, [1, 2, 3]), rtol=1e-6)
    m.reset_state()
    np.testing.assert_allclose(m.result(), 1.0)  # nothing seen: nothing to disagree on


def test_dice_binary_threshold_logits_and_onehot():
    truth = np.array([[[[1.0], [1.0]], [[0.0], [1.0]]]])
    probs = np.array([[[[0.9], [0.4]], [[0.7], [0.6]]]])
    # foreground: pred {0,0},{1,0},{1,1}; truth {0,0},{0,1},{1,1}: TP 2, FP 1, FN 1 -> 4/6
    m = DiceCoefficient(2, class_ids=[1])
    m.update_state(truth, probs)
    np.testing.assert_allclose(m.result(), 4 / 6, rtol=1e-6)
    m2 = DiceCoefficient(2, class_ids=[1], from_logits=True)
    m2.update_state(truth, np.log(probs / (1 - probs)))
    np.testing.assert_allclose(m2.result(), 4 / 6, rtol=1e-6)
    labels = np.array([[0, 2, 1]])
    m3 = DiceCoefficient(3)
    m3.update_state(np.eye(3)[labels], np.eye(3)[labels])
    np.testing.assert_allclose(m3.result(), 1.0)


def test_ignore_index_leaves_pixels_out():
    labels = np.array([[[1, 255, 0]]])
    preds = np.eye(2)[np.array([[[1, 0, 0]]])]
    m = DiceCoefficient(2, ignore_index=255)
    m.update_state(labels, preds)
    np.testing.assert_allclose(m.result(), 1.0)


def test_config_round_trip_and_use_in_fit():
    m = DiceCoefficient(4, class_ids=[1, 3], ignore_index=7, name="fg_dice")
    again = DiceCoefficient.from_config(m.get_config())
    assert again.get_config() == m.get_config()
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, activation="softmax")(inputs))
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=[MeanIoU(4), m])
    hist = model.fit(np.ones((2, 4, 4, 3)), np.zeros((2, 4, 4)), epochs=1, verbose=0)
    assert "fg_dice" in hist.history and "mean_iou" in hist.history


def test_errors():
    with pytest.raises(ValueError, match="num_classes"):
        DiceCoefficient(1)
    with pytest.raises(ValueError, match="class_ids"):
        MeanIoU(3, class_ids=[3])
    with pytest.raises(ValueError, match="sample_weight"):
        MeanIoU(3).update_state(np.zeros((1, 2)), np.zeros((1, 2, 3)), sample_weight=np.ones(1))
