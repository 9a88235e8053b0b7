"""Dice and BCE+Dice against NumPy references, hand-computed cases and Keras built-ins."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcv
from kcv.losses import BCEDiceLoss, DiceLoss, bce_dice_loss, dice_loss


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_dice_per_image(labels, probs, smooth=1.0, weights=None, valid=None):
    """Soft Dice loss per image from the formula, with explicit loops over images and classes."""
    b, _, _, c = probs.shape
    out = np.zeros(b)
    for i in range(b):
        v = np.ones(labels[i].shape, bool) if valid is None else valid[i]
        scores = []
        for k in range(c):
            t = ((labels[i] == k) & v).astype(float)
            p = probs[i, ..., k] * v
            scores.append((2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth))
        w = np.ones(c) if weights is None else np.asarray(weights, float)
        out[i] = 1 - (np.asarray(scores) * w).sum() / w.sum()
    return out


@pytest.fixture
def multiclass():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(3, 5, 6)).astype(np.int32)
    return labels, logits


def test_hand_computed_binary_case():
    # One 2x2 image: truth [[1,1],[0,0]], prediction [[0.5,1],[0,0]]:
    # intersection 1.5, sums 1.5 + 2 -> Dice (3 + 1) / (3.5 + 1) = 8/9, loss 1/9.
    y_true = np.array([[[[1.0], [1.0]], [[0.0], [0.0]]]])
    y_pred = np.array([[[[0.5], [1.0]], [[0.0], [0.0]]]])
    np.testing.assert_allclose(dice_loss(y_true, y_pred), [1 / 9], rtol=1e-6)


def test_binary_with_smooth_zero_equals_keras_dice_per_image():
    rng = np.random.default_rng(1)
    y_true = (rng.random((4, 8, 8, 1)) > 0.6).astype(np.float32)
    y_pred = rng.random((4, 8, 8, 1)).astype(np.float32)
    ours = dice_loss(y_true, y_pred, smooth=0.0)
    keras_loss = keras.losses.Dice(axis=(1, 2, 3), reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(ours, keras_loss, rtol=1e-5)


def test_multiclass_sparse_onehot_and_logits_agree_with_numpy(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    expected = np_dice_per_image(labels, probs)
    np.testing.assert_allclose(dice_loss(labels, probs), expected, rtol=1e-5)
    np.testing.assert_allclose(dice_loss(np.eye(4)[labels], probs), expected, rtol=1e-5)
    np.testing.assert_allclose(dice_loss(labels[..., None], probs), expected, rtol=1e-5)
    np.testing.assert_allclose(dice_loss(labels, logits, from_logits=True), expected, rtol=1e-5)


def test_class_weights_and_ignore_index(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    weights = [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(dice_loss(labels, probs, class_weights=weights),
                               np_dice_per_image(labels, probs, weights=weights), rtol=1e-5)
    marked = labels.copy()
    marked[:, :2, :] = 255
    expected = np_dice_per_image(labels, probs, valid=marked != 255)
    np.testing.assert_allclose(dice_loss(marked, probs, ignore_index=255), expected, rtol=1e-5)


def test_class_reduces_over_batch_and_perfect_prediction_is_zero(multiclass):
    labels, logits = multiclass
    probs = np_softmax(logits)
    np.testing.assert_allclose(DiceLoss()(labels, probs), np_dice_per_image(labels, probs).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(DiceLoss()(labels, np.eye(4)[labels]), 0.0, atol=1e-6)


def test_bce_dice_binary_equals_keras_bce_plus_dice():
    rng = np.random.default_rng(2)
    y_true = (rng.random((3, 6, 6, 1)) > 0.5).astype(np.float32)
    logits = rng.normal(size=(3, 6, 6, 1)).astype(np.float32)
    bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)(y_true, logits)
    bce = np.asarray(bce).reshape(3, -1).mean(1)
    probs = 1 / (1 + np.exp(-logits))
    inter = (probs * y_true).reshape(3, -1).sum(1)
    d = 1 - (2 * inter + 1) / (probs.reshape(3, -1).sum(1) + y_true.reshape(3, -1).sum(1) + 1)
    np.testing.assert_allclose(bce_dice_loss(y_true, logits, from_logits=True), bce + d,
                               rtol=1e-5)
    np.testing.assert_allclose(BCEDiceLoss(bce_weight=0.5, dice_weight=2.0, from_logits=True)(
        y_true, logits), (0.5 * bce + 2 * d).mean(), rtol=1e-5)


def test_bce_dice_multiclass_uses_categorical_crossentropy(multiclass):
    labels, logits = multiclass
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(
        labels, logits)
    ce = np.asarray(ce).reshape(3, -1).mean(1)
    expected = ce + np_dice_per_image(labels, np_softmax(logits))
    np.testing.assert_allclose(bce_dice_loss(labels, logits, from_logits=True), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(bce_dice_loss(labels, np_softmax(logits)), expected, rtol=1e-4)


def test_gradient_is_finite_and_points_downhill(multiclass):
    labels, logits = multiclass
    z = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = DiceLoss(from_logits=True)(labels, z)
    grad = tape.gradient(loss, z)
    assert np.all(np.isfinite(grad))
    stepped = DiceLoss(from_logits=True)(labels, z - 10.0 * grad)
    assert float(stepped) < float(loss)


@pytest.mark.parametrize("cls, kwargs", [
    (DiceLoss, {"smooth": 0.5, "class_weights": [1, 2], "ignore_index": 9}),
    (BCEDiceLoss, {"bce_weight": 0.3, "dice_weight": 0.7, "from_logits": True}),
])
def test_config_round_trip_and_keras_serialization(cls, kwargs):
    loss = cls(**kwargs)
    config = loss.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, cls) and again.get_config() == config


def test_model_with_kcv_loss_reloads_with_safe_mode(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="softmax")(inputs))
    model.compile("sgd", loss=kcv.losses.BCEDiceLoss(class_weights=[1.0, 2.0]))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(loaded.loss, BCEDiceLoss)
    assert loaded.loss.class_weights == [1.0, 2.0]


def test_errors():
    with pytest.raises(ValueError, match="class_weights"):
        DiceLoss(class_weights=[-1, 1])
    with pytest.raises(ValueError, match="class_weights"):
        dice_loss(np.zeros((1, 2, 2), np.int32), np.full((1, 2, 2, 3), 1 / 3), class_weights=[1, 1])
    with pytest.raises(ValueError, match="ignore_index"):
        dice_loss(np.eye(3)[np.zeros((1, 2, 2), int)], np.full((1, 2, 2, 3), 1 / 3),
                  ignore_index=0)
    with pytest.raises(ValueError, match="y_true"):
        dice_loss(np.zeros((1, 2), np.int32), np.full((1, 2, 2, 3), 1 / 3))
